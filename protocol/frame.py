"""The signed frame: one MQTT payload, one message, one Ed25519 signature.

Byte layout (all integers big-endian)::

    offset  size  field
    0       2     magic b"EF"
    2       1     protocol version (1)
    3       4     header length H
    7       H     header: canonical JSON {kind, device_id, seq, sent_at, nonce, body_sha256, msg}
    7+H     B     body: opaque bytes (tensors, chunk data); B may be 0
    end-64  64    Ed25519 signature over PAE(payload_type, frame[:-64])

``payload_type`` is ``application/vnd.edgefleet.<dir>.<kind>+frame; v=1``, so a
signature made for one kind (or direction) never verifies as another, and the frame
without its last 64 bytes is a DSSE payload any DSSE library can check.

Decoding runs the cheap checks first (THREATS.md rule 3): size cap, magic and version,
header JSON, body hash, signature, then the typed message. It raises only
:class:`~protocol.errors.ProtocolError` subclasses and never returns a partial value.
Round-trip law: ``decode(encode(m, header...), key) == Envelope(header, m)``.

This module does no I/O; time, nonces and keys are arguments.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, TypeVar

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from protocol import canonical, keys, schema
from protocol.errors import (
    BadSignature,
    IdentityMismatch,
    Malformed,
    Oversize,
    UnknownVersion,
    WrongKind,
)

MAGIC = b"EF"
PROTOCOL_VERSION = 1
_PREFIX = struct.Struct(">2sBI")
_NONCE = re.compile(r"[0-9a-f]{32}")

Direction = Literal["up", "down"]


@dataclass(frozen=True)
class Limits:
    """Caps applied before anything is parsed (THREATS.md T4, B1)."""

    max_frame_bytes: int = 256 * 1024
    max_header_bytes: int = 64 * 1024


DEFAULT_LIMITS = Limits()


class Message:
    """Base of every frame message: a frozen dataclass registered under (direction, kind).

    A field marked ``body_field()`` travels as the frame's binary body; the others are
    the header's ``msg`` object. Do not subclass a concrete message.
    """

    DIRECTION: ClassVar[Direction]
    KIND: ClassVar[str]
    _BODY: ClassVar[str | None] = None

    @classmethod
    def qualified_kind(cls) -> str:
        return f"{cls.DIRECTION}.{cls.KIND}"


M = TypeVar("M", bound=Message)
REGISTRY: dict[str, type[Message]] = {}


def body_field() -> Any:
    """Mark the one ``bytes`` field that travels as the frame body."""
    return dataclasses.field(metadata={"body": True})


def register(direction: Direction, kind: str) -> Any:
    """Class decorator: make ``cls`` the message for ``<direction>/<kind>``."""

    def wrap(cls: type[M]) -> type[M]:
        cls.DIRECTION = direction
        cls.KIND = kind
        body = [f.name for f in dataclasses.fields(cls) if f.metadata.get("body")]  # type: ignore[arg-type]
        cls._BODY = body[0] if body else None
        REGISTRY[cls.qualified_kind()] = cls
        return cls

    return wrap


def payload_type(qualified_kind: str, version: int = PROTOCOL_VERSION) -> str:
    """The DSSE payload type a frame of this kind is signed under."""
    return f"application/vnd.edgefleet.{qualified_kind}+frame; v={version}"


@dataclass(frozen=True)
class Header:
    """Who sent what, when, and in which order. ``sent_at`` is milliseconds since the epoch."""

    kind: str
    device_id: str
    seq: int
    sent_at: int
    nonce: str
    body_sha256: str

    def __post_init__(self) -> None:
        if self.kind not in REGISTRY:
            raise Malformed(f"unknown message kind {self.kind[:40]!r}")
        schema.check_name(self.device_id, "device_id")
        schema.check_range(self.seq, "seq", 1)
        schema.check_range(self.sent_at, "sent_at", 0)
        if _NONCE.fullmatch(self.nonce) is None:
            raise Malformed("nonce must be 32 lowercase hex digits")
        schema.check_sha256(self.body_sha256, "body_sha256")


@dataclass(frozen=True)
class Envelope:
    """A verified frame: its header and its typed message."""

    header: Header
    message: Message


def encode(
    message: Message,
    *,
    device_id: str,
    seq: int,
    sent_at: int,
    nonce: bytes,
    key: Ed25519PrivateKey,
    limits: Limits = DEFAULT_LIMITS,
) -> bytes:
    """Sign and frame ``message``.

    ``nonce`` is 16 random bytes from the caller (this module has no randomness).

    Raises:
        Malformed: a header field out of range.
        Oversize: the frame would exceed ``limits.max_frame_bytes``.
    """
    if len(nonce) != 16:
        raise Malformed("nonce must be 16 bytes")
    kind = message.qualified_kind()
    body = getattr(message, message._BODY) if message._BODY else b""
    header = Header(
        kind=kind,
        device_id=device_id,
        seq=seq,
        sent_at=sent_at,
        nonce=nonce.hex(),
        body_sha256=hashlib.sha256(body).hexdigest(),
    )
    fields = schema.to_json(message)
    if message._BODY:
        del fields[message._BODY]
    head = schema.to_json(header)
    head["msg"] = fields
    head_bytes = canonical.dumps(head)
    unsigned = _PREFIX.pack(MAGIC, PROTOCOL_VERSION, len(head_bytes)) + head_bytes + body
    size = len(unsigned) + keys.SIGNATURE_SIZE
    if size > limits.max_frame_bytes:
        raise Oversize(f"{kind} frame of {size} bytes exceeds {limits.max_frame_bytes}")
    return unsigned + keys.sign(key, payload_type(kind), unsigned)


@dataclass(frozen=True)
class Opened:
    """A frame whose layout and header parsed but whose signature is not yet checked.

    Only the hub's enrollment path looks inside before verifying (to find the public key a
    ``hello`` claims); everything else calls :func:`decode`.
    """

    header: Header
    fields: dict[str, Any]
    body: bytes
    signed: bytes
    signature: bytes

    def verify(self, verifying: Ed25519PublicKey | Iterable[Ed25519PublicKey]) -> Envelope:
        """Check the signature with any of ``verifying`` and build the typed message.

        Raises:
            BadSignature: no key verifies it.
            Malformed: the message fields do not fit the kind's schema.
        """
        candidates = [verifying] if isinstance(verifying, Ed25519PublicKey) else list(verifying)
        ptype = payload_type(self.header.kind)
        for public in candidates:
            try:
                keys.verify(public, self.signature, ptype, self.signed)
                break
            except BadSignature:
                continue
        else:
            raise BadSignature(f"{self.header.kind} frame signature does not verify")
        cls = REGISTRY[self.header.kind]
        fields = dict(self.fields)
        if cls._BODY:
            if cls._BODY in fields:
                raise Malformed(f"field {cls._BODY!r} belongs in the body")
            fields[cls._BODY] = self.body
        elif self.body:
            raise Malformed(f"{self.header.kind} carries no body")
        return Envelope(self.header, schema.from_json(cls, fields, path=self.header.kind))


def open_frame(frame: bytes, *, limits: Limits = DEFAULT_LIMITS) -> Opened:
    """Parse the layout and header of ``frame`` without checking its signature.

    Raises:
        Oversize: longer than ``limits.max_frame_bytes``.
        UnknownVersion: wrong magic or protocol version.
        Malformed: truncated, bad header JSON, or a body that does not match its hash.
    """
    if len(frame) > limits.max_frame_bytes:
        raise Oversize(f"frame of {len(frame)} bytes exceeds {limits.max_frame_bytes}")
    if len(frame) < _PREFIX.size + keys.SIGNATURE_SIZE:
        raise Malformed(f"frame of {len(frame)} bytes is truncated")
    magic, version, head_len = _PREFIX.unpack_from(frame)
    if magic != MAGIC:
        raise UnknownVersion("not an edgefleet frame (bad magic)")
    if version != PROTOCOL_VERSION:
        raise UnknownVersion(f"protocol version {version} is not supported")
    if head_len > limits.max_header_bytes:
        raise Oversize(f"header of {head_len} bytes exceeds {limits.max_header_bytes}")
    body_start = _PREFIX.size + head_len
    body_end = len(frame) - keys.SIGNATURE_SIZE
    if body_start > body_end:
        raise Malformed("header length runs past the end of the frame")
    head = canonical.loads(frame[_PREFIX.size : body_start])
    if not isinstance(head, dict):
        raise Malformed("header is not a JSON object")
    fields = head.pop("msg", None)
    if not isinstance(fields, dict):
        raise Malformed("header has no msg object")
    header = _header(head)
    body = frame[body_start:body_end]
    if hashlib.sha256(body).hexdigest() != header.body_sha256:
        raise Malformed("body does not match body_sha256")
    return Opened(header, fields, body, frame[:body_end], frame[body_end:])


def _header(head: dict[str, Any]) -> Header:
    """Header fields, type-checked by hand: this runs for every frame the hub receives."""
    if head.keys() != _HEADER_FIELDS:
        raise Malformed("header fields are not exactly " + ", ".join(sorted(_HEADER_FIELDS)))
    kind, device_id, nonce, body_sha256 = (
        head["kind"],
        head["device_id"],
        head["nonce"],
        head["body_sha256"],
    )
    seq, sent_at = head["seq"], head["sent_at"]
    if not all(type(v) is str for v in (kind, device_id, nonce, body_sha256)):
        raise Malformed("header kind, device_id, nonce and body_sha256 must be strings")
    if type(seq) is not int or type(sent_at) is not int or max(seq, sent_at) > schema.INT64_MAX:
        raise Malformed("header seq and sent_at must be 64-bit integers")
    return Header(kind, device_id, seq, sent_at, nonce, body_sha256)


_HEADER_FIELDS = frozenset(f.name for f in dataclasses.fields(Header))


def decode(
    frame: bytes,
    verifying: Ed25519PublicKey | Iterable[Ed25519PublicKey],
    *,
    expect_kind: str | None = None,
    expect_device: str | None = None,
    limits: Limits = DEFAULT_LIMITS,
) -> Envelope:
    """Open, verify and type ``frame``.

    ``expect_kind`` is the qualified kind the topic promised (``"up.delta"``) and
    ``expect_device`` the device id in the topic; either mismatch is refused before the
    signature is even checked.

    Raises:
        ProtocolError: any subclass, see :func:`open_frame` and :meth:`Opened.verify`;
            ``WrongKind`` and ``IdentityMismatch`` for a frame that disagrees with its topic.
    """
    opened = open_frame(frame, limits=limits)
    check_topic(opened.header, expect_kind=expect_kind, expect_device=expect_device)
    return opened.verify(verifying)


def check_topic(
    header: Header, *, expect_kind: str | None = None, expect_device: str | None = None
) -> None:
    """Refuse a header that disagrees with the topic it arrived on.

    Raises:
        WrongKind: the header's kind is not the topic's.
        IdentityMismatch: the header's device id is not the topic's.
    """
    if expect_kind is not None and header.kind != expect_kind:
        raise WrongKind(f"{header.kind} frame on a {expect_kind} topic")
    if expect_device is not None and header.device_id != expect_device:
        raise IdentityMismatch("header device_id differs from the topic's")
