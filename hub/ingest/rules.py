"""Ingest's pure core: one uplink frame in, one verdict out; no store, no broker, no clock.

:func:`judge` runs the checks cheap before costly, nothing expensive before the
signature (docs/protocol.md)::

    size cap ─ topic parse ─ open_frame ─ topic/header agree ─ device lookup
      ─ signature (pinned key; a hello from an unknown/pending device: the key it carries)
      ─ replay window ─ freshness ─ semantic checks

and returns one of

- :class:`Admitted`: authenticated and new (to be written), or a ``duplicate`` of a frame
  already committed (QoS 1 redelivery, agent resend: re-acknowledged, no alarm);
- :class:`Claimed`: a hello whose proof of possession verified, from a device the hub does
  not trust yet; enrollment decides (:func:`hub.fleet.identity.decide`);
- :class:`Refused`: with the error's ``reason``, whether the frame authenticated as its
  (active) device, so the hub lists it in ``HubAck.refused`` and the agent's outbox does
  not clog (``ack``), and the audit ``action`` (``frame_rejected``, or an alert such as
  ``revoked_key_in_use``: :mod:`hub.ingest.security` records alerts apart from garbage).

A frame refused for naming another device or another kind than its topic costs one more
signature check, to tell an attack from garbage: signed by the device its header names
(a device publishing as another: ``identity_mismatch`` alert), or a downlink frame signed
by the hub sent back up (``wrong_role`` alert).

:func:`judge` never raises for anything a peer can send. Refusing leaves the replay window
alone: only admitted frames enter it, so a refused frame sent again is refused again.
What an admitted frame is stored as is the shell's business (:mod:`hub.ingest.batch`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, ClassVar

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from hub.fleet.identity import (
    ACTIVE,
    PENDING,
    REVOKED,
    Claim,
    DevicePending,
    DeviceRevoked,
    UnknownDevice,
)
from protocol import canonical, keys
from protocol.errors import (
    BadSignature,
    IdentityMismatch,
    Malformed,
    Oversize,
    ProtocolError,
    Replayed,
    WrongKind,
)
from protocol.frame import (
    Envelope,
    Limits,
    Message,
    Opened,
    check_topic,
    open_frame,
    payload_type,
    verify_all,
)
from protocol.messages import DataDelta, DeltaUpload, DeviceAck, Hello
from protocol.replay import Freshness, SeqWindow
from protocol.topics import DOWN_KINDS, Route, Topics

WINDOW_CLOCK_SLACK_MS = 60_000
PREDECODE_MAX_BYTES = 16 * 1024
"""Larger frames (deltas, mostly) are left to :func:`judge`: a batch decoded ahead holds
each frame's parts until it is judged, and that should stay small."""


class Invalid(ProtocolError):
    """Authentic and well-formed, but the content makes no sense (refused for good)."""

    reason = "invalid"


class KeyChangeRefused(IdentityMismatch):
    """A hello from an active device carrying a key other than the pinned one."""

    action: ClassVar[str] = "key_change_refused"


class RevokedKeyInUse(DeviceRevoked):
    """A frame signed with the pinned key of a revoked device."""

    action: ClassVar[str] = "revoked_key_in_use"


class CrossDeviceFrame(IdentityMismatch):
    """A frame on one device's topic, validly signed by the device its header names."""

    action: ClassVar[str] = "identity_mismatch"


class WrongRole(WrongKind):
    """A frame on an uplink topic validly signed by the hub's own (downlink) key."""

    reason = "wrong_role"
    action: ClassVar[str] = "wrong_role"


class SeqReused(Replayed):
    """A seq already committed, presented again with different signed content (T10 b)."""

    action: ClassVar[str] = "seq_reused"


@dataclass(frozen=True)
class Rules:
    """What :func:`judge` checks against (from ``HubSettings``)."""

    topics: Topics
    limits: Limits
    freshness: Freshness
    hub_keys: tuple[Ed25519PublicKey, ...] = ()
    """The hub's downlink keys, to recognise its own frames sent back (``wrong_role``)."""


@dataclass(frozen=True)
class Device:
    """What ingest needs to know about an enrolled device."""

    id: str
    status: str
    key_hex: str
    key: Ed25519PublicKey
    window: SeqWindow


@dataclass(frozen=True)
class Admitted:
    """An authenticated frame: new (to be written) or a duplicate of a committed one."""

    device_id: str
    kind: str
    seq: int
    sent_at: int
    message: Message
    fields: dict[str, Any]
    signature: bytes
    duplicate: bool = False
    fields_json: str | None = None
    """``fields`` as canonical JSON when :class:`Decoded` computed it already."""

    def body_json(self) -> str:
        """``fields`` as canonical JSON text, as the uplink tables store it."""
        return self.fields_json if self.fields_json is not None else _json(self.fields)


