"""A flaky network between simulated devices and their broker: a TCP relay that can cut.

Network faults must be real for the agents: a session that dies without a DISCONNECT (the
broker publishes the device's last will, paho sees the socket end and the agent reconnects
with backoff), and bytes that arrive damaged. Devices connect to the relay's port instead of
the broker's; the relay copies bytes both ways on one asyncio thread and, when told:

- :meth:`Relay.cut` aborts a share of the live connections (both sides, no MQTT goodbye),
  as a dropped Wi-Fi link or a NAT timeout would;
- :meth:`Relay.corrupt` flips one byte in the payload of the next ``n`` large PUBLISH
  packets towards the devices (model chunks are the large ones), so a device receives a
  corrupted chunk and must refuse it and fetch again. The relay follows MQTT's framing on
  the downlink (fixed header, remaining length) so it damages a payload, never a header.

The hub connects to the broker directly; only the devices' traffic crosses the relay.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import threading
from dataclasses import dataclass, field

CHUNK_BYTES = 1024
"""A PUBLISH towards a device at least this large is taken for a model chunk."""


@dataclass(eq=False)
class _Pipe:
    device: asyncio.StreamWriter
    broker: asyncio.StreamWriter


@dataclass(eq=False)
class Relay:
    """Relay ``127.0.0.1:port`` (:attr:`url`) to ``target_host:target_port``."""

    target_host: str
    target_port: int
    port: int = 0
    accepted: int = 0
    cut_total: int = 0
    corrupted: int = 0
    _pipes: set[_Pipe] = field(default_factory=set)
    _to_corrupt: int = 0
    _loop: asyncio.AbstractEventLoop | None = None
    _server: asyncio.Server | None = None
    _thread: threading.Thread | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> None:
        ready = threading.Event()
        self._loop = asyncio.new_event_loop()

        def run() -> None:
            assert self._loop is not None
            asyncio.set_event_loop(self._loop)
            self._server = self._loop.run_until_complete(
                asyncio.start_server(self._accept, "127.0.0.1", self.port)
            )
            self.port = self._server.sockets[0].getsockname()[1]
            ready.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=run, name="sim-relay", daemon=True)
        self._thread.start()
        ready.wait(10)

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return

        def close() -> None:
            if self._server is not None:
                self._server.close()
            for pipe in list(self._pipes):
                _abort(pipe)
            loop.stop()

        loop.call_soon_threadsafe(close)
        thread.join(10)
        self._loop = self._thread = None

    def connections(self) -> int:
        return len(self._pipes)

    def cut(self, share: float, rng: random.Random) -> int:
        """Abort ``share`` of the live connections (at least one if any); how many."""
        pipes = list(self._pipes)
        chosen = rng.sample(pipes, max(1, round(share * len(pipes)))) if pipes else []
        if self._loop is not None:
            for pipe in chosen:
                self._loop.call_soon_threadsafe(_abort, pipe)
        with self._lock:
            self.cut_total += len(chosen)
        return len(chosen)

    def corrupt(self, n: int) -> None:
        """Damage the payload of the next ``n`` large PUBLISH packets towards devices."""
        with self._lock:
            self._to_corrupt += n

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(self.target_host, self.target_port)
        except OSError:
            writer.transport.abort()
            return
        pipe = _Pipe(writer, up_writer)
        self._pipes.add(pipe)
        self.accepted += 1
        try:
            await asyncio.gather(self._copy(reader, up_writer), self._down(up_reader, writer))
        finally:
            self._pipes.discard(pipe)
            _abort(pipe)

    @staticmethod
    async def _copy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, ConnectionError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.transport.abort()

    async def _down(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Broker to device, packet by packet (MQTT framing), damaging chunks on request."""
        with contextlib.suppress(OSError, ConnectionError, asyncio.IncompleteReadError):
            while True:
                head = await reader.readexactly(1)
                length, raw = 0, b""
                for shift in range(0, 28, 7):
                    byte = await reader.readexactly(1)
                    raw += byte
                    length |= (byte[0] & 0x7F) << shift
                    if not byte[0] & 0x80:
                        break
                body = bytearray(await reader.readexactly(length))
                if head[0] >> 4 == 3 and length >= CHUNK_BYTES and self._take_corruption():
                    body[-length // 3] ^= 0xFF  # inside the payload, past topic and header
                writer.write(head + raw + bytes(body))
                await writer.drain()
        writer.transport.abort()

    def _take_corruption(self) -> bool:
        with self._lock:
            if self._to_corrupt <= 0:
                return False
            self._to_corrupt -= 1
            self.corrupted += 1
            return True


def _abort(pipe: _Pipe) -> None:
    pipe.device.transport.abort()
    pipe.broker.transport.abort()
