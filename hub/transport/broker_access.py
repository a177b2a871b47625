"""Who may connect to the broker and touch which topics, pure: one policy for both tiers.

The rules (docs/broker-security.md), for topics under ``{prefix}/v1/``:

===========  ============================  ==============================================
principal    publish                       subscribe / receive
===========  ============================  ==============================================
hub          everything under the prefix   everything under the prefix
device X     ``d/X/up/{kind}``             ``d/X/down/...``, ``fleet/...``
enrolling X  ``d/X/up/hello``              nothing
===========  ============================  ==============================================

A **device** is a client that logged in with user name X (its device id) and the password
whose verifier the hub provisioned when it admitted X; its client id must be X too, so one
device can never take over another's session. An **enrolling** client is anonymous: a
device the hub does not trust yet, whose only right is to say hello under its client id.
The **hub** logs in as :data:`HUB_USERNAME` (and its retained-topic watch as
:data:`WATCH_USERNAME`, with the same password), which no device id can be (ids start
with a letter or digit).

Mosquitto gets the same rules as a generated ``acl_file`` (:mod:`hub.transport.mosquitto`);
the embedded broker asks :class:`AccessPolicy` directly (:mod:`hub.transport.broker_gate`,
which also holds the accounts table the hub's provisioning writes).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from protocol.errors import Malformed
from protocol.schema import check_name
from protocol.topics import Topics

HUB_USERNAME = "_hub"
"""The hub's broker user name; a leading underscore is never a device id."""
WATCH_USERNAME = "_hub-watch"
"""The hub's second login, for the link that watches its retained topics
(:mod:`hub.transport.retained`): a broker that binds client ids to user names (Mosquitto's
``use_username_as_clientid``) would otherwise let one hub connection take over the other."""
HUB_USERNAMES = (HUB_USERNAME, WATCH_USERNAME)
Role = Literal["hub", "device", "enrolling"]


@dataclass(frozen=True)
class Principal:
    """Who a connection is: its role and name (the device id, or the hub's user name)."""

    role: Role
    name: str


@dataclass(frozen=True)
class AccessPolicy:
    """The topic rules of the module docstring for one topic prefix."""

    topics: Topics

    def principal(self, username: str | None, client_id: str) -> Principal | None:
        """Who an *authenticated* connection is (None: no role fits its ids).

        ``username`` None is an anonymous client: enrolling, if its client id is a
        device id. A named client must use its user name as client id.
        """
        if username is None:
            return Principal("enrolling", client_id) if _is_device_id(client_id) else None
        if client_id != username:
            return None
        if username in HUB_USERNAMES:
            return Principal("hub", username)
        return Principal("device", username) if _is_device_id(username) else None

    def may_publish(self, who: Principal, topic: str) -> bool:
        if _has_wildcard(topic):
            return False
        levels = self._relative(topic)
        if levels is None:
            return False
        if who.role == "hub":
            return True
        if len(levels) != 4 or levels[:3] != ["d", who.name, "up"]:
            return False
        return who.role == "device" or levels[3] == "hello"

    def may_subscribe(self, who: Principal, topic_filter: str) -> bool:
        levels = self._relative(topic_filter)
        if levels is None:
            return False
        if who.role == "hub":
            return True
        if who.role != "device":
            return False
        return _below(levels, ["d", who.name, "down"]) or _below(levels, ["fleet"])

    def may_receive(self, who: Principal, topic: str) -> bool:
        return not _has_wildcard(topic) and self.may_subscribe(who, topic)

    def _relative(self, topic: str) -> list[str] | None:
        base = self.topics.base + "/"
        return topic[len(base) :].split("/") if topic.startswith(base) else None


def _below(levels: list[str], prefix: list[str]) -> bool:
    """A filter that names ``prefix`` literally, then at least one more level (which may
    be a wildcard): it can only match topics under ``prefix``."""
    return len(levels) > len(prefix) and levels[: len(prefix)] == prefix


def _has_wildcard(topic: str) -> bool:
    return "+" in topic or "#" in topic


def _is_device_id(name: str) -> bool:
    try:
        check_name(name, "device_id")
    except Malformed:
        return False
    return True