@dataclass(frozen=True)
class Decoded:
    """A frame opened and verified ahead of :func:`judge`, on another thread, by
    :func:`predecode`: the signature checked out with ``key``.

    Only a cache of pure functions of ``payload`` and ``key``: :func:`judge` still runs
    every check in its own order and uses ``envelope`` only for this very ``payload``
    and when the device it looks up then still has this very ``key`` object.
    """

    payload: bytes
    key: Ed25519PublicKey
    opened: Opened
    envelope: Envelope
    fields_json: str


@dataclass(frozen=True)
class Claimed:
    """A verified hello from an unknown or pending device, and the frame to admit if the
    enrollment decision trusts its key."""

    claim: Claim
    frame: Admitted


@dataclass(frozen=True)
class Refused:
    """A frame refused; ``key`` is the sender named by the topic (``"?"`` if none)."""

    key: str
    kind: str
    seq: int | None
    reason: str
    error: str
    size: int
    ack: bool = False
    known: bool = False
    action: str = "frame_rejected"

    def detail(self) -> dict[str, Any]:
        """What the audit row records: never the frame's content or the error's text."""
        return {"bytes": self.size, "error": self.error, "seq": self.seq}


Outcome = Admitted | Claimed | Refused
Lookup = Callable[[str], Device | None]


def predecode(
    items: Sequence[tuple[str, bytes]], *, rules: Rules, lookup: Lookup
) -> list[Decoded | None]:
    """The opening and signature check :func:`judge` would do for each frame from an
    active device, done ahead of it: ingest runs this on worker threads, side by side
    (Ed25519 releases the GIL; :func:`~protocol.frame.verify_all` keeps it released for
    a whole run of signatures). The same checks in the same order up to the signature;
    None for a frame as soon as one fails, or for anything but the common case (a small
    frame from an active device, not a hello), which judge then handles from scratch.
    Never raises for a peer's input.

    ``lookup`` gives the device's key and status only; judge uses a result only if its
    own lookup returns the same key object.
    """
    results: list[Decoded | None] = [None] * len(items)
    opened: list[tuple[int, Opened, Ed25519PublicKey]] = []
    for index, (topic, payload) in enumerate(items):
        try:
            if len(payload) > min(rules.limits.max_frame_bytes, PREDECODE_MAX_BYTES):
                continue
            route = _route(rules.topics, topic)
            if route.kind == "hello" or route.device_id is None:
                continue
            device = lookup(route.device_id)
            if device is None or device.status != ACTIVE:
                continue
            frame = open_frame(payload, limits=rules.limits)
            check_topic(
                frame.header, expect_kind=route.qualified_kind, expect_device=route.device_id
            )
        except ProtocolError:
            continue
        opened.append((index, frame, device.key))
    envelopes = verify_all((frame, key) for _, frame, key in opened)
    for (index, frame, key), envelope in zip(opened, envelopes, strict=True):
        if not isinstance(envelope, Envelope):
            continue
        try:
            fields_json = _json(frame.fields)
        except ProtocolError:
            continue
        results[index] = Decoded(items[index][1], key, frame, envelope, fields_json)
    return results


def judge(
    topic: str,
    payload: bytes,
    *,
    now_ms: int,
    rules: Rules,
    lookup: Lookup,
    fingerprints: Mapping[tuple[str, int], bytes] | None = None,
    decoded: Decoded | None = None,
) -> Outcome:
    """Verify, deduplicate and validate one uplink frame.

    Args:
        topic, payload: as the broker delivered them.
        now_ms: the batch's time (freshness).
        rules: topics, limits and freshness window.
        lookup: the device by id (its window as of the frames already judged).
        fingerprints: ``signature[:16]`` of recently committed frames by (device, seq),
            to tell a resend (same bytes) from a reused seq (different content).
        decoded: :func:`predecode`'s result for this payload, if it ran: saves opening
            the frame again and, when the device's key is the one it used, verifying it.
    """
    route: Route | None = None
    opened: Opened | None = None
    device: Device | None = None
    authentic = False
    if decoded is not None and decoded.payload is not payload:
        decoded = None
    try:
        if len(payload) > rules.limits.max_frame_bytes:
            raise Oversize(f"{len(payload)} bytes")
        route = _route(rules.topics, topic)
        opened = decoded.opened if decoded is not None else open_frame(payload, limits=rules.limits)
        _check_topic(opened, route, rules, lookup)
        assert route.device_id is not None  # an up route always names its device
        device = lookup(route.device_id)
        if route.kind == "hello" and (device is None or device.status == PENDING):
            return _claim(opened, now_ms, rules.freshness)
        device = _trusted(device, opened)
        if route.kind == "hello" and opened.fields.get("public_key") != device.key_hex:
            _with_own_key(opened)
            raise KeyChangeRefused("hello carries a key other than the pinned one")
        if decoded is not None and decoded.key is device.key:
            envelope, fields_json = decoded.envelope, decoded.fields_json
        else:
            fields_json = None
            try:
                envelope = opened.verify(device.key)
            except Malformed:
                authentic = True  # verify checks the signature before the schema
                raise
        authentic = True
        return _admit(
            envelope, opened, device, now_ms, rules.freshness, fingerprints or {}, fields_json
        )
    except ProtocolError as e:
        header = opened.header if opened else None
        if route is None:  # refused before the topic was parsed (oversize): name the sender
            route = _label(rules.topics, topic)
        return Refused(
            key=(route.device_id if route else None) or "?",
            kind=route.kind if route else "?",
            seq=header.seq if header else None,
            reason=e.reason,
            error=type(e).__name__,
            size=len(payload),
            ack=authentic and not isinstance(e, Replayed),
            known=device is not None,
            action=getattr(e, "action", "frame_rejected"),
        )


