"""Mergeable aggregates of data windows: the sum of any set of windows of one scope.

An :class:`Aggregate` holds what the tests read, as arrays over the scope's
:class:`~hub.drift.reference.Reference`: per row (features, then predictions) the counts per
bin with underflow, overflow and NaN; per feature the moments ``(n, mean, m2)``; the
confidence sketch for label-free performance (:mod:`hub.drift.performance`); inference
and error counts. And ``parts``, the identities of what it sums: a window is the part
``(device_id, seq)``; a closed bucket that was sealed for a roll-up is ``(label, start_ms)``.

**Merge contract.** :func:`merge` is a commutative monoid over disjoint parts (the empty
aggregate is the identity; counts add exactly, moments combine by Chan et al.'s parallel
formula, exact up to float rounding), and it is idempotent by identity: merging an
aggregate whose parts are all inside the other returns the other unchanged, so a replayed
window counts once. Two aggregates that share some parts but not all raise
:class:`~hub.drift.errors.OverlappingParts`: the shared windows cannot be subtracted out.
The store adds the same guarantee at its own level (a window row keyed by
``(device_id, seq)`` is inserted first, in the transaction that merges it), so the part
sets kept here only need to cover what is merged in memory: a device's bucket (a few
windows) and a roll-up (its sealed children), never the whole fleet's windows.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import numpy.typing as npt

from hub.drift.errors import IncompatibleWindow, OverlappingParts
from hub.drift.reference import Reference
from protocol import canonical
from protocol.errors import ProtocolError
from protocol.messages import DataDelta
from protocol.sketches import PredictionSketch

Floats = npt.NDArray[np.float64]
Ints = npt.NDArray[np.int64]
PartId = tuple[str, int]
PERFORMANCE_ROWS = 5  # hub.drift.performance: the confidence sketch's five sums per bin


@dataclass(frozen=True, eq=False)
class Aggregate:
    """The sum of the windows named by ``parts`` (module docstring), for one scope."""

    scope: str
    counts: Ints
    moments: Floats
    performance: Floats
    inferences: int
    errors: int
    windows: int
    parts: frozenset[PartId]

    @property
    def rows(self) -> Ints:
        """Finite values counted per row (bins plus underflow and overflow)."""
        rows: Ints = self.counts[:, :-1].sum(axis=1)
        return rows

    def same(self, other: Aggregate) -> bool:
        """Equal parts, counts and stats, with moments equal to float rounding."""
        return (
            self.scope == other.scope
            and self.parts == other.parts
            and self.windows == other.windows
            and (self.inferences, self.errors) == (other.inferences, other.errors)
            and bool(np.array_equal(self.counts, other.counts))
            and bool(np.allclose(self.performance, other.performance, rtol=1e-12, atol=0))
            and bool(np.allclose(self.moments, other.moments, rtol=1e-9, atol=1e-9))
        )


def empty(reference: Reference) -> Aggregate:
    """The identity of :func:`merge`: no windows."""
    return Aggregate(
        scope=reference.digest,
        counts=np.zeros(reference.shape, dtype=np.int64),
        moments=np.zeros((reference.features, 3)),
        performance=np.zeros((PERFORMANCE_ROWS, reference.confidence_bins)),
        inferences=0,
        errors=0,
        windows=0,
        parts=frozenset(),
    )


def from_window(
    delta: DataDelta,
    reference: Reference,
    *,
    device_id: str,
    seq: int,
    confidence: npt.ArrayLike | None = None,
) -> Aggregate:
    """One window as an aggregate whose single part is ``(device_id, seq)``.

    ``confidence`` is the window's confidence sketch as a ``[5, confidence_bins]`` array
    (:func:`hub.drift.performance.sketch`); windows sent before devices
    compute one leave it zero.

    Raises:
        IncompatibleWindow: feature names or bin counts that differ from the reference,
            another prediction kind or size, or a confidence sketch of the wrong shape.
    """
    result = empty(reference)
    counts, moments = result.counts, result.moments
    width = reference.width
    if delta.features:
        names = tuple(f.name for f in delta.features)
        if names != reference.names[: reference.features]:
            raise IncompatibleWindow(
                f"window features {_preview(names)} differ from the reference's "
                f"{_preview(reference.names[: reference.features])}"
            )
        rows = []
        for r, sketch in enumerate(delta.features):
            bins = int(reference.bins[r])
            if len(sketch.counts) != bins:
                raise IncompatibleWindow(
                    f"feature {sketch.name[:60]!r} has {len(sketch.counts)} bins; "
                    f"the reference has {bins}"
                )
            padding = (0,) * (width - bins)
            rows.append((*sketch.counts, *padding, sketch.underflow, sketch.overflow, sketch.nan))
        counts[: len(rows)] = rows
        moments[:] = [(f.n, f.mean, f.m2) for f in delta.features]
    if delta.predictions is not None:
        _put_predictions(counts, delta.predictions, reference)
    performance = result.performance
    if confidence is not None:
        performance = np.asarray(confidence, dtype=np.float64)
        if performance.shape != result.performance.shape or not np.all(performance >= 0):
            raise IncompatibleWindow(
                f"confidence sketch must be non-negative {result.performance.shape}, "
                f"got {performance.shape}"
            )
    return replace(
        result,
        performance=performance,
        inferences=delta.inference_count,
        errors=delta.error_count,
        windows=1,
        parts=frozenset({(device_id, seq)}),
    )


def _put_predictions(counts: Ints, sketch: PredictionSketch, reference: Reference) -> None:
    if reference.features == len(reference.names):
        raise IncompatibleWindow("the window has predictions; the reference has none")
    r = len(reference.names) - 1
    if sketch.kind != reference.kinds[r] or len(sketch.counts) != reference.bins[r]:
        raise IncompatibleWindow(
            f"predictions are {len(sketch.counts)} {sketch.kind}; the reference has "
            f"{int(reference.bins[r])} {reference.kinds[r]}"
        )
    counts[r, : len(sketch.counts)] = sketch.counts
    counts[r, reference.width :] = (sketch.underflow, sketch.overflow, sketch.nan)


def _preview(names: tuple[str, ...]) -> str:
    shown = ", ".join(n[:20] for n in names[:4])
    return f"[{shown}{', ...' if len(names) > 4 else ''}] ({len(names)})"


def merge(a: Aggregate, b: Aggregate) -> Aggregate:
    """``a`` and ``b`` together (module docstring: monoid over disjoint parts, idempotent).

    Raises:
        IncompatibleWindow: aggregates of different scopes.
        OverlappingParts: they share some parts but neither holds all of the other's.
    """
    if a.scope != b.scope or a.counts.shape != b.counts.shape:
        raise IncompatibleWindow("cannot merge aggregates of different scopes")
    if a.parts & b.parts:
        if b.parts <= a.parts:
            return a
        if a.parts <= b.parts:
            return b
        raise OverlappingParts(f"{len(a.parts & b.parts)} shared parts, and others on both sides")
    return Aggregate(
        scope=a.scope,
        counts=a.counts + b.counts,
        moments=_combine_moments(np.stack([a.moments, b.moments])),
        performance=a.performance + b.performance,
        inferences=a.inferences + b.inferences,
        errors=a.errors + b.errors,
        windows=a.windows + b.windows,
        parts=a.parts | b.parts,
    )


def merge_all(aggregates: Iterable[Aggregate], reference: Reference) -> Aggregate:
    """All of ``aggregates`` at once: equal to folding :func:`merge`, in one numpy sum.

    An aggregate whose parts are all inside those already taken is skipped (a replay).

    Raises:
        IncompatibleWindow: an aggregate of another scope.
        OverlappingParts: a partial overlap with the parts already taken.
    """
    taken: list[Aggregate] = []
    seen: set[PartId] = set()
    for agg in aggregates:
        if agg.scope != reference.digest or agg.counts.shape != reference.shape:
            raise IncompatibleWindow("cannot merge aggregates of different scopes")
        if agg.parts and agg.parts <= seen:
            continue
        if not agg.parts.isdisjoint(seen):
            raise OverlappingParts("an aggregate shares some parts with the others, not all")
        seen.update(agg.parts)
        taken.append(agg)
    if not taken:
        return empty(reference)
    if len(taken) == 1:
        return taken[0]
    return Aggregate(
        scope=reference.digest,
        counts=np.sum([t.counts for t in taken], axis=0),
        moments=_combine_moments(np.stack([t.moments for t in taken])),
        performance=np.sum([t.performance for t in taken], axis=0),
        inferences=sum(t.inferences for t in taken),
        errors=sum(t.errors for t in taken),
        windows=sum(t.windows for t in taken),
        parts=frozenset(seen),
    )


def seal(aggregate: Aggregate, part: PartId) -> Aggregate:
    """``aggregate`` as one part named ``part`` (a closed bucket entering a roll-up).

    A roll-up merges sealed children, so it is idempotent by child bucket and its part
    set stays as small as its number of children.
    """
    return replace(aggregate, parts=frozenset({part}))


def to_columns(aggregate: Aggregate) -> dict[str, object]:
    """The aggregate as store columns: arrays as little-endian bytes, parts as JSON text.

    Round trip: ``from_columns(to_columns(a), reference).same(a)`` for ``a`` of that scope.
    """
    return {
        "scope": aggregate.scope,
        "counts": aggregate.counts.astype("<i8").tobytes(),
        "moments": aggregate.moments.astype("<f8").tobytes(),
        "performance": aggregate.performance.astype("<f8").tobytes(),
        "inferences": aggregate.inferences,
        "errors": aggregate.errors,
        "windows": aggregate.windows,
        "parts": canonical.dumps(sorted(aggregate.parts)).decode(),
    }


def from_columns(row: Mapping[str, object], reference: Reference) -> Aggregate:
    """The aggregate stored by :func:`to_columns`.

    Raises:
        IncompatibleWindow: columns of another scope or shape (a reference changed under
            stored buckets).
    """
    template = empty(reference)
    if row.get("scope") != reference.digest:
        raise IncompatibleWindow("stored aggregate of another scope")
    try:
        parts = canonical.loads(_bytes(row, "parts", text=True))
        return Aggregate(
            scope=reference.digest,
            counts=_array(row, "counts", "<i8", template.counts).astype(np.int64),
            moments=_array(row, "moments", "<f8", template.moments),
            performance=_array(row, "performance", "<f8", template.performance),
            inferences=_int(row, "inferences"),
            errors=_int(row, "errors"),
            windows=_int(row, "windows"),
            parts=frozenset((str(d), int(s)) for d, s in parts),
        )
    except (ValueError, TypeError, ProtocolError) as e:
        raise IncompatibleWindow(f"stored aggregate does not fit its reference: {e}") from e


def _bytes(row: Mapping[str, object], name: str, *, text: bool = False) -> bytes:
    value = row.get(name)
    if text and isinstance(value, str):
        return value.encode()
    if not isinstance(value, bytes):
        raise TypeError(f"column {name} holds {type(value).__name__}")
    return value


def _array(row: Mapping[str, object], name: str, dtype: str, like: npt.NDArray[Any]) -> Any:
    return np.frombuffer(_bytes(row, name), dtype=dtype).reshape(like.shape).astype(like.dtype)


def _int(row: Mapping[str, object], name: str) -> int:
    value = row.get(name)
    if not isinstance(value, int):
        raise TypeError(f"column {name} holds {type(value).__name__}")
    return value


def _combine_moments(stack: Floats) -> Floats:
    """Chan et al.: ``[k, F, 3]`` moments ``(n, mean, m2)`` combined into ``[F, 3]``."""
    n_i, mean_i, m2_i = stack[..., 0], stack[..., 1], stack[..., 2]
    n = n_i.sum(axis=0)
    safe = np.where(n > 0, n, 1.0)
    mean = (n_i * mean_i).sum(axis=0) / safe
    m2 = m2_i.sum(axis=0) + (n_i * (mean_i - mean) ** 2).sum(axis=0)
    return np.stack([n, np.where(n > 0, mean, 0.0), np.maximum(m2, 0.0)], axis=-1)


__all__ = [
    "Aggregate",
    "PartId",
    "empty",
    "from_columns",
    "from_window",
    "merge",
    "merge_all",
    "seal",
    "to_columns",
]
