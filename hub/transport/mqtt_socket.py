"""A paho client that reads its socket in large chunks: fewer system calls per message.

paho-mqtt 2.x reads every packet with at least three ``recv`` calls (the command byte,
each remaining-length byte, the rest) and handles one packet per pass of its network
loop, each pass a ``select``. For a stream of small QoS 1 PUBLISHes that is most of
what the hub's network thread spends per message. :class:`BufferedClient` changes only
how bytes come off the socket:

- the socket paho connects is wrapped in :class:`BufferedSocket`, which ``recv``\\ s up
  to 64 KiB at once and serves paho's small reads from that buffer, and reports what it
  holds through ``pending()``, the hook paho already polls for TLS sockets (bytes
  decrypted but not yet read), so its loop never waits in ``select`` while a buffered
  packet is due;
- :meth:`BufferedClient.loop_read` handles every complete packet already buffered (up
  to :data:`MAX_PACKETS_PER_READ`) in one pass instead of one, and meanwhile spares the
  wake-up byte paho writes to itself for each PUBACK it queues.

Packets, their order, the PUBACKs paho sends after each ``on_message`` and everything
paho does on a connection error are unchanged. This reaches into paho 2.x internals
(``_create_socket``, the one place paho makes its socket, and ``_sockpairW``); the
tests in ``tests/hub/test_mqtt.py`` run this client against real brokers.
"""

from __future__ import annotations

from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import MQTTErrorCode

READ_BYTES = 64 * 1024
MAX_PACKETS_PER_READ = 64


class BufferedSocket:
    """A socket (plain, TLS or paho's websocket wrapper) with a read buffer in front."""

    __slots__ = ("_buffer", "_pos", "_sock")

    def __init__(self, sock: Any) -> None:
        self._sock = sock
        self._buffer = b""
        self._pos = 0

    def recv(self, size: int) -> bytes:
        """Up to ``size`` bytes: from the buffer, else from one large read of the socket
        (raising what the socket raises: ``BlockingIOError`` when nothing is there)."""
        buffer, pos = self._buffer, self._pos
        if pos >= len(buffer):
            buffer = bytes(self._sock.recv(max(size, READ_BYTES)))
            if len(buffer) <= size:  # also the b"" of a closed connection
                return buffer
            pos = 0
        chunk = buffer[pos : pos + size]
        pos += len(chunk)
        if pos >= len(buffer):
            buffer, pos = b"", 0
        self._buffer, self._pos = buffer, pos
        return chunk

    def buffered(self) -> int:
        """Bytes read from the socket and not yet handed to paho."""
        return len(self._buffer) - self._pos

    def pending(self) -> int:
        """What paho may read without waiting: the buffer and, for TLS, what the TLS
        layer has already decrypted."""
        inner = getattr(self._sock, "pending", None)
        return self.buffered() + (inner() if inner is not None else 0)

    def fileno(self) -> int:
        return int(self._sock.fileno())

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


class _NoWake:
    """Stands in for paho's wake-up socket while its own thread reads (see loop_read)."""

    def send(self, data: bytes) -> int:
        return len(data)

    def close(self) -> None:
        pass


_NO_WAKE: Any = _NoWake()


class BufferedClient(paho.Client):
    """``paho.Client`` reading through a :class:`BufferedSocket`; same API otherwise."""

    def _create_socket(self) -> Any:
        return BufferedSocket(super()._create_socket())

    def loop_read(self, max_packets: int = 1) -> MQTTErrorCode:
        # Every packet paho queues (a PUBACK per message) also writes a byte to a socket
        # pair to wake its own select(). While this thread reads, that byte is a wasted
        # system call: the loop's next pass sees the queued packets (want_write) before
        # it selects, whichever thread queued them. So the pair is swapped for a no-op
        # meanwhile (never for None: other threads read the attribute without a lock).
        wake = self._sockpairW
        if wake is not None:
            self._sockpairW = _NO_WAKE
        try:
            rc = super().loop_read(max_packets)
            for _ in range(MAX_PACKETS_PER_READ - 1):
                sock = self._sock
                if rc != MQTTErrorCode.MQTT_ERR_SUCCESS or not isinstance(sock, BufferedSocket):
                    break
                if not sock.buffered():
                    break
                rc = super().loop_read(max_packets)
            return rc
        finally:
            if self._sockpairW is _NO_WAKE:
                self._sockpairW = wake
