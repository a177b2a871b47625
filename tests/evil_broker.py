"""An evil broker: a TCP proxy between MQTT clients and a real broker that tampers with
PUBLISH packets (threat-model T13: the framework must stay safe without trusting the broker).

Clients connect to the proxy as if it were the broker; it opens one upstream connection per
client and passes every packet through, except that each PUBLISH, in either direction, is
shown to a *script* first, which answers with what to do to it::

    def script(seen: Seen) -> Action:
        if seen.down and seen.kind == "chunk":
            return Replace(flip_a_byte(seen.publish.payload))
        return FORWARD

    with EvilBroker(real_broker.host, real_broker.port, script) as evil:
        agent connects to evil.url ...
        evil.inject(DOWN, "dev-1", evil.seen(kind="desired")[0].publish)   # a replay

Actions: :data:`FORWARD`, :class:`Drop`, :class:`Delay` (in seconds: packets behind it
overtake it, so random delays reorder), :class:`Duplicate` (the packet, then copies),
:class:`Replace` (another payload, same topic), and the proxy's own :meth:`EvilBroker.inject`
for replays and forgeries at any time. :class:`Chaos` is a seeded script that drops,
duplicates and delays a share of everything.

QoS 1 stays consistent on both sides: a dropped PUBLISH is acknowledged to its sender by
the proxy (as a broker that loses it after the PUBACK would), and copies and injected
packets are sent at QoS 0, so no PUBACK ever answers a packet id the other side never
used. The proxy parses MQTT 3.1.1 (:mod:`hub.transport.mqtt_packets`) and never decodes an
edgefleet frame; :attr:`Seen.kind` is read from the topic.
"""

from __future__ import annotations

import contextlib
import random
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from types import TracebackType
from typing import Literal, Self

from hub.transport.mqtt_packets import (
    CONNECT,
    PUBLISH,
    PacketError,
    Publish,
    encode_publish,
    next_packet,
    packet_type,
    parse_connect,
    parse_publish,
    puback,
    split,
)

Direction = Literal["up", "down"]
UP: Direction = "up"  # client -> broker
DOWN: Direction = "down"  # broker -> client


@dataclass(frozen=True)
class Seen:
    """One PUBLISH the proxy intercepted."""

    direction: Direction
    client_id: str
    publish: Publish
    at: float = field(default_factory=time.monotonic)

    @property
    def down(self) -> bool:
        return self.direction == DOWN

    @property
    def kind(self) -> str:
        """The last topic level (``desired``, ``chunk``, ``state``...)."""
        return self.publish.topic.rsplit("/", 1)[-1]


@dataclass(frozen=True)
class Forward:
    pass


@dataclass(frozen=True)
class Drop:
    pass


@dataclass(frozen=True)
class Delay:
    seconds: float


@dataclass(frozen=True)
class Duplicate:
    copies: int = 1


@dataclass(frozen=True)
class Replace:
    payload: bytes


Action = Forward | Drop | Delay | Duplicate | Replace
Script = Callable[[Seen], Action]
FORWARD = Forward()


class Chaos:
    """A seeded script: drops, duplicates and delays (0 to ``max_delay_s``) a share of the
    PUBLISH packets it is shown, in both directions; ``kinds`` limits it to those kinds."""

    def __init__(
        self,
        *,
        seed: int,
        drop: float = 0.0,
        duplicate: float = 0.0,
        delay: float = 0.0,
        max_delay_s: float = 0.3,
        kinds: frozenset[str] | None = None,
    ) -> None:
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self.drop, self.duplicate, self.delay = drop, duplicate, delay
        self.max_delay_s = max_delay_s
        self.kinds = kinds
        self.counts: dict[str, int] = {"drop": 0, "duplicate": 0, "delay": 0}

    def __call__(self, seen: Seen) -> Action:
        if self.kinds is not None and seen.kind not in self.kinds:
            return FORWARD
        with self._lock:
            roll = self._rng.random()
            if roll < self.drop:
                self.counts["drop"] += 1
                return Drop()
            if roll < self.drop + self.duplicate:
                self.counts["duplicate"] += 1
                return Duplicate()
            if roll < self.drop + self.duplicate + self.delay:
                self.counts["delay"] += 1
                return Delay(self._rng.uniform(0, self.max_delay_s))
        return FORWARD


