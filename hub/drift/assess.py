"""One closed bucket of one scope, assessed: per cohort scores, drifting devices, findings.

Input: every device's aggregate for the bucket (:class:`DeviceBucket`, built on ingest),
the scope's reference and the model's policy. Output: an :class:`Assessment` that the
store writes (the cohort scores are the trend per feature over time) and that
:func:`hub.drift.alerts.evaluate` reads. Per feature (and for the predictions):

- each device's own distribution test (:func:`hub.drift.scores.significance`), and per
  cohort the share of devices significant at ``device_alpha``, tested against chance by
  a binomial test: 50 of 1,000 devices shifted by 2σ show here, where the merged fleet
  histogram barely moves;
- each cohort's merged scores (:func:`hub.drift.scores.score`);
- a level per cohort, the worst of four kinds of evidence (thresholds in
  :class:`~hub.drift.policy.DriftPolicy`): ``distribution`` (significant beyond the
  no-drift 99.9th percentile and PSI ≥ 0.1 warns; PSI ≥ 0.25 is alert-level),
  ``out_of_range`` and ``nan`` (significant and above a rate), ``devices`` (the drifting
  fraction significant and ``min_excess_fraction`` above chance: alert-level);
- where any cohort is at warning level or above, the cohorts carrying it
  (:func:`hub.drift.attribution.attribute`) and the devices with the smallest p-values.

Persistence (2 of the last 3 buckets) and hysteresis are not decided here but in
:mod:`hub.drift.alerts`, from a run of assessments.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

from hub.drift.aggregate import Aggregate
from hub.drift.attribution import attribute
from hub.drift.buckets import cohorts_of
from hub.drift.cells import KINDS, Cells, Evidence
from hub.drift.performance import PerformanceEstimate, estimate
from hub.drift.policy import DriftPolicy
from hub.drift.reference import Reference
from hub.drift.scores import FeatureScore

Bools = npt.NDArray[np.bool_]
Floats = npt.NDArray[np.float64]
Ints = npt.NDArray[np.int64]
Level = Literal["insufficient", "ok", "warn", "alert"]
LEVELS: tuple[Level, ...] = ("ok", "warn", "alert")
TOP_DEVICES = 10


@dataclass(frozen=True, eq=False)
class DeviceBucket:
    """One device's aggregate for the bucket, with what places it in cohorts."""

    device_id: str
    version: int
    tags: tuple[tuple[str, str], ...]
    aggregate: Aggregate

    @classmethod
    def of(
        cls, device_id: str, version: int, tags: Mapping[str, str], aggregate: Aggregate
    ) -> DeviceBucket:
        return cls(device_id, version, tuple(sorted(tags.items())), aggregate)


@dataclass(frozen=True)
class CohortShare:
    """A cohort named by a finding, with the share of the fleet's drift it carries."""

    cohort: str
    share: float
    psi: float | None
    p: float | None
    drifting_devices: int
    devices: int


@dataclass(frozen=True)
class Finding:
    """One row (feature or predictions) in one bucket: level, evidence, where, who.

    ``score`` is the row's scores over the named cohorts together (the fleet when
    nothing drifts); ``active`` says whether any cohort still shows it under the relaxed
    (hysteresis) thresholds; ``sufficient`` whether the fleet had enough data at all.
    """

    name: str
    level: Level
    active: bool
    sufficient: bool
    kinds: tuple[str, ...]
    score: FeatureScore
    cohorts: tuple[CohortShare, ...]
    drifting_devices: int
    devices: int
    fraction_p: float | None
    top_devices: tuple[str, ...]

    @property
    def rank(self) -> int:
        return -1 if self.level == "insufficient" else LEVELS.index(self.level)


@dataclass(frozen=True)
class CohortView:
    """One cohort's row of the trend: its scores and its drifting devices per row."""

    cohort: str
    devices: int
    scores: tuple[FeatureScore, ...]
    drifting_devices: tuple[int, ...]
    scored_devices: tuple[int, ...]
    fraction_p: tuple[float | None, ...]
    performance: PerformanceEstimate


@dataclass(frozen=True)
class Assessment:
    """Everything scored for one bucket of one scope."""

    scope: str
    start_ms: int
    width_ms: int
    devices: int
    findings: tuple[Finding, ...]
    cohorts: tuple[CohortView, ...]
    performance: PerformanceEstimate
    performance_cohorts: tuple[CohortShare, ...]

    @property
    def end_ms(self) -> int:
        return self.start_ms + self.width_ms

    def finding(self, name: str) -> Finding:
        return next(f for f in self.findings if f.name == name)


def assess(
    devices: Sequence[DeviceBucket],
    reference: Reference,
    policy: DriftPolicy,
    *,
    start_ms: int,
    width_ms: int,
    reference_accuracy: float | None = None,
) -> Assessment:
    """Score one bucket (module docstring). ``devices`` may be empty: all insufficient.

    ``reference_accuracy`` is the validation accuracy at registration, the baseline of
    the label-free estimate (None: only the feedback test runs).
    """
    cells = Cells(
        [cohorts_of(d.version, dict(d.tags)) for d in devices],
        [d.aggregate for d in devices],
        reference,
        policy,
    )
    ev = cells.evidence(cells.membership)
    ids = tuple(d.device_id for d in devices)
    findings = tuple(_finding(r, cells, ev, ids) for r in range(len(reference.names)))
    perf = [
        estimate(ev.performance[k], reference_accuracy, policy) for k in range(len(cells.cohorts))
    ]
    views = tuple(
        CohortView(
            cohort=str(c),
            devices=int(cells.devices_in(cells.membership[k]).sum()),
            scores=tuple(ev.scores.at((k, r), reference) for r in range(len(reference.names))),
            drifting_devices=tuple(int(x) for x in ev.drifting[k]),
            scored_devices=tuple(int(x) for x in ev.scored[k]),
            fraction_p=tuple(_maybe(x) for x in ev.fraction_p[k]),
            performance=perf[k],
        )
        for k, c in enumerate(cells.cohorts)
    )
    return Assessment(
        scope=reference.digest,
        start_ms=start_ms,
        width_ms=width_ms,
        devices=len(devices),
        findings=findings,
        cohorts=views,
        performance=perf[cells.fleet],
        performance_cohorts=_performance_cohorts(cells, ev, perf, reference_accuracy),
    )


