"""Screening one delta upload before it may count: a verdict with a reason, never an exception.

Ingest calls :func:`screen` after the frame's signature, the device and replay window
have checked out, and stores the verdict beside the delta (docs/rounds.md, Screening). The
checks run cheapest first and the tensors are decoded only once everything the header
claims has passed (the base is known, released and the one the round is on):

==================  ========  =======================================================
reason              status    when
==================  ========  =======================================================
unknown_base        refused   the base model version is not in the registry
stale_base          refused   the base's sha256 differs from the registered one, or the
                              round is on another base version
base_not_released   refused   the base was never released: no device should run it
bad_round           refused   a round that is unknown, on another model, or no longer
                              open; or no round named while the model runs rounds
too_stale           refused   buffered mode: more than ``max_staleness`` versions behind
replayed            refused   the very same tensor bytes were already stored (a resend
                              under a new seq counts once)
duplicate           flagged   the device already has a delta in this round or buffer:
                              the first is kept, this one is stored but never used
oversize            refused   the container exceeds ``max_bytes``, or holds more than
                              twice the head's parameters (a decompression bomb; below
                              that, extra tensors decode and are ``shape_mismatch``)
malformed           refused   the container does not decode (never unpickled)
non_finite          refused   a NaN or Inf anywhere
shape_mismatch      refused   names, shapes or dtype differ from the base's head
norm_exceeded       refused   L2 norm above the model's bound by more than the codec's
                              slack; within the slack it is accepted and the
                              aggregation clips it to the bound
==================  ========  =======================================================

In exact mode (``mode="exact"``: rounds of sufficient statistics, :mod:`protocol.linearstats`)
the round checks are the same; the container must hold ``xtx`` and ``xty`` that fit the
base's head, are finite and symmetric, count ``num_samples`` rows in their corner and at
least ``min_rows`` of them (``shape_mismatch`` otherwise, ``non_finite`` for NaN or Inf).
There is no norm to bound.

``strike`` marks the reasons an honest agent never produces (it self-checks, clips and
drops non-finite results before sending): ingest counts them against the device. The
others (a round that closed while the delta was in flight, a base that moved on) happen
to honest devices too.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from hub.rounds.layout import Floats32, Layout
from protocol.errors import Malformed, NonFinite, Oversize
from protocol.linearstats import from_tensors
from protocol.manifest import Head
from protocol.messages import DeltaUpload
from protocol.tensors import decode_tensors, l2_norm

Reason = Literal[
    "unknown_base",
    "stale_base",
    "base_not_released",
    "bad_round",
    "too_stale",
    "replayed",
    "duplicate",
    "oversize",
    "malformed",
    "non_finite",
    "shape_mismatch",
    "norm_exceeded",
]
Status = Literal["accepted", "flagged", "refused"]
Mode = Literal["rounds", "buffered", "exact"]
STRIKES: frozenset[Reason] = frozenset(
    {"malformed", "non_finite", "shape_mismatch", "norm_exceeded", "oversize"}
)
NORM_SLACK = 0.01
"""Relative slack on the norm bound: i8 moves a value by up to ``max|x|/254`` and f16 by
2^-11 relative (:mod:`protocol.tensors`), so an honestly clipped delta may decode a
little above the bound; the aggregation clips it back."""


@dataclass(frozen=True)
class BaseVersion:
    """What the registry holds about the version a delta names as its base."""

    name: str
    version: int
    sha256: str
    released: bool
    layout: Layout
    max_norm: float
    head: Head | None = None
    """The head itself: exact mode checks statistics against its feature and output
    counts."""


@dataclass(frozen=True)
class OpenSlot:
    """Where an accepted delta would go: a round (``round_id``) or the model's buffer
    (``round_id=None``), on ``base_version``, with the devices it already holds.

    ``open`` is False once the round is closing or done; a buffer is always open.
    """

    round_id: str | None
    model: str
    base_version: int
    open: bool = True
    devices: frozenset[str] = frozenset()


@dataclass(frozen=True)
class ScreenContext:
    """Everything screening needs from the store, read by the shell beforehand.

    ``base``: the registry row of the delta's base (``None``: unknown). ``slot``: the
    round the delta names (``None``: unknown or no round); in buffered mode the model's
    buffer. ``current_version``: the version a buffered delta would be applied to.
    ``seen_digests``: digests of the deltas already stored for this model.
    """

    mode: Mode
    base: BaseVersion | None
    slot: OpenSlot | None
    current_version: int
    max_staleness: int = 3
    seen_digests: frozenset[str] = frozenset()
    max_bytes: int = 16 * 1024 * 1024
    min_rows: int = 32
    """Exact mode: the fewest rows a device's statistics may describe."""


