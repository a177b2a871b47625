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

Decoding runs the cheap checks first (threat-model rule 3): size cap, magic and version,
header JSON, body hash, signature (over the bytes received), then the typed message. It
raises only :class:`~protocol.errors.ProtocolError` subclasses and never returns a partial
value.
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
    ProtocolError,
    UnknownVersion,
    WrongKind,
)

MAGIC = b"EF"
PROTOCOL_VERSION = 1
_PREFIX = struct.Struct(">2sBI")
_NONCE = re.compile(r"[0-9a-f]{32}")
_CANONICAL_HEADER = re.compile(
    r'\{"body_sha256":"(' + schema.HEX64.pattern + r')"'
    r',"device_id":"(' + schema.NAME_PATTERN.pattern + r')"'
    r',"kind":"([a-z]{1,8}\.[a-z]{1,32})"'
    r',"msg":(\{.*\})'
    r',"nonce":"(' + _NONCE.pattern + r')"'
    r',"sent_at":(0|[1-9][0-9]{0,18})'
    r',"seq":([1-9][0-9]{0,18})\}',
    re.DOTALL,
)
"""The top level of a header as :func:`encode` writes it (canonical JSON: sorted keys, no
whitespace), with every field but ``msg`` already in the format :class:`Header` checks.
Strings these patterns admit contain nothing JSON would escape, so a match is a JSON
object with exactly the header's keys, each once (see :func:`_read_header`)."""

Direction = Literal["up", "down"]


@dataclass(frozen=True)
class Limits:
    """Caps applied before anything is parsed (threat-model T4, B1)."""

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
        self._check_signature(verifying)
        return self._typed()

    def _check_signature(self, verifying: Ed25519PublicKey | Iterable[Ed25519PublicKey]) -> None:
        candidates = [verifying] if isinstance(verifying, Ed25519PublicKey) else verifying
        ptype = payload_type(self.header.kind)
        for public in candidates:
            try:
                keys.verify(public, self.signature, ptype, self.signed)
                return
            except BadSignature:
                continue
        raise BadSignature(f"{self.header.kind} frame signature does not verify")

    def _typed(self) -> Envelope:
        """The envelope; only ever called once the signature checked out."""
        kind = self.header.kind
        cls = REGISTRY[kind]
        fields = self.fields
        if cls._BODY:
            if cls._BODY in fields:
                raise Malformed(f"field {cls._BODY!r} belongs in the body")
            fields = {**fields, cls._BODY: self.body}
        elif self.body:
            raise Malformed(f"{kind} carries no body")
        return Envelope(self.header, schema.from_json(cls, fields, path=kind))


def verify_all(
    frames: Iterable[tuple[Opened, Ed25519PublicKey | Iterable[Ed25519PublicKey]]],
) -> list[Envelope | ProtocolError]:
    """:meth:`Opened.verify` for many frames: for each, its envelope or the error that
    verify would raise, in order.

    Every signature is checked before any message is built, so a thread verifying a
    batch runs Ed25519 back to back, with the GIL released (cryptography releases it),
    rather than alternating it with Python work: threads verifying batches side by side
    then hardly wait for each other. Same checks and results as calling verify on each.
    """
    pending = list(frames)
    checked: list[Envelope | ProtocolError | None] = []
    for opened, verifying in pending:
        try:
            opened._check_signature(verifying)
            checked.append(None)
        except ProtocolError as e:
            checked.append(e)
    results: list[Envelope | ProtocolError] = []
    for (opened, _), outcome in zip(pending, checked, strict=True):
        if outcome is None:
            try:
                outcome = opened._typed()
            except ProtocolError as e:
                outcome = e
        results.append(outcome)
    return results


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
    header, fields = _read_header(frame[_PREFIX.size : body_start])
    body = frame[body_start:body_end]
    if hashlib.sha256(body).hexdigest() != header.body_sha256:
        raise Malformed("body does not match body_sha256")
    return Opened(header, fields, body, frame[:body_end], frame[body_end:])


def _read_header(data: bytes) -> tuple[Header, dict[str, Any]]:
    """The header and its ``msg`` object.

    Fast path for what :func:`encode` writes: when the top level matches
    :data:`_CANONICAL_HEADER`, only ``msg`` goes through the (strict) JSON parser, since
    the pattern has already checked every other field's type and format. Any other header
    is parsed whole, as strictly: both paths refuse the same headers.
    """
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise Malformed("invalid JSON: UnicodeDecodeError") from e
    match = _CANONICAL_HEADER.fullmatch(text)
    if match is None:
        head = canonical.loads(data)
        if not isinstance(head, dict):
            raise Malformed("header is not a JSON object")
        fields = head.pop("msg", None)
        if not isinstance(fields, dict):
            raise Malformed("header has no msg object")
        return _header(head), fields
    body_sha256, device_id, kind, msg, nonce, sent_at, seq = match.groups()
    seq_value, sent_at_value = int(seq), int(sent_at)
    if seq_value > schema.INT64_MAX or sent_at_value > schema.INT64_MAX:
        raise Malformed("header seq and sent_at must be 64-bit integers")
    header = Header(kind, device_id, seq_value, sent_at_value, nonce, body_sha256)
    fields = canonical.loads(msg.encode("utf-8"))
    if not isinstance(fields, dict):  # cannot happen: the pattern demands {...}
        raise Malformed("header has no msg object")
    return header, fields


def _header(head: dict[str, Any]) -> Header:
    """Header fields, type-checked by hand (headers not in the form encode writes)."""
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
