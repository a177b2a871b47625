"""The one exception tree every edgefleet component raises from.

Callers pick the level they care about; ``reason`` is the short code written to the
audit log and to ``rejected_total{reason=...}``; ``status_hint`` is what an HTTP
server answers when the error reaches it (as h11 does)::

    EdgefleetError
    └─ ProtocolError                       a peer sent something we refuse (400)
       ├─ Malformed                        bytes that are not a valid frame/document
       │  ├─ Oversize                      larger than the configured cap
       │  ├─ UnknownVersion                magic or protocol version we do not speak
       │  ├─ NonFinite                     NaN/Inf where numbers must be finite
       │  └─ ShapeMismatch                 tensors that do not fit the model's names and shapes
       ├─ UnsafeModel                      an ONNX model no runtime may load
       ├─ BadSignature                     signature missing or does not verify
       ├─ WrongKind                        a valid message presented as another kind
       ├─ IdentityMismatch                 topic, header and key disagree on who sent it
       ├─ Replayed                         seq at or below what was already accepted
       ├─ Stale                            sent_at outside the freshness window
       │  └─ SeqAhead                      a downlink seq stamped further ahead than time allows
       └─ TrustError                       the update trust chain refuses a document
          ├─ ThresholdNotMet               too few distinct trusted signatures
          ├─ Expired                       past its expiry at this cycle's ``now``
          ├─ Rollback                      a version or counter going backwards
          ├─ DeviceMismatch                addressed to another device
          ├─ NotReleased                   names bytes the release list does not hold
          ├─ MixAndMatch                   documents that never coexisted
          ├─ Incompatible                  compatibility ids do not match the runtime
          ├─ ContentMismatch               bytes whose hash or length differ from the signed ones
          ├─ EqualVersionConflict          the trusted version again, with other content
          └─ VersionGap                    a root chain that skips the next version

``agent`` and ``hub`` add their own branches (``StoreError``, ``RolloutError``...) under
``EdgefleetError``; nothing in ``protocol`` raises anything outside this tree.
"""

from __future__ import annotations

from typing import ClassVar


class EdgefleetError(Exception):
    """Root of every error edgefleet raises on purpose."""

    reason: ClassVar[str] = "error"
    status_hint: ClassVar[int] = 500


class ProtocolError(EdgefleetError):
    """A peer sent bytes or a document we refuse; never the local program's fault."""

    reason = "protocol"
    status_hint = 400


class Malformed(ProtocolError):
    """Not a well-formed frame, document or tensor container."""

    reason = "malformed"


class Oversize(Malformed):
    """Larger than the configured cap; refused before any parsing."""

    reason = "oversize"
    status_hint = 413


class UnknownVersion(Malformed):
    """Magic bytes or protocol version this build does not speak."""

    reason = "unknown_version"


class NonFinite(Malformed):
    """NaN or Inf where the protocol requires finite numbers."""

    reason = "non_finite"


class ShapeMismatch(Malformed):
    """Tensors (a delta, head parameters) whose names, shapes or layout differ from the
    model's (threat-model B26)."""

    reason = "shape_mismatch"


class UnsafeModel(ProtocolError):
    """An ONNX model no runtime may load: unparsable, external data, a custom operator
    domain, impossible tensor sizes, or refused by onnx.checker (T5, B22)."""

    reason = "unsafe_model"


class BadSignature(ProtocolError):
    """The signature is missing, malformed or does not verify."""

    reason = "bad_signature"
    status_hint = 401


class WrongKind(ProtocolError):
    """A valid message of one kind presented as another (the kind is inside the signature)."""

    reason = "wrong_type"


class IdentityMismatch(ProtocolError):
    """Topic, header and signing key disagree on who sent the message."""

    reason = "identity_mismatch"
    status_hint = 403


class Replayed(ProtocolError):
    """A sequence number already accepted, or too old for the replay window."""

    reason = "replay"
    status_hint = 409


class Stale(ProtocolError):
    """``sent_at`` is outside the freshness window around ``now``."""

    reason = "stale"


class SeqAhead(Stale):
    """A downlink seq whose time part lies further ahead of the receiver's trusted time
    than any hub could have stamped it (:class:`protocol.replay.DownlinkWindow`)."""

    reason = "seq_ahead"


class TrustError(ProtocolError):
    """The TUF/Uptane-style trust chain refuses a document or an install."""

    reason = "untrusted"
    status_hint = 403


class ThresholdNotMet(TrustError):
    """Fewer distinct trusted keys signed than the role's threshold requires."""

    reason = "unsigned"


class Expired(TrustError):
    """The document's expiry is at or before this cycle's ``now``."""

    reason = "expired"


class Rollback(TrustError):
    """A version or release counter lower than the one already trusted."""

    reason = "rollback"


class DeviceMismatch(TrustError):
    """An assignment bound to another device."""

    reason = "device_mismatch"


class NotReleased(TrustError):
    """An assignment naming bytes that the trusted release list does not hold."""

    reason = "not_released"


class MixAndMatch(TrustError):
    """Documents that were never current together (an assignment built on a newer release list)."""

    reason = "mix_and_match"


class Incompatible(TrustError):
    """A release whose compatibility ids (opset, I/O signature) the runtime cannot serve."""

    reason = "incompatible"


class ContentMismatch(TrustError):
    """Bytes whose sha256 or length differ from the signed ones."""

    reason = "hash_mismatch"


class EqualVersionConflict(TrustError):
    """Same version as the trusted document but different content; the trusted one stays.

    TUF's equal-version rule: not an attack on its own (a hub re-signing by mistake
    looks the same), so callers log it and carry on with the state they hold.
    """

    reason = "equal_version"


class VersionGap(TrustError):
    """A root chain that skips the next version: each step must be signed by its predecessor."""

    reason = "version_gap"


__all__ = [
    "BadSignature",
    "ContentMismatch",
    "DeviceMismatch",
    "EdgefleetError",
    "EqualVersionConflict",
    "Expired",
    "IdentityMismatch",
    "Incompatible",
    "Malformed",
    "MixAndMatch",
    "NonFinite",
    "NotReleased",
    "Oversize",
    "ProtocolError",
    "Replayed",
    "Rollback",
    "SeqAhead",
    "ShapeMismatch",
    "Stale",
    "ThresholdNotMet",
    "TrustError",
    "UnknownVersion",
    "UnsafeModel",
    "VersionGap",
    "WrongKind",
]