def _check_topic(opened: Opened, route: Route, rules: Rules, lookup: Lookup) -> None:
    """:func:`check_topic`, telling attacks (a verified signature) from garbage."""
    header = opened.header
    try:
        check_topic(header, expect_kind=route.qualified_kind, expect_device=route.device_id)
    except WrongKind:
        if header.kind.startswith("down.") and any(_signed_by(opened, k) for k in rules.hub_keys):
            raise WrongRole(f"a hub-signed {header.kind} frame on an uplink topic") from None
        raise
    except IdentityMismatch:
        named = lookup(header.device_id)
        if named is not None and _signed_by(opened, named.key):
            raise CrossDeviceFrame("frame signed by the device its header names") from None
        raise


@lru_cache(maxsize=65_536)
def _route(topics: Topics, topic: str) -> Route:
    """The parsed uplink topic (cached: a fleet publishes on a few topics per device;
    topics that fail to parse raise, and exceptions are not cached)."""
    route = topics.parse(topic)
    if route.direction != "up":
        raise Malformed("not an uplink topic")
    return route


def _label(topics: Topics, topic: str) -> Route | None:
    try:
        return _route(topics, topic)
    except ProtocolError:
        return None


def _claim(opened: Opened, now_ms: int, freshness: Freshness) -> Claimed:
    envelope = _with_own_key(opened)
    freshness.check(opened.header.sent_at, now_ms)
    hello = envelope.message
    assert isinstance(hello, Hello)
    header = opened.header
    admitted = Admitted(
        header.device_id,
        "hello",
        header.seq,
        header.sent_at,
        hello,
        opened.fields,
        opened.signature,
    )
    return Claimed(Claim(header.device_id, header.seq, hello), admitted)


def _with_own_key(opened: Opened) -> Envelope:
    """Proof of possession: a hello must verify with the key it carries."""
    claimed = opened.fields.get("public_key")
    if not isinstance(claimed, str):
        raise Malformed("hello carries no public key")
    return opened.verify(keys.public_from_hex(claimed))


def _trusted(device: Device | None, opened: Opened) -> Device:
    if device is None:
        raise UnknownDevice("no such device")
    if device.status == REVOKED:
        if _signed_by(opened, device.key):
            raise RevokedKeyInUse("frame signed with a revoked key")
        raise DeviceRevoked("device is revoked")
    if device.status != ACTIVE:
        raise DevicePending("device awaits approval")
    return device


def _signed_by(opened: Opened, key: Ed25519PublicKey) -> bool:
    try:
        keys.verify(key, opened.signature, payload_type(opened.header.kind), opened.signed)
    except BadSignature:
        return False
    return True


def _admit(
    envelope: Envelope,
    opened: Opened,
    device: Device,
    now_ms: int,
    freshness: Freshness,
    fingerprints: Mapping[tuple[str, int], bytes],
    fields_json: str | None = None,
) -> Admitted:
    header = envelope.header
    duplicate = device.window.check(header.seq) == "duplicate"
    if duplicate:
        seen = fingerprints.get((device.id, header.seq))
        if seen is not None and seen != opened.signature[:16]:
            raise SeqReused(f"seq {header.seq} reused with different content")
    else:
        freshness.check(header.sent_at, now_ms)
        validate(envelope)
    kind = header.kind.removeprefix("up.")
    return Admitted(
        device.id,
        kind,
        header.seq,
        header.sent_at,
        envelope.message,
        opened.fields,
        opened.signature,
        duplicate,
        fields_json,
    )


def validate(envelope: Envelope) -> None:
    """Semantic checks beyond the schema, on an authenticated message.

    Raises:
        Invalid: an ack for a kind the hub never sends, a data window that ends after it
            was sent (both times are the device's clock), or a delta with no tensors.
    """
    message = envelope.message
    if isinstance(message, DeviceAck) and message.ref_kind not in DOWN_KINDS:
        raise Invalid("ack refers to a kind the hub does not send")
    if (
        isinstance(message, DataDelta)
        and message.window_end > envelope.header.sent_at + WINDOW_CLOCK_SLACK_MS
    ):
        raise Invalid("data window ends after the frame was sent")
    if isinstance(message, DeltaUpload) and not message.tensors:
        raise Invalid("delta carries no tensors")


def _json(value: Any) -> str:
    return canonical.dumps(value).decode("utf-8")