@dataclass(frozen=True, eq=False)
class Verdict:
    """The outcome: ``status``, ``reason`` (``None`` when accepted) and a short detail.

    ``norm`` and ``tensors`` are set when the delta decoded; ``digest`` (sha256 of the
    container bytes) always is, so ingest can record it for replay detection.
    """

    status: Status
    reason: Reason | None
    detail: str
    digest: str
    staleness: int = 0
    norm: float | None = None
    tensors: dict[str, Floats32] | None = field(default=None, repr=False)

    @property
    def usable(self) -> bool:
        """Whether the delta may be aggregated."""
        return self.status == "accepted"

    @property
    def strike(self) -> bool:
        """Whether the reason is one an honest agent never causes (module docstring)."""
        return self.reason in STRIKES


def digest(tensors: bytes) -> str:
    return hashlib.sha256(tensors).hexdigest()


def screen(upload: DeltaUpload, device_id: str, ctx: ScreenContext) -> Verdict:
    """Judge ``upload`` from ``device_id`` (see the module docstring for the order)."""
    d = digest(upload.tensors)

    def refuse(reason: Reason, detail: str, staleness: int = 0) -> Verdict:
        return Verdict("refused", reason, detail[:200], d, staleness)

    base, slot, ref = ctx.base, ctx.slot, upload.base
    if base is None or (base.name, base.version) != (ref.name, ref.version):
        return refuse("unknown_base", f"{ref.name} v{ref.version} is not a registered version")
    if base.sha256 != ref.sha256:
        return refuse("stale_base", f"{ref.name} v{ref.version} has another sha256 here")
    if not base.released:
        return refuse("base_not_released", f"{ref.name} v{ref.version} was never released")
    staleness = 0
    if ctx.mode in ("rounds", "exact"):
        if upload.round_id is None:
            return refuse("bad_round", f"{ref.name} aggregates in rounds; the delta names none")
        if slot is None or slot.round_id != upload.round_id or slot.model != ref.name:
            return refuse("bad_round", f"round {upload.round_id} is unknown for {ref.name}")
        if not slot.open:
            return refuse("bad_round", f"round {upload.round_id} is no longer open")
        if slot.base_version != ref.version:
            return refuse("stale_base", f"round {slot.round_id} is on v{slot.base_version}")
    else:
        staleness = max(0, ctx.current_version - ref.version)
        if staleness > ctx.max_staleness:
            return refuse(
                "too_stale",
                f"{staleness} versions behind v{ctx.current_version} "
                f"(max_staleness {ctx.max_staleness})",
                staleness,
            )
    if d in ctx.seen_digests:
        return refuse("replayed", "these tensor bytes were already received", staleness)
    if slot is not None and device_id in slot.devices:
        where = f"round {slot.round_id}" if slot.round_id else "this buffer"
        return Verdict("flagged", "duplicate", f"{device_id} already sent one to {where}", d)
    try:
        tensors = decode_tensors(
            upload.tensors, max_bytes=ctx.max_bytes, max_elements=_max_elements(base, ctx.mode)
        )
    except Oversize as e:
        return refuse("oversize", str(e), staleness)
    except NonFinite as e:
        return refuse("non_finite", str(e), staleness)
    except Malformed as e:  # UnknownVersion and ShapeMismatch are Malformed too
        return refuse("malformed", str(e), staleness)
    if ctx.mode == "exact":
        return _screen_stats(upload, tensors, base, ctx.min_rows, d)
    mismatch = base.layout.mismatch(tensors)
    if mismatch is not None:
        return refuse("shape_mismatch", mismatch, staleness)
    if not all(bool(np.isfinite(x).all()) for x in tensors.values()):
        return refuse("non_finite", "a tensor holds NaN or Inf", staleness)
    norm = l2_norm(tensors)
    if not math.isfinite(norm) or norm > base.max_norm * (1.0 + NORM_SLACK):
        return refuse("norm_exceeded", f"L2 norm {norm:.4g} above {base.max_norm:.4g}", staleness)
    return Verdict("accepted", None, "", d, staleness, norm, tensors)


def _max_elements(base: BaseVersion, mode: Mode) -> int:
    """Twice what an honest container holds, plus a little: more is a decompression bomb."""
    if mode == "exact" and base.head is not None:
        d = base.head.n_features + 1
        return 2 * (d * d + d * base.head.n_outputs) + 64
    return 2 * base.layout.size + 64


def _screen_stats(
    upload: DeltaUpload, tensors: dict[str, Floats32], base: BaseVersion, min_rows: int, d: str
) -> Verdict:
    """Exact mode's content checks (module docstring); the verdict carries no norm."""
    if base.head is None:
        return Verdict("refused", "shape_mismatch", "the base's head is unknown", d)
    try:
        stats = from_tensors(tensors, upload.num_samples)
    except ValueError as e:
        return Verdict("refused", "shape_mismatch", str(e)[:200], d)
    problem = stats.mismatch(base.head, min_rows=min_rows)
    if problem is not None:
        reason: Reason = "non_finite" if "NaN" in problem else "shape_mismatch"
        return Verdict("refused", reason, problem[:200], d)
    return Verdict("accepted", None, "", d, 0, None, tensors)


__all__ = [
    "NORM_SLACK",
    "STRIKES",
    "BaseVersion",
    "Mode",
    "OpenSlot",
    "Reason",
    "ScreenContext",
    "Status",
    "Verdict",
    "digest",
    "screen",
]
