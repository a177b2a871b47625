"""A tiny synchronous MQTT client for tests: publish, subscribe, and wait for what arrives.

It is paho-mqtt 2.x (callback API v2) speaking MQTT 3.1.1 with a clean session, the way
edgefleet's agent and hub speak. paho's network loop runs in its own thread; the
``on_message`` callback only converts each message to a :class:`Received` and puts it on a
``queue.Queue`` (as aiomqtt does), and tests take them off with :meth:`TestClient.wait_for`::

    with TestClient(broker) as hub, TestClient(broker) as device:
        hub.subscribe(topics.all_up())
        device.publish(topics.up("dev-1", "telemetry"), frame)
        [msg] = hub.wait_for(1)

After a broker restart paho reconnects by itself (1-2 s back-off) and the client
subscribes again to everything it had subscribed to, as edgefleet's services do with
clean sessions. Every failure is an ``AssertionError`` that says what happened, so a test
reads as a failed expectation rather than an error in the helper.
"""

from __future__ import annotations

import queue
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Protocol, Self

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

DEFAULT_TIMEOUT_S = 10.0


class Endpoint(Protocol):
    """Where a broker listens: a ``BrokerRunner`` or a ``hub.transport.broker.EmbeddedBroker``."""

    @property
    def host(self) -> str: ...

    @property
    def port(self) -> int: ...


@dataclass(frozen=True)
class Received:
    """One message as the subscriber saw it."""

    topic: str
    payload: bytes
    qos: int
    retain: bool

    def __repr__(self) -> str:
        shown = self.payload[:40] + (b"..." if len(self.payload) > 40 else b"")
        flags = f"qos={self.qos}" + (" retained" if self.retain else "")
        return f"<{self.topic} {len(self.payload)}B {flags} {shown!r}>"


