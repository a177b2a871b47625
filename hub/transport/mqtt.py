"""The hub's MQTT link: a thin paho-mqtt wrapper that hands every inbound message to a queue.

paho-mqtt 2.x, callback API ``VERSION2``, MQTT 3.1.1, **clean sessions**, QoS 1
(docs/architecture.md, "Brokers"): nothing relies on the broker
keeping messages for the hub while it is away, because agents resend until the hub
acknowledges on ``down/ack`` after its commit. paho acknowledges a QoS 1 PUBLISH as soon
as ``on_message`` returns; that settles nothing end to end.

- **Threads.** paho's network thread (``loop_start``) does all socket I/O and reconnects
  by itself with exponential backoff (``reconnect_min_s`` doubling up to
  ``reconnect_max_s``). :meth:`HubLink.publish` may be called from any thread.
- **Inbound.** ``on_message`` only puts ``(topic, payload)`` on the bounded
  ``queue.Queue`` it was given. When the queue is full the message is dropped and
  counted in ``edgefleet_hub_ingest_shed_total``: it was not acknowledged by the hub, so
  its agent sends it again (shed load, never queue without bound: docs/decisions.md,
  "Bounded state a stranger can create"). A topic that is not valid UTF-8 is handed on
  as ``""`` for ingest to refuse.
- **Subscriptions** are renewed in ``on_connect`` after every (re)connect, since a clean
  session forgets them; :meth:`HubLink.wait_ready` returns once the broker has granted
  them, and the ``on_ready`` callback runs then, after every (re)connect: on paho's
  network thread, so it must only hand off (the hub service wakes a worker that
  republishes the retained messages a restarted broker has lost).
- **Outbound.** :meth:`HubLink.publish` refuses (returns False) while disconnected, so
  paho never piles up downlink frames in memory across an outage; what was not published
  is re-sent later by whoever owns it (acks are re-sent on the agent's resend).

Broker URLs: ``mqtt://host[:port]`` (default port 1883) and ``mqtts://host[:port]``
(8883), TLS with the system trust store or a CA file, and an optional client certificate.

What this module does not do: decode frames, retry publishes, or persist anything.
"""

from __future__ import annotations

import logging
import queue
import ssl
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from edgefleet.brokers import BadBrokerUrl, BrokerUrl, warn_if_exposed
from hub.context import FleetPublisher
from hub.errors import InvalidRequest
from hub.metrics import SHED
from hub.transport.mqtt_socket import BufferedClient
from protocol.topics import Topics

logger = logging.getLogger(__name__)

Inbound = tuple[str, bytes]
"""One message as the broker delivered it: ``(topic, payload)``."""


def parse_broker_url(url: str) -> BrokerUrl:
    """:meth:`BrokerUrl.parse`, refusing a bad URL as the operator's mistake.

    Raises:
        InvalidRequest: not ``mqtt://host[:port]`` or ``mqtts://host[:port]``.
    """
    try:
        return BrokerUrl.parse(url)
    except BadBrokerUrl as e:
        raise InvalidRequest(str(e)) from e


@dataclass(frozen=True)
class TlsFiles:
    """TLS material for ``mqtts://``: a CA bundle (default: the system's) and a client cert."""

    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None

    def context(self) -> ssl.SSLContext:
        """An ``SSLContext`` that checks the broker's certificate and host name.

        Raises:
            InvalidRequest: a file is missing or not a certificate/key.
        """
        try:
            context = ssl.create_default_context(cafile=str(self.ca_file) if self.ca_file else None)
            if self.cert_file is not None:
                context.load_cert_chain(self.cert_file, self.key_file)
        except (OSError, ssl.SSLError) as e:
            raise InvalidRequest(f"TLS files cannot be loaded: {e}") from e
        return context


