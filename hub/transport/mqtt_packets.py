"""MQTT 3.1.1 packets, pure: framing, CONNECT, CONNACK, PUBLISH and PUBACK as values.

Just enough of the protocol for two readers that must look inside packets without being
a broker: the embedded broker's gate (:mod:`hub.transport.broker_gate`), which reads a
client's CONNECT and decides before amqtt sees it, and the evil broker of the test suite
(``tests/evil_broker.py``), which reorders, drops and rewrites PUBLISH packets between
clients and a real broker. Bytes in, values out; no sockets.

Laws (tested with hypothesis): ``parse_publish(*split(encode_publish(p))) == p`` and
``parse_connect(split(encode_connect(c))[1]) == c``; :func:`read_remaining_length` inverts
:func:`remaining_length`. Every parser raises :class:`PacketError` on anything malformed,
never another exception.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

CONNECT, CONNACK, PUBLISH, PUBACK = 1, 2, 3, 4
SUBSCRIBE, SUBACK, PINGREQ, DISCONNECT = 8, 9, 12, 14
MAX_REMAINING = 268_435_455  # four length bytes, the protocol's own ceiling

# CONNACK return codes (MQTT 3.1.1 section 3.2.2.3)
ACCEPTED = 0
IDENTIFIER_REJECTED = 2
BAD_CREDENTIALS = 4
NOT_AUTHORIZED = 5


class PacketError(ValueError):
    """Bytes that are not the MQTT 3.1.1 packet they claim to be."""


@dataclass(frozen=True)
class Connect:
    """A CONNECT's fields (protocol level 4: MQTT 3.1.1)."""

    client_id: str
    clean_session: bool = True
    keepalive_s: int = 60
    username: str | None = None
    password: bytes | None = None
    will_topic: str | None = None
    will_payload: bytes = b""
    will_qos: int = 0
    will_retain: bool = False


@dataclass(frozen=True)
class Publish:
    """A PUBLISH; ``packet_id`` is None exactly when ``qos`` is 0."""

    topic: str
    payload: bytes
    qos: int = 0
    retain: bool = False
    dup: bool = False
    packet_id: int | None = None

    def __post_init__(self) -> None:
        if self.qos not in (0, 1, 2) or (self.packet_id is None) != (self.qos == 0):
            raise PacketError("a PUBLISH has a packet id exactly when its QoS is above 0")


def remaining_length(n: int) -> bytes:
    """The variable-length encoding of ``n`` (1 to 4 bytes)."""
    if not 0 <= n <= MAX_REMAINING:
        raise PacketError(f"remaining length {n} out of range")
    out = bytearray()
    while True:
        n, digit = divmod(n, 128)
        out.append(digit | (0x80 if n else 0))
        if not n:
            return bytes(out)


def read_remaining_length(data: bytes, offset: int = 1) -> tuple[int, int] | None:
    """``(length, offset of the body)`` from ``data[offset:]``, None if more bytes are
    needed.

    Raises:
        PacketError: more than four length bytes.
    """
    value, shift = 0, 0
    for i in range(4):
        if offset + i >= len(data):
            return None
        byte = data[offset + i]
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, offset + i + 1
        shift += 7
    raise PacketError("remaining length longer than four bytes")


def split(data: bytes) -> tuple[int, bytes]:
    """One whole packet's ``(first byte, body)``.

    Raises:
        PacketError: ``data`` is not exactly one packet.
    """
    parsed = read_remaining_length(data)
    if parsed is None:
        raise PacketError("truncated packet")
    length, start = parsed
    if len(data) != start + length:
        raise PacketError("packet length does not match its header")
    return data[0], data[start:]


def next_packet(buffer: bytes | bytearray) -> int | None:
    """The size of the first whole packet in ``buffer``, None while it is incomplete.

    Raises:
        PacketError: a malformed length.
    """
    parsed = read_remaining_length(bytes(buffer[:5]))
    if parsed is None:
        return None
    length, start = parsed
    return start + length if len(buffer) >= start + length else None


def packet(first: int, body: bytes) -> bytes:
    """A whole packet from its first byte and body."""
    return bytes([first]) + remaining_length(len(body)) + body


def packet_type(first: int) -> int:
    return first >> 4


# ---------------------------------------------------------------------- PUBLISH