class TestClient:
    """A connected paho client; use it as a context manager.

    Args:
        broker: where to connect (a :class:`~tests.brokers.BrokerRunner`, say).
        client_id: default a fresh random one.
        timeout_s: default wait for CONNACK, PUBACK and SUBACK.
        login: ``(username, password)`` for a broker with access control.
    """

    __test__ = False  # a helper, not a test class for pytest to collect

    def __init__(
        self,
        broker: Endpoint,
        client_id: str | None = None,
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        login: tuple[str, str] | None = None,
    ) -> None:
        self.client_id = client_id or f"test-{uuid.uuid4().hex[:12]}"
        self.refusals: list[ReasonCode] = []
        self.disconnects = 0
        self.messages: queue.Queue[Received] = queue.Queue()
        self._broker = broker
        self._timeout_s = timeout_s
        self._changed = threading.Condition()
        self._connections = 0
        self._subacks: dict[int, list[ReasonCode]] = {}
        self._filters: dict[str, int] = {}
        self._resubscribe_mid: int | None = None
        self._client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=paho.MQTTv311,
            clean_session=True,
        )
        self._client.reconnect_delay_set(min_delay=1, max_delay=2)
        if login is not None:
            self._client.username_pw_set(*login)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_subscribe = self._on_subscribe
        self._client.on_message = self._on_message

    def connect(self) -> None:
        """Connect and start paho's network thread; returns after CONNACK.

        Raises:
            AssertionError: the broker is unreachable, or no successful CONNACK arrived
                within the timeout.
        """
        if self._connections:
            raise AssertionError(f"{self.client_id} is already connected")
        host, port = self._broker.host, self._broker.port
        try:
            self._client.connect(host, port, keepalive=30)
        except OSError as e:
            raise AssertionError(f"{self.client_id} cannot reach {host}:{port}: {e}") from e
        self._client.loop_start()
        self.wait_connected()

    def close(self) -> None:
        """Disconnect cleanly and stop the network thread."""
        self._client.disconnect()
        self._client.loop_stop()

    def __enter__(self) -> Self:
        self.connect()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def connect_refused(self, timeout_s: float | None = None) -> ReasonCode:
        """Connect expecting a refusal; the CONNACK's reason (paho stops retrying).

        Raises:
            AssertionError: the broker accepted, or said nothing within the timeout.
        """
        host, port = self._broker.host, self._broker.port
        self._client.connect(host, port, keepalive=30)
        self._client.loop_start()
        refused = self._wait(lambda: bool(self.refusals) or self._connections > 0, timeout_s)
        self._client.disconnect()
        self._client.loop_stop()
        if not refused or not self.refusals:
            raise AssertionError(f"{self.client_id} was not refused by {host}:{port}")
        return self.refusals[0]

    def wait_connected(self, times: int = 1, timeout_s: float | None = None) -> None:
        """Wait until the client has connected ``times`` times in all (2 = one reconnect).

        A connection counts once its subscriptions are renewed (SUBACK received).

        Raises:
            AssertionError: it did not within the timeout.
        """
        if not self._wait(lambda: self._connections >= times, timeout_s):
            raise AssertionError(
                f"{self.client_id} connected {self._connections} time(s), expected {times}"
            )

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> None:
        """Publish and wait until paho is done with it (PUBACK for QoS 1).

        Raises:
            AssertionError: not connected, or no acknowledgement within the timeout.
        """
        info = self._client.publish(topic, payload, qos=qos, retain=retain)
        try:
            info.wait_for_publish(self._timeout_s)
        except (RuntimeError, ValueError) as e:
            raise AssertionError(f"publish to {topic} failed: {e}") from e
        if not info.is_published():
            raise AssertionError(f"publish to {topic} not acknowledged in {self._timeout_s}s")

    def publish_many(self, topic: str, payloads: list[bytes], qos: int = 1) -> None:
        """Publish every payload without waiting in between, then wait for all of them.

        paho keeps up to 20 QoS 1 messages in flight and queues the rest, as an agent
        draining its outbox does.

        Raises:
            AssertionError: not connected, or not all acknowledged within the timeout.
        """
        infos = [self._client.publish(topic, payload, qos=qos) for payload in payloads]
        deadline = time.monotonic() + self._timeout_s
        try:
            for info in infos:
                info.wait_for_publish(max(deadline - time.monotonic(), 0.0))
        except (RuntimeError, ValueError) as e:
            raise AssertionError(f"publish to {topic} failed: {e}") from e
        done = sum(info.is_published() for info in infos)
        if done < len(infos):
            raise AssertionError(f"{done} of {len(infos)} publishes to {topic} acknowledged")

    def subscribe(self, topic_filter: str, qos: int = 1) -> None:
        """Subscribe and wait for the SUBACK; the filter is renewed on every reconnect.

        Raises:
            AssertionError: refused by the broker, or no SUBACK within the timeout.
        """
        self._await_suback(topic_filter, qos)
        with self._changed:
            self._filters[topic_filter] = qos

    def clear_retained(self, topic: str) -> None:
        """Delete the retained message on ``topic`` (an empty retained publish)."""
        self.publish(topic, b"", qos=1, retain=True)

    def wait_for(
        self,
        until: int | Callable[[Received], bool],
        timeout_s: float | None = None,
    ) -> list[Received]:
        """Take messages off the queue until ``until`` is met, and return them.

        With a count ``n``: the next ``n`` messages. With a predicate: every message up to
        and including the first one it accepts.

        Raises:
            AssertionError: not met within the timeout; the message lists what did arrive.
        """
        deadline = time.monotonic() + (timeout_s or self._timeout_s)
        got: list[Received] = []
        while not _met(until, got):
            remaining = deadline - time.monotonic()
            try:
                got.append(self.messages.get(timeout=max(remaining, 0.0)))
            except queue.Empty:
                shown = ", ".join(map(repr, got[-10:])) or "nothing"
                raise AssertionError(
                    f"{self.client_id} waited for {_describe(until)} and got {len(got)}: {shown}"
                ) from None
        return got

    def _await_suback(self, topic_filter: str, qos: int) -> None:
        result, mid = self._client.subscribe(topic_filter, qos)
        if result != paho.MQTT_ERR_SUCCESS or mid is None:
            raise AssertionError(f"subscribe to {topic_filter} failed: {paho.error_string(result)}")
        if not self._wait(lambda: mid in self._subacks, None):
            raise AssertionError(f"no SUBACK for {topic_filter} in {self._timeout_s}s")
        with self._changed:
            codes = self._subacks.pop(mid)
        if any(code.is_failure for code in codes):
            raise AssertionError(f"broker refused subscription to {topic_filter}: {codes}")

    def _wait(self, done: Callable[[], bool], timeout_s: float | None) -> bool:
        with self._changed:
            return self._changed.wait_for(done, timeout_s or self._timeout_s)

    # paho callbacks: run on paho's network thread; they only record and hand off.

    def _on_disconnect(
        self, client: paho.Client, userdata: Any, flags: Any, reason: Any, props: Any
    ) -> None:
        with self._changed:
            self.disconnects += 1
            self._changed.notify_all()

    def _on_connect(
        self, client: paho.Client, userdata: Any, flags: Any, reason: ReasonCode, props: Any
    ) -> None:
        if reason.is_failure:
            with self._changed:
                self.refusals.append(reason)
                self._changed.notify_all()
            return
        with self._changed:
            filters = list(self._filters.items())
        if not filters:
            self._count_connection()
            return
        # A reconnect counts once the broker has acknowledged the renewed subscriptions,
        # so a test that waits for it never publishes into a subscription not yet there.
        _, mid = client.subscribe(filters)
        with self._changed:
            self._resubscribe_mid = mid

    def _on_subscribe(
        self,
        client: paho.Client,
        userdata: Any,
        mid: int,
        codes: list[ReasonCode],
        props: Any,
    ) -> None:
        if mid == self._resubscribe_mid:
            self._resubscribe_mid = None
            self._count_connection()
            return
        with self._changed:
            self._subacks[mid] = codes
            self._changed.notify_all()

    def _count_connection(self) -> None:
        with self._changed:
            self._connections += 1
            self._changed.notify_all()

    def _on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        self.messages.put(
            Received(message.topic, bytes(message.payload), message.qos, bool(message.retain))
        )


def _met(until: int | Callable[[Received], bool], got: list[Received]) -> bool:
    if isinstance(until, int):
        return len(got) >= until
    return bool(got) and until(got[-1])


def _describe(until: int | Callable[[Received], bool]) -> str:
    return f"{until} message(s)" if isinstance(until, int) else "a matching message"