def _finding(r: int, cells: Cells, ev: Evidence, ids: tuple[str, ...]) -> Finding:
    """Row ``r``'s level, and where it is carried when it is at warning level or above."""
    reference = cells.reference
    worst = int(ev.level[:, r].max())
    named: tuple[tuple[int, float], ...] = ()
    scope = cells.membership[cells.fleet]
    if worst >= 1:
        fleet_excess = cells.excess(ev, cells.fleet, r)

        def drifting(mask: Bools) -> bool:
            return bool(mask.any()) and bool(cells.evidence(mask[None, :]).level[0, r] >= 1)

        def share(mask: Bools) -> float:
            if not mask.any():
                return 0.0
            mine = cells.excess(cells.evidence(mask[None, :]), 0, r)
            parts = [m / f for m, f in zip(mine, fleet_excess, strict=True) if f > 0]
            return float(min(max(parts, default=0.0), 1.0))

        candidates = [k for k in range(len(cells.cohorts)) if ev.level[k, r] >= 1]
        named = attribute(
            cells.cohorts, cells.membership, drifting, share, cells.rows, candidates=candidates
        )
        scope = np.any(cells.membership[[k for k, _ in named]], axis=0)
    sub = cells.evidence(scope[None, :])
    hits = np.flatnonzero(cells.devices_in(scope) & cells.device_drifting[:, r])
    top = hits[np.argsort(cells.device_p[hits, r], kind="stable")][:TOP_DEVICES]
    fired = [False] * len(KINDS)
    if named:
        hit = np.asarray(ev.kinds[[k for k, _ in named], r].any(axis=0), dtype=bool)
        fired = [bool(x) for x in hit]
    return Finding(
        name=reference.names[r],
        level=LEVELS[worst] if worst >= 0 else "insufficient",
        active=bool(ev.active[:, r].any()),
        sufficient=bool(ev.level[cells.fleet, r] >= 0),
        kinds=tuple(kind for kind, on in zip(KINDS, fired, strict=True) if on),
        score=sub.scores.at((0, r), reference),
        cohorts=tuple(_share(cells, ev, k, r, part) for k, part in named),
        drifting_devices=int(sub.drifting[0, r]),
        devices=int(sub.scored[0, r]),
        fraction_p=_maybe(sub.fraction_p[0, r]),
        top_devices=tuple(ids[i] for i in top),
    )


def _share(cells: Cells, ev: Evidence, k: int, r: int, part: float) -> CohortShare:
    return CohortShare(
        cohort=str(cells.cohorts[k]),
        share=part,
        psi=_maybe(ev.scores.psi[k, r]) if ev.scores.n[k, r] else None,
        p=_maybe(ev.scores.p[k, r]) if ev.scores.sufficient[k, r] else None,
        drifting_devices=int(ev.drifting[k, r]),
        devices=int(ev.scored[k, r]),
    )


def _performance_cohorts(
    cells: Cells,
    ev: Evidence,
    perf: list[PerformanceEstimate],
    reference_accuracy: float | None,
) -> tuple[CohortShare, ...]:
    """Where a performance finding is carried, by the same explain-away as the features."""
    candidates = [k for k, e in enumerate(perf) if e.level >= 1]
    if not candidates:
        return ()
    policy = cells.policy

    def lost(mask: Bools) -> float:
        """Correct predictions lost: against the reference, or feedback against estimate."""
        rows = np.einsum("c,cij->ij", mask.astype(np.float64), cells.performance)
        e = estimate(rows, reference_accuracy, policy)
        drop = 0.0
        if e.estimated_accuracy is not None and reference_accuracy is not None:
            drop = max(reference_accuracy - e.estimated_accuracy, 0.0) * e.predictions
        gap = 0.0
        if e.feedback_accuracy is not None and e.feedback_expected is not None:
            gap = max(e.feedback_expected - e.feedback_accuracy, 0.0) * e.labelled
        return max(drop, gap)

    def drifting(mask: Bools) -> bool:
        rows = np.einsum("c,cij->ij", mask.astype(np.float64), cells.performance)
        return bool(mask.any()) and estimate(rows, reference_accuracy, policy).level >= 1

    total = lost(cells.membership[cells.fleet])

    def share(mask: Bools) -> float:
        return min(lost(mask) / total, 1.0) if total > 0 else 0.0

    named = attribute(
        cells.cohorts, cells.membership, drifting, share, cells.rows, candidates=candidates
    )
    return tuple(
        CohortShare(str(cells.cohorts[k]), part, None, perf[k].drop_p, 0, int(ev.scored[k].max()))
        for k, part in named
    )


def _maybe(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None


__all__ = ["Assessment", "CohortShare", "CohortView", "DeviceBucket", "Finding", "assess"]