class _Pair:
    """One client connection and its upstream twin."""

    def __init__(self, client: socket.socket, upstream: socket.socket) -> None:
        self.sockets = {UP: upstream, DOWN: client}  # where packets going that way are written
        self.locks = {UP: threading.Lock(), DOWN: threading.Lock()}
        self.client_id = ""
        self.closed = threading.Event()

    def send(self, direction: Direction, data: bytes) -> None:
        if self.closed.is_set():
            return
        try:
            with self.locks[direction]:
                self.sockets[direction].sendall(data)
        except OSError:
            self.close()

    def close(self) -> None:
        self.closed.set()
        for sock in self.sockets.values():
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()


class EvilBroker:
    """The proxy on a free loopback port; start/stop it, or use it as a context manager."""

    def __init__(self, upstream_host: str, upstream_port: int, script: Script | None = None):
        self.upstream = (upstream_host, upstream_port)
        self.script: Script = script or (lambda seen: FORWARD)
        self.host = "127.0.0.1"
        self._server = socket.create_server((self.host, 0))
        self.port: int = self._server.getsockname()[1]
        self._pairs: list[_Pair] = []
        self._lock = threading.Lock()
        self._seen: list[Seen] = []
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._accept, name="evil-broker", daemon=True)

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._server.close()
        with self._lock:
            pairs = list(self._pairs)
        for pair in pairs:
            pair.close()
        self._thread.join(5)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def seen(self, *, direction: Direction | None = None, kind: str | None = None) -> list[Seen]:
        """What the proxy intercepted so far, oldest first (before the script acted)."""
        with self._lock:
            return [
                s
                for s in self._seen
                if (direction is None or s.direction == direction)
                and (kind is None or s.kind == kind)
            ]

    def inject(self, direction: Direction, client_id: str, publish: Publish) -> int:
        """Send ``publish`` (at QoS 0) to every live connection of ``client_id``: towards
        the broker (``UP``) or the client (``DOWN``). Returns how many it went to."""
        data = encode_publish(replace(publish, qos=0, packet_id=None, dup=False))
        with self._lock:
            pairs = [p for p in self._pairs if p.client_id == client_id and not p.closed.is_set()]
        for pair in pairs:
            pair.send(direction, data)
        return len(pairs)

    # ------------------------------------------------------------------ plumbing

    def _accept(self) -> None:
        while not self._stopping.is_set():
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.upstream, timeout=5)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            pair = _Pair(client, upstream)
            with self._lock:
                self._pairs = [p for p in self._pairs if not p.closed.is_set()] + [pair]
            for direction, source in ((UP, client), (DOWN, upstream)):
                threading.Thread(
                    target=self._pump, args=(pair, direction, source), daemon=True
                ).start()

    def _pump(self, pair: _Pair, direction: Direction, source: socket.socket) -> None:
        buffer = bytearray()
        try:
            while not pair.closed.is_set():
                size = next_packet(buffer)
                if size is None:
                    chunk = source.recv(65536)
                    if not chunk:
                        break
                    buffer += chunk
                    continue
                data = bytes(buffer[:size])
                del buffer[:size]
                self._packet(pair, direction, data)
        except (OSError, PacketError):
            pass
        pair.close()

    def _packet(self, pair: _Pair, direction: Direction, data: bytes) -> None:
        first, body = split(data)
        if direction == UP and packet_type(first) == CONNECT:
            pair.client_id = parse_connect(body).client_id
        if packet_type(first) != PUBLISH:
            pair.send(direction, data)
            return
        publish = parse_publish(first, body)
        seen = Seen(direction, pair.client_id, publish)
        with self._lock:
            self._seen.append(seen)
        action = self.script(seen)
        back: Direction = DOWN if direction == UP else UP
        if isinstance(action, Drop):
            if publish.packet_id is not None:  # the sender believes it delivered
                pair.send(back, puback(publish.packet_id))
        elif isinstance(action, Delay):
            timer = threading.Timer(action.seconds, pair.send, args=(direction, data))
            timer.daemon = True
            timer.start()
        elif isinstance(action, Replace):
            pair.send(direction, encode_publish(replace(publish, payload=action.payload)))
        else:
            pair.send(direction, data)
            if isinstance(action, Duplicate):
                copy = encode_publish(replace(publish, qos=0, packet_id=None, dup=False))
                for _ in range(action.copies):
                    pair.send(direction, copy)