class HubLink:
    """One paho client, connected in the background, feeding ``inbox``.

    Args:
        url: the broker (``BrokerUrl`` or its string form).
        client_id: MQTT client id (unique per hub on the broker).
        inbox: where ``(topic, payload)`` pairs go; bounded, full means shed.
        subscriptions: topic filters subscribed at QoS 1 on every connect.
        tls: TLS files for ``mqtts://`` (None: the system trust store).
        keepalive_s: MQTT keepalive.
        reconnect_min_s, reconnect_max_s: paho's reconnect backoff bounds.
        max_queued_publishes: QoS 1 publishes paho may hold awaiting PUBACK.
        on_ready: called on paho's network thread each time the link becomes ready
            (connected, subscriptions granted); must return at once and not raise.
        login: ``(username, password)`` for a broker with access control
            (docs/broker-security.md); None connects without credentials.

    Raises:
        InvalidRequest: a bad URL or unreadable TLS files.
    """

    def __init__(
        self,
        url: BrokerUrl | str,
        *,
        client_id: str,
        inbox: queue.Queue[Inbound],
        subscriptions: Sequence[str] = (),
        tls: TlsFiles | None = None,
        keepalive_s: int = 30,
        reconnect_min_s: int = 1,
        reconnect_max_s: int = 30,
        max_queued_publishes: int = 10_000,
        on_ready: Callable[[], None] | None = None,
        login: tuple[str, str] | None = None,
    ) -> None:
        self.url = url if isinstance(url, BrokerUrl) else parse_broker_url(url)
        self.inbox = inbox
        self.subscriptions = tuple(subscriptions)
        self._keepalive_s = keepalive_s
        self._on_ready = on_ready
        self._ready = threading.Event()
        self._lock = threading.Lock()
        self._subscribe_mid: int | None = None
        self._client = BufferedClient(  # paho.Client, reading in large chunks
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=paho.MQTTv311,
            clean_session=True,
        )
        self._client.reconnect_delay_set(reconnect_min_s, reconnect_max_s)
        self._client.max_inflight_messages_set(1000)
        self._client.max_queued_messages_set(max_queued_publishes)
        if login is not None:
            warn_if_exposed(self.url, "the hub")
            self._client.username_pw_set(*login)
        if self.url.tls:
            self._client.tls_set_context((tls or TlsFiles()).context())
        self._client.on_connect = self._on_connect
        self._client.on_subscribe = self._on_subscribe
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message

    @property
    def ready(self) -> bool:
        """Connected, with every subscription granted."""
        return self._ready.is_set()

    def start(self) -> None:
        """Connect in the background; paho keeps retrying until :meth:`stop`."""
        self._client.connect_async(self.url.host, self.url.port, keepalive=self._keepalive_s)
        self._client.loop_start()

    def wait_ready(self, timeout_s: float) -> bool:
        """Wait until connected and subscribed; False if that took longer than ``timeout_s``."""
        return self._ready.wait(timeout_s)

    def stop(self) -> None:
        """Disconnect cleanly and stop the network thread."""
        self._ready.clear()
        self._client.disconnect()
        self._client.loop_stop()

    def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> bool:
        """Hand one message to paho; False when disconnected or paho's queue is full."""
        if not self._ready.is_set():
            return False
        info = self._client.publish(topic, payload, qos=qos, retain=retain)
        return info.rc == paho.MQTT_ERR_SUCCESS

    # paho callbacks: run on paho's network thread; they only record and hand off.

    def _on_connect(
        self, client: paho.Client, userdata: Any, flags: Any, reason: Any, props: Any
    ) -> None:
        if reason.is_failure:
            logger.warning("broker %s refused the connection: %s", self.url, reason)
            return
        logger.info("connected to broker %s", self.url)
        if not self.subscriptions:
            self._became_ready()
            return
        _, mid = client.subscribe([(topic, 1) for topic in self.subscriptions])
        with self._lock:
            self._subscribe_mid = mid

    def _on_subscribe(
        self, client: paho.Client, userdata: Any, mid: int, codes: list[Any], props: Any
    ) -> None:
        with self._lock:
            if mid != self._subscribe_mid:
                return
        if any(code.is_failure for code in codes):
            logger.error("broker %s refused a subscription: %s", self.url, codes)
            return
        self._became_ready()

    def _became_ready(self) -> None:
        self._ready.set()
        if self._on_ready is not None:
            self._on_ready()

    def _on_disconnect(
        self, client: paho.Client, userdata: Any, flags: Any, reason: Any, props: Any
    ) -> None:
        self._ready.clear()
        if reason.is_failure:
            logger.warning("lost broker %s: %s; reconnecting", self.url, reason)

    def _on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        try:
            topic = message.topic
        except UnicodeDecodeError:
            topic = ""
        try:
            self.inbox.put_nowait((topic, bytes(message.payload)))
        except queue.Full:
            SHED.inc()


def fleet_publisher(link: HubLink, topics: Topics) -> FleetPublisher:
    """The hub context's fleet publisher over ``link``: retained, QoS 1, on
    ``fleet/<kind>`` (:data:`hub.context.FleetPublisher`)."""

    def publish(kind: str, payload: bytes) -> bool:
        return link.publish(topics.fleet(kind), payload, qos=1, retain=True)

    return publish