def parse_publish(first: int, body: bytes) -> Publish:
    """Raises PacketError: not a well-formed PUBLISH."""
    if packet_type(first) != PUBLISH:
        raise PacketError("not a PUBLISH")
    qos = (first >> 1) & 0x03
    if qos == 3:
        raise PacketError("PUBLISH with QoS 3")
    topic, offset = _string(body, 0)
    packet_id = None
    if qos:
        packet_id, offset = _u16(body, offset), offset + 2
        if packet_id == 0:
            raise PacketError("packet id 0")
    return Publish(topic, body[offset:], qos, bool(first & 0x01), bool(first & 0x08), packet_id)


def encode_publish(p: Publish) -> bytes:
    first = (PUBLISH << 4) | (0x08 if p.dup else 0) | (p.qos << 1) | (0x01 if p.retain else 0)
    body = _encode_string(p.topic)
    if p.packet_id is not None:
        body += struct.pack(">H", p.packet_id)
    return packet(first, body + p.payload)


def puback(packet_id: int) -> bytes:
    return packet(PUBACK << 4, struct.pack(">H", packet_id))


def parse_puback(first: int, body: bytes) -> int:
    """The acknowledged packet id. Raises PacketError: not a PUBACK."""
    if packet_type(first) != PUBACK or len(body) != 2:
        raise PacketError("not a PUBACK")
    return _u16(body, 0)


# ---------------------------------------------------------------------- CONNECT


def parse_connect(body: bytes) -> Connect:
    """The fields of a CONNECT's body (after the fixed header).

    Raises:
        PacketError: not MQTT 3.1.1 (protocol name ``MQTT``, level 4), reserved flag set,
            or a field that does not fit its flags.
    """
    name, offset = _string(body, 0)
    if name != "MQTT" or offset + 4 > len(body) or body[offset] != 4:
        raise PacketError("not an MQTT 3.1.1 CONNECT")
    flags = body[offset + 1]
    keepalive = _u16(body, offset + 2)
    offset += 4
    if flags & 0x01:
        raise PacketError("reserved CONNECT flag set")
    client_id, offset = _string(body, offset)
    will_topic, will_payload = None, b""
    will_qos, will_retain = (flags >> 3) & 0x03, bool(flags & 0x20)
    if flags & 0x04:
        will_topic, offset = _string(body, offset)
        will_payload, offset = _binary(body, offset)
    elif will_qos or will_retain:
        raise PacketError("will QoS or retain without a will")
    username = password = None
    if flags & 0x80:
        username, offset = _string(body, offset)
    if flags & 0x40:
        if username is None:
            raise PacketError("password without a user name")
        password, offset = _binary(body, offset)
    if offset != len(body):
        raise PacketError("trailing bytes after CONNECT payload")
    return Connect(
        client_id,
        bool(flags & 0x02),
        keepalive,
        username,
        password,
        will_topic,
        will_payload,
        will_qos,
        will_retain,
    )


def encode_connect(c: Connect) -> bytes:
    flags = 0x02 if c.clean_session else 0
    payload = _encode_string(c.client_id)
    if c.will_topic is not None:
        flags |= 0x04 | (c.will_qos << 3) | (0x20 if c.will_retain else 0)
        payload += _encode_string(c.will_topic) + _encode_binary(c.will_payload)
    if c.username is not None:
        flags |= 0x80
        payload += _encode_string(c.username)
    if c.password is not None:
        flags |= 0x40
        payload += _encode_binary(c.password)
    header = _encode_string("MQTT") + bytes([4, flags]) + struct.pack(">H", c.keepalive_s)
    return packet(CONNECT << 4, header + payload)


def connack(return_code: int, session_present: bool = False) -> bytes:
    return packet(CONNACK << 4, bytes([1 if session_present else 0, return_code]))


# ---------------------------------------------------------------------- fields


def _u16(data: bytes, offset: int) -> int:
    if offset + 2 > len(data):
        raise PacketError("truncated two-byte integer")
    value: int = struct.unpack_from(">H", data, offset)[0]
    return value


def _binary(data: bytes, offset: int) -> tuple[bytes, int]:
    length = _u16(data, offset)
    end = offset + 2 + length
    if end > len(data):
        raise PacketError("truncated field")
    return data[offset + 2 : end], end


def _string(data: bytes, offset: int) -> tuple[str, int]:
    raw, end = _binary(data, offset)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise PacketError("string is not UTF-8") from e
    if "\x00" in text:
        raise PacketError("string contains NUL")
    return text, end


def _encode_binary(data: bytes) -> bytes:
    if len(data) > 0xFFFF:
        raise PacketError("field longer than 65535 bytes")
    return struct.pack(">H", len(data)) + data


def _encode_string(text: str) -> bytes:
    return _encode_binary(text.encode("utf-8"))
