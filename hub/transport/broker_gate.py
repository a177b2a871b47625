"""The embedded broker's access control: a gate in front of amqtt, and its topic plugin.

amqtt 0.12.1 has auth and topic-check plugins, but it acts on a CONNECT before asking
them: a clean-session CONNECT deletes the session of any client already connected with
that client id, authenticated or not, and a failed login still replaces the session table
entry. So the embedded broker reads each connection's CONNECT itself and asks the
:class:`Gate` (this module) first; amqtt sees only connections the gate admitted, and
:class:`AclPlugin` (an amqtt topic plugin) checks every PUBLISH, SUBSCRIBE and delivery
against the same :class:`~hub.transport.broker_access.AccessPolicy` Mosquitto gets as an
``acl_file``. The gate refuses with a CONNACK code, as Mosquitto does:

- a user name with a wrong password, or one the hub has not provisioned: 4 (bad
  credentials);
- a client id that is not its user name, or an anonymous client whose id is not a
  device id: 2 (identifier rejected);
- an anonymous client using the client id of a live connection (it would take that
  session over), or a last will on a topic the client may not publish: 5 (not
  authorized).

An authenticated client whose id is connected already takes the old session over (MQTT
requires it: a device back from a network outage must not wait for its old connection to
time out); each takeover is counted in ``edgefleet_hub_broker_takeovers_total`` and
logged. The hub's own clone detection works from the last wills those takeovers publish,
the same way for Mosquitto (:mod:`hub.ingest.security`).
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from amqtt.contexts import Action
from amqtt.plugins.base import BaseTopicPlugin
from amqtt.session import Session

from hub.metrics import BROKER_REFUSED, BROKER_TAKEOVERS
from hub.transport.broker_access import AccessPolicy, Principal
from hub.transport.mqtt_packets import (
    ACCEPTED,
    BAD_CREDENTIALS,
    IDENTIFIER_REJECTED,
    NOT_AUTHORIZED,
    Connect,
)
from protocol import broker_auth

logger = logging.getLogger(__name__)


class Accounts:
    """User name -> password verifier, shared between the hub (writer) and the gate.

    :meth:`replace` swaps the whole table (the hub provisions from its store, the only
    truth), so a reader sees one version or the next, never a mix. A successful check is
    remembered by a digest of (user, password, verifier), so a reconnecting device costs
    one PBKDF2 per verifier, not one per connect.
    """

    def __init__(self, verifiers: Mapping[str, str] | None = None) -> None:
        self._lock = threading.Lock()
        self._verifiers = dict(verifiers or {})
        self._good: set[bytes] = set()

    def replace(self, verifiers: Mapping[str, str]) -> bool:
        """Install ``verifiers`` as the whole table; True if anything changed."""
        new = dict(verifiers)
        with self._lock:
            if new == self._verifiers:
                return False
            self._verifiers = new
            self._good.clear()
            return True

    def set(self, username: str, verifier: str) -> None:
        with self._lock:
            self._verifiers[username] = verifier
            self._good.clear()

    def names(self) -> frozenset[str]:
        with self._lock:
            return frozenset(self._verifiers)

    def knows(self, username: str) -> bool:
        with self._lock:
            return username in self._verifiers

    def check(self, username: str, password: bytes) -> bool:
        """Whether ``password`` is ``username``'s (False for an unknown user)."""
        with self._lock:
            verifier = self._verifiers.get(username)
        if verifier is None:
            return False
        token = hashlib.sha256(b"\0".join((username.encode(), password, verifier.encode())))
        digest = token.digest()
        with self._lock:
            if digest in self._good:
                return True
        try:
            ok = broker_auth.check_password(verifier, password.decode("utf-8"))
        except UnicodeDecodeError:
            return False
        if ok:
            with self._lock:
                if len(self._good) > 100_000:  # bounded: a new table or a flood clears it
                    self._good.clear()
                self._good.add(digest)
        return ok


@dataclass(frozen=True)
class Admission:
    """The gate's answer to one CONNECT: the CONNACK code, and who it admitted."""

    code: int
    principal: Principal | None = None
    reason: str = ""


class Gate:
    """Decides on CONNECTs and remembers who is connected (thread-safe).

    Args:
        policy: the topic rules.
        accounts: user name -> verifier, kept up to date by the hub.
    """

    def __init__(self, policy: AccessPolicy, accounts: Accounts) -> None:
        self.policy = policy
        self.accounts = accounts
        self._lock = threading.Lock()
        self._live: dict[str, tuple[object, Principal]] = {}

    def admit(self, connect: Connect) -> Admission:
        """The CONNACK code for ``connect`` (see the module docstring)."""
        username = connect.username
        if username is not None and not self.accounts.check(username, connect.password or b""):
            return self._refuse(BAD_CREDENTIALS, "bad_credentials", connect)
        who = self.policy.principal(username, connect.client_id)
        if who is None:
            return self._refuse(IDENTIFIER_REJECTED, "client_id", connect)
        if connect.will_topic is not None and not self.policy.may_publish(who, connect.will_topic):
            return self._refuse(NOT_AUTHORIZED, "will_topic", connect)
        with self._lock:
            live = self._live.get(connect.client_id)
        if live is not None and who.role == "enrolling":
            return self._refuse(NOT_AUTHORIZED, "takeover_by_anonymous", connect)
        return Admission(ACCEPTED, who)

    def opened(self, token: object, client_id: str, who: Principal) -> None:
        """A connection admitted as ``who`` is live; counts a takeover if one was."""
        with self._lock:
            taken = client_id in self._live
            self._live[client_id] = (token, who)
        if taken:
            BROKER_TAKEOVERS.inc()
            logger.warning(
                "client %s connected again: its previous session was taken over", client_id
            )

    def closed(self, token: object, client_id: str) -> None:
        """The connection ``token`` ended (a later one with the same id stays)."""
        with self._lock:
            live = self._live.get(client_id)
            if live is not None and live[0] is token:
                del self._live[client_id]

    def unprovisioned(self) -> list[object]:
        """Tokens of live logins whose user name the accounts no longer hold (revoked)."""
        names = self.accounts.names()
        with self._lock:
            return [
                token
                for token, who in self._live.values()
                if who.role != "enrolling" and who.name not in names
            ]

    def _refuse(self, code: int, reason: str, connect: Connect) -> Admission:
        BROKER_REFUSED.labels(reason).inc()
        logger.info("refused MQTT client %r: %s", connect.client_id[:64], reason)
        return Admission(code, None, reason)


class AclPlugin(BaseTopicPlugin):  # type: ignore[misc]  # amqtt ships no types
    """amqtt topic plugin: every PUBLISH, SUBSCRIBE and delivery asks the policy.

    Configured with the broker's :class:`AccessPolicy` as ``policy``; a session the policy
    does not place (which the gate never admits) is refused everything.
    """

    @dataclass
    class Config:
        policy: Any = None

    async def topic_filtering(
        self,
        *,
        session: Session | None = None,
        topic: str | None = None,
        action: Action | None = None,
    ) -> bool:
        policy = self._get_config_option("policy")
        if not isinstance(policy, AccessPolicy) or session is None or not topic:
            return False
        who = policy.principal(session.username, session.client_id or "")
        if who is None:
            return False
        if action == Action.PUBLISH:
            allowed = policy.may_publish(who, topic)
        elif action == Action.SUBSCRIBE:
            allowed = policy.may_subscribe(who, topic)
        else:
            allowed = policy.may_receive(who, topic)
        if not allowed and action != Action.RECEIVE:
            BROKER_REFUSED.labels(f"{action.value if action else 'topic'}_denied").inc()
        return allowed
