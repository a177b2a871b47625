"""The hub's buffered paho socket hands paho exactly the bytes, in order, that the socket
gave, whatever sizes paho asks for; it waits, fails and closes as the socket does. (The
client itself runs against real brokers in test_mqtt.py and the integration tests.)"""

from __future__ import annotations

import socket

import pytest

from hub.transport.mqtt_socket import READ_BYTES, BufferedSocket


class Chunks:
    """A socket stand-in: each recv returns the next queued chunk (up to the size asked)."""

    def __init__(self, *chunks: bytes | type[BaseException]) -> None:
        self.chunks = list(chunks)
        self.asked: list[int] = []
        self.closed = False

    def recv(self, size: int) -> bytes:
        self.asked.append(size)
        chunk = self.chunks.pop(0)
        if isinstance(chunk, type):
            raise chunk()
        if len(chunk) > size:
            self.chunks.insert(0, chunk[size:])
        return chunk[:size]

    def fileno(self) -> int:
        return 42

    def close(self) -> None:
        self.closed = True


def test_small_reads_are_served_from_one_large_read() -> None:
    inner = Chunks(b"\x30\x05hello" + b"\x30\x03abc")
    sock = BufferedSocket(inner)

    assert sock.recv(1) == b"\x30"
    assert sock.pending() == 11
    assert [sock.recv(1), sock.recv(5), sock.recv(1), sock.recv(1), sock.recv(3)] == [
        b"\x05",
        b"hello",
        b"\x30",
        b"\x03",
        b"abc",
    ]
    assert sock.pending() == 0
    assert inner.asked == [READ_BYTES]


def test_a_read_past_the_buffer_returns_what_is_buffered_then_reads_on() -> None:
    inner = Chunks(b"abc", b"defgh")
    sock = BufferedSocket(inner)
    assert sock.recv(1) == b"a"
    assert sock.recv(10) == b"bc"
    assert sock.recv(10) == b"defgh"
    assert sock.buffered() == 0


def test_large_reads_go_straight_through() -> None:
    payload = bytes(range(256)) * 400
    inner = Chunks(payload)
    sock = BufferedSocket(inner)
    assert sock.recv(len(payload)) == payload
    assert inner.asked == [len(payload)]


def test_waiting_errors_and_end_of_stream_pass_through() -> None:
    sock = BufferedSocket(Chunks(BlockingIOError, b"x", b"", ConnectionResetError))
    with pytest.raises(BlockingIOError):
        sock.recv(1)
    assert sock.recv(1) == b"x"
    assert sock.recv(1) == b""
    with pytest.raises(ConnectionResetError):
        sock.recv(1)


def test_it_stands_in_for_the_socket_elsewhere() -> None:
    inner = Chunks()
    sock = BufferedSocket(inner)
    assert sock.fileno() == 42
    sock.close()
    assert inner.closed


def test_pending_adds_what_tls_has_decrypted() -> None:
    class Tls(Chunks):
        def pending(self) -> int:
            return 7

    sock = BufferedSocket(Tls(b"abcd"))
    assert sock.recv(1) == b"a"
    assert sock.pending() == 3 + 7


def test_a_real_socket_pair() -> None:
    left, right = socket.socketpair()
    with left, right:
        right.setblocking(False)
        sock = BufferedSocket(right)
        with pytest.raises(BlockingIOError):
            sock.recv(1)
        left.sendall(b"0123456789")
        assert sock.recv(4) == b"0123"
        assert sock.pending() == 6
        assert sock.recv(100) == b"456789"
