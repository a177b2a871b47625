"""What every agent MQTT transport shares, whoever drives its sockets.

:class:`agent.link.Link` runs one device's session on threads of its own;
:class:`agent.shared_loop.LoopLink` runs many devices' sessions on one selector thread.
Both keep the same per-device state and make the same decisions about it: which broker the
next session goes to, how its paho client is configured, when a session counts as up
(SUBACK, or at once for an enrollment session), which publishes an enrollment session
lets out, and how paho's callbacks become :class:`~agent.transport.LinkEvent` values.
:class:`SessionCore` holds that once; a transport adds only how it runs a session and
how it ends one (:meth:`SessionCore._end_session`) and what it does when an enrollment
session comes up (:meth:`SessionCore._enrollment_up`).
"""

from __future__ import annotations

import logging
import random
import ssl
import threading
from typing import TYPE_CHECKING, Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from agent.errors import ConfigError
from agent.transport import Connected, EventSink, Inbound, LinkEvent, WillFactory
from edgefleet.brokers import BrokerUrl, warn_if_exposed

if TYPE_CHECKING:
    from agent.link import LinkSettings

logger = logging.getLogger(__name__)

PAHO_MAX_INFLIGHT = 100
"""QoS 1 publishes paho keeps awaiting the broker's PUBACK before queueing the next."""
LOGIN_REFUSED = (134, 135)  # CONNACK: bad user name or password, not authorized
HELLO_SUFFIX = "/up/hello"


class SessionCore:
    """One device's session state and the paho callbacks both transports share."""

    def __init__(self, settings: LinkSettings, *, rng: random.Random | None = None) -> None:
        """Raises: ConfigError: a TLS file cannot be loaded (the message names the key)."""
        self.settings = settings
        if settings.password is not None:
            warn_if_exposed(settings.broker, "this agent")
        self._rng = rng or random.Random()
        enroll = settings.enroll_broker
        uses_tls = settings.broker.tls or (enroll is not None and enroll.tls)
        self._tls = tls_context(settings) if uses_tls else None
        self._sink: EventSink | None = None
        self._subscriptions: tuple[str, ...] = ()
        self._will_factory: WillFactory | None = None
        self._lock = threading.Lock()
        self._client: mqtt.Client | None = None
        self._up = False
        self._enrolling = False  # this connection is an enrollment session
        self._login_refused = False
        self._suback_mid: int | None = None
        self.connections = 0
        self.enrollment_sessions = 0

    @property
    def connected(self) -> bool:
        return self._up

    @property
    def enrolling(self) -> bool:
        """The connection up now is an enrollment session (only the hello goes out)."""
        return self._up and self._enrolling

    def subscribe(self, *topics: str) -> None:
        """Subscribe to ``topics`` on every connection from the next one on (call it before
        ``connect``)."""
        self._subscriptions = (*self._subscriptions, *topics)

    def on_event(self, sink: EventSink) -> None:
        """Where events go; called from the thread running paho's callbacks, it must not
        block."""
        self._sink = sink

    def publish(self, topic: str, payload: bytes) -> bool:
        """Hand one QoS 1 frame to the current connection; False when none is up (or an
        enrollment session is, and this is not the hello)."""
        with self._lock:
            client = self._client if self._up else None
            if self._enrolling and not topic.endswith(HELLO_SUFFIX):
                client = None
        if client is None:
            return False
        info = client.publish(topic, payload, qos=1)
        return info.rc == mqtt.MQTT_ERR_SUCCESS

    # ------------------------------------------------------------------ for the transports

    def _target(self) -> BrokerUrl:
        """The broker of the next session: the enrollment one for an enrollment session."""
        enroll = self.settings.enroll_broker
        return enroll if self._enrolling and enroll is not None else self.settings.broker

    def _new_client(self, will: tuple[str, bytes] | None) -> mqtt.Client:
        """A paho client for the next session: logged in, or anonymous and without a
        will for an enrollment session."""
        client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=self.settings.client_id,
            clean_session=True,
            protocol=mqtt.MQTTv311,
            reconnect_on_failure=False,
        )
        client.max_inflight_messages_set(PAHO_MAX_INFLIGHT)
        if self._tls is not None and self._target().tls:
            client.tls_set_context(self._tls)
        if not self._enrolling and self.settings.username is not None:
            client.username_pw_set(self.settings.username, self.settings.password)
        if will is not None:
            client.will_set(will[0], will[1], qos=1, retain=False)
        client.on_connect = self._on_connect
        client.on_subscribe = self._on_subscribe
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        return client

    def _end_session(self, client: mqtt.Client) -> None:
        """End ``client``'s session from this side (a refused CONNECT or SUBSCRIBE)."""
        raise NotImplementedError

    def _enrollment_up(self) -> None:
        """An enrollment session came up: count it up and bound how long it is held."""
        raise NotImplementedError

    def _on_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any
    ) -> None:
        raise NotImplementedError

    # ------------------------------------------------------------------ paho callbacks

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any
    ) -> None:
        if reason.is_failure:
            if reason.value in LOGIN_REFUSED and not self._enrolling:
                self._login_refused = True
                logger.info("broker refused the login (%s): not provisioned yet", reason)
            else:
                logger.warning("broker refused the connection: %s", reason)
            self._end_session(client)
            return
        if self._enrolling:
            self.enrollment_sessions += 1
            logger.info("enrollment session: saying hello until the hub admits this device")
            self._enrollment_up()
            return
        if not self._subscriptions:
            self._came_up()
            return
        result, self._suback_mid = client.subscribe([(topic, 1) for topic in self._subscriptions])
        if result != mqtt.MQTT_ERR_SUCCESS:
            self._end_session(client)

    def _on_subscribe(
        self, client: mqtt.Client, userdata: Any, mid: int, codes: Any, properties: Any
    ) -> None:
        if mid != self._suback_mid:
            return
        pairs = zip(self._subscriptions, codes, strict=False)
        refused = [topic for topic, code in pairs if code.is_failure]
        if refused:
            logger.error("broker refused subscriptions %s: no downlink on them", refused)
        self._came_up()

    def _came_up(self) -> None:
        with self._lock:
            self._up = True
            self.connections += 1
        broker = self._target()
        logger.info("connected to broker %s:%d", broker.host, broker.port)
        self._put(Connected())

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        self._put(Inbound(message.topic, bytes(message.payload), bool(message.retain)))

    def _put(self, event: LinkEvent) -> None:
        sink = self._sink
        if sink is None:
            return
        try:
            sink(event)
        except Exception:  # the network thread must outlive a faulty sink
            logger.exception("the event sink failed: event discarded")


def tls_context(settings: LinkSettings) -> ssl.SSLContext:
    try:
        context = ssl.create_default_context(
            cafile=str(settings.ca_file) if settings.ca_file else None
        )
    except (OSError, ssl.SSLError) as e:
        raise ConfigError(f"ca_file {settings.ca_file}: {e}") from e
    if settings.cert_file is not None:
        try:
            context.load_cert_chain(settings.cert_file, settings.key_file)
        except (OSError, ssl.SSLError) as e:
            raise ConfigError(f"cert_file/key_file cannot be loaded: {e}") from e
    return context
