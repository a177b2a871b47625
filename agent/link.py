"""The agent's default :class:`~agent.transport.Transport`: one paho client, one connection
at a time, re-established with jittered backoff.

paho-mqtt 2.x, callback API VERSION2, MQTT 3.1.1, **clean sessions** and QoS 1: nothing
relies on the broker keeping messages for an offline client (the embedded broker was seen
to drop QoS 1 messages queued for persistent sessions, docs/agent-delivery.md), because
the outbox resends until the hub acknowledges.

- **Threads.** A supervisor thread owns the connection cycle; each connection gets a fresh
  paho client whose own network thread (``loop_start``) does the socket I/O, so other
  threads may call :meth:`Link.publish` safely. paho's callbacks only convert and hand
  :class:`Inbound` / :class:`Connected` events to the sink (:meth:`Link.on_event`); the
  daemon's sink puts them on a bounded queue (a flood is dropped and logged, threat-model
  B31) and its downlink job dispatches them.
- **Subscriptions** (:meth:`Link.subscribe`) are re-requested in ``on_connect`` after
  every (re)connect (a clean
  session forgets them), and the link counts as up only once the broker acknowledged them
  (SUBACK): before that, a hub ack to a frame sent at once could find no subscription.
- **Reconnect** with exponential backoff and full jitter: the n-th consecutive failure
  waits ``uniform(0, min(reconnect_max_s, reconnect_min_s * 2**n))`` seconds (defaults
  0.5 s and 30 s); a connection that came up resets n. paho's own reconnect (no jitter)
  is off, so a fleet restarted with its broker does not reconnect in lockstep.
- **Last will.** Before a connection the supervisor asks ``will()`` for a (topic, frame)
  pair; the broker publishes it if the connection dies without a DISCONNECT. A will that
  belonged to a connection that came up is never reused (it may have fired); one from a
  failed attempt is. :meth:`Link.disconnect` sends a clean DISCONNECT, which suppresses
  the will.
- **TLS** for ``mqtts://``: the system trust store or ``ca_file``, optional client
  certificate (``cert_file``/``key_file``), host name checked.
- **Login and enrollment.** The agent logs in with user name = client id = its device id
  and its own password (:mod:`agent.broker_login`). A broker with access control refuses
  that login until the hub has admitted the device and provisioned its verifier; then
  the next connection is an *enrollment session*: anonymous, to ``enroll_broker_url``
  (or the same broker), no last will, no subscriptions, and only the hello may be
  published (everything else stays in the outbox). It lasts ``enroll_hold_s``, long
  enough for the hello to reach the hub, then the link tries to log in again, with the
  usual backoff between rounds (docs/broker-security.md). A broker without access
  control accepts the login at once and none of this happens.

:meth:`Link.publish` refuses (returns False) while no connection is up, so paho never
queues frames in memory across connections; the outbox keeps them instead.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt

from agent import broker_login
from agent.config import AgentConfig
from agent.mqtt_session import SessionCore
from agent.transport import WillFactory
from edgefleet.brokers import BrokerUrl

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LinkSettings:
    """How to reach the broker (units in the names)."""

    broker: BrokerUrl
    client_id: str
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    keepalive_s: int = 30
    reconnect_min_s: float = 0.5
    reconnect_max_s: float = 30.0
    connect_timeout_s: float = 10.0
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    enroll_broker: BrokerUrl | None = None  # None: enrollment sessions go to ``broker``
    enroll_hold_s: float = 3.0

    @classmethod
    def from_config(cls, config: AgentConfig) -> LinkSettings:
        """The agent's link: client id and user name are the device id, the password its
        own (made on first start), broker and TLS from its config.

        Raises:
            IdentityError: the broker login file is damaged or cannot be written.
        """
        login = broker_login.load_or_create(config.state_dir, config.device_id)
        return cls(
            broker=config.broker,
            client_id=config.device_id,
            username=login.username,
            password=login.password,
            enroll_broker=config.enroll_broker,
            ca_file=config.ca_file,
            cert_file=config.cert_file,
            key_file=config.key_file,
            keepalive_s=config.keepalive_s,
            reconnect_min_s=config.reconnect_min_s,
            reconnect_max_s=config.reconnect_max_s,
        )


def backoff_delay(failures: int, low_s: float, high_s: float, rng: random.Random) -> float:
    """Full-jitter exponential backoff: ``uniform(0, min(high, low * 2**failures))``."""
    return rng.uniform(0.0, min(high_s, low_s * 2 ** min(failures, 32)))


class Link(SessionCore):
    """A self-healing MQTT connection: the :class:`~agent.transport.Transport` the agent
    uses unless it is given another."""

    def __init__(self, settings: LinkSettings, *, rng: random.Random | None = None) -> None:
        """Prepare the link; nothing connects before :meth:`connect`.

        Raises:
            ConfigError: a TLS file cannot be loaded (the message names the key).
        """
        super().__init__(settings, rng=rng)
        self._ended = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._closing = False  # the supervisor is ending the session itself

    def connect(self, *, will: WillFactory | None = None) -> None:
        """Start the supervisor thread, which connects and reconnects until
        :meth:`disconnect`."""
        self._will_factory = will
        self._thread = threading.Thread(target=self._supervise, name="agent-link", daemon=True)
        self._thread.start()

    def disconnect(self, timeout_s: float = 10.0) -> None:
        """Disconnect cleanly (no last will) and wait for the link's threads to end."""
        self._stopping.set()
        self._ended.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    # ------------------------------------------------------------------ supervisor

    def _supervise(self) -> None:
        failures = 0
        will: tuple[str, bytes] | None = None
        while not self._stopping.is_set():
            if self._enrolling:
                self._session(self._new_client(None), quiet=failures > 0)
                self._enrolling = False  # log in again next, after the backoff
            else:
                if will is None and self._will_factory is not None:
                    try:
                        will = self._will_factory()
                    except Exception:
                        logger.exception("cannot prepare the last will; connecting without one")
                came_up = self._session(self._new_client(will), quiet=failures > 0)
                if came_up:
                    failures, will = 0, None
                elif self._login_refused and self.settings.username is not None:
                    self._login_refused = False
                    self._enrolling = True  # say hello anonymously, at once
                    continue
            if self._stopping.is_set():
                break
            delay = backoff_delay(
                failures, self.settings.reconnect_min_s, self.settings.reconnect_max_s, self._rng
            )
            failures += 1
            logger.debug("reconnecting to the broker in %.2f s", delay)
            self._stopping.wait(delay)

    def _session(self, client: mqtt.Client, *, quiet: bool) -> bool:
        """Run one connection until it ends; True if the broker accepted it at all.

        ``quiet`` logs a failure to connect at DEBUG: only the first of a streak is a
        warning, so a device offline for a day does not fill its log.
        """
        broker = self._target()
        self._ended.clear()
        before = self.connections
        try:
            client.connect(broker.host, broker.port, keepalive=self.settings.keepalive_s)
        except (OSError, ValueError) as e:
            level = logging.DEBUG if quiet else logging.WARNING
            logger.log(level, "cannot reach broker %s:%d: %s", broker.host, broker.port, e)
            return False
        with self._lock:
            self._client = client
        client.loop_start()
        try:
            deadline = time.monotonic() + self.settings.connect_timeout_s
            hold_until: float | None = None
            while not self._ended.wait(0.1 if self._enrolling else 0.5):
                if self.connections == before and time.monotonic() > deadline:
                    logger.warning("broker %s:%d did not accept in time", broker.host, broker.port)
                    break
                if self._enrolling and self.connections > before:
                    hold_until = hold_until or time.monotonic() + self.settings.enroll_hold_s
                    if time.monotonic() > hold_until:
                        break
        finally:
            with self._lock:
                self._up = False
                self._client = None
            self._closing = True
            client.disconnect()
            client.loop_stop()
            self._closing = False
        return self.connections > before

    # ------------------------------------------------------------------ paho callbacks

    def _end_session(self, client: mqtt.Client) -> None:
        self._ended.set()

    def _enrollment_up(self) -> None:
        self._came_up()

    def _on_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any
    ) -> None:
        with self._lock:
            was_up, self._up = self._up, False
        if was_up and not (self._stopping.is_set() or self._closing):
            logger.warning("lost the broker connection: %s", reason)
        self._ended.set()
