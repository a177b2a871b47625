"""A bucket's devices grouped into cells, and the evidence of any union of cells.

A *cell* is the set of devices sharing every cohort membership (same version, same
tags). Every cohort, and every "fleet without these cohorts" that attribution asks
about, is a union of cells, so its merged counts, its drifting-device tallies and its
confidence sketch are sums over cells: attribution can ask about many sets of devices
without touching the devices again.

Levels (0 ok, 1 warn, 2 alert, -1 not enough data) follow :class:`~hub.drift.policy.
DriftPolicy`; the four kinds of evidence are ``distribution``, ``out_of_range``, ``nan``
and ``devices`` (the drifting-device fraction, alert-level when significant).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from hub.drift import stats
from hub.drift.aggregate import PERFORMANCE_ROWS, Aggregate
from hub.drift.buckets import FLEET, Cohort
from hub.drift.policy import DriftPolicy
from hub.drift.reference import Reference
from hub.drift.scores import Scores, fold, score, significance

Bools = npt.NDArray[np.bool_]
Floats = npt.NDArray[np.float64]
Ints = npt.NDArray[np.int64]
KINDS = ("distribution", "out_of_range", "nan", "devices")


@dataclass(frozen=True, eq=False)
class Evidence:
    """Merged scores and device tallies of some sets of cells, shaped ``[sets, rows]``.

    ``level`` (0 ok, 1 warn, 2 alert, -1 not enough data), ``active`` (the relaxed,
    hysteresis thresholds) and ``kinds`` (``[sets, rows, 4]``, which evidence fired).
    """

    counts: Ints
    scores: Scores
    scored: Ints
    drifting: Ints
    fraction_p: Floats
    performance: Floats
    level: Ints
    active: Bools
    kinds: Bools


class Cells:
    """The devices of one bucket, grouped by their cohorts (module docstring)."""

    def __init__(
        self,
        keys: Sequence[tuple[Cohort, ...]],
        aggregates: Sequence[Aggregate],
        reference: Reference,
        policy: DriftPolicy,
    ) -> None:
        self.reference = reference
        self.policy = policy
        rows = len(reference.names)
        counts = (
            np.stack([a.counts for a in aggregates])
            if aggregates
            else np.zeros((0, *reference.shape), dtype=np.int64)
        )
        self.device_p, scored = significance(counts, reference, policy)
        self.device_drifting = scored & (self.device_p < policy.device_alpha)
        cells = sorted(set(keys))
        lookup = {key: i for i, key in enumerate(cells)}
        self.cell_of = np.array([lookup[k] for k in keys], dtype=np.int64)
        self.cohorts = sorted({c for k in cells for c in k} | {FLEET}, key=_fleet_first)
        self.membership = np.array(
            [[c in cell for cell in cells] for c in self.cohorts], dtype=bool
        ).reshape(len(self.cohorts), len(cells))
        size = len(cells)
        self.counts = np.zeros((size, *reference.shape), dtype=np.int64)
        np.add.at(self.counts, self.cell_of, counts)
        self.scored = np.zeros((size, rows), dtype=np.int64)
        np.add.at(self.scored, self.cell_of, scored.astype(np.int64))
        self.drifting = np.zeros((size, rows), dtype=np.int64)
        np.add.at(self.drifting, self.cell_of, self.device_drifting.astype(np.int64))
        self.performance = np.zeros((size, PERFORMANCE_ROWS, reference.confidence_bins))
        if aggregates:
            np.add.at(self.performance, self.cell_of, np.stack([a.performance for a in aggregates]))
        self.rows = self.counts[:, :, :-1].sum(axis=(1, 2)).astype(np.float64)
        tested = (self.membership.astype(np.int64) @ self.scored) >= policy.min_devices
        self.family = max(1, int(tested.sum()))
        """Fraction tests in this bucket (cohorts x rows with enough devices): each is
        held to ``fraction_alpha / family`` so the bucket's family-wise rate is
        ``fraction_alpha`` (Bonferroni), with cohorts and features many."""

    @property
    def fleet(self) -> int:
        return self.cohorts.index(FLEET)

    def devices_in(self, mask: Bools) -> Bools:
        """Which devices belong to the union of the cells in ``mask``."""
        return np.isin(self.cell_of, np.flatnonzero(mask))

    def evidence(self, masks: Bools) -> Evidence:
        """The evidence of each union of cells (``masks``: ``[sets, cells]``)."""
        weights = masks.astype(np.int64)
        counts = np.einsum("kc,crs->krs", weights, self.counts)
        scores = score(counts, self.reference, self.policy)
        scored = weights @ self.scored
        drifting = weights @ self.drifting
        fraction_p = np.full(scored.shape, np.nan)
        for index in zip(*np.nonzero(scored >= self.policy.min_devices), strict=True):
            fraction_p[index] = stats.binom_sf(
                int(drifting[index]), int(scored[index]), self.policy.device_alpha
            )
        performance = np.einsum("kc,cij->kij", weights.astype(np.float64), self.performance)
        level, active, kinds = _levels(
            scores, scored, drifting, fraction_p, self.policy, self.family
        )
        return Evidence(
            counts, scores, scored, drifting, fraction_p, performance, level, active, kinds
        )

    def excess(self, ev: Evidence, k: int, r: int) -> tuple[float, float]:
        """What a share of a drift is measured in, for set ``k`` and row ``r``: rows
        displaced from the reference beyond their no-drift expectation, and drifting
        devices beyond chance."""
        b = int(self.reference.bins[r])
        p = self.reference.proportions[r, :b]
        folded = fold(ev.counts[k : k + 1], self.reference)[0, r, :b].astype(np.float64)
        n = folded.sum()
        displaced = noise = 0.0
        if n > 0:
            displaced = 0.5 * float(np.abs(folded - n * p).sum())
            noise = 0.5 * float(np.sqrt(2.0 * n * p * (1.0 - p) / np.pi).sum())
        devices = float(ev.drifting[k, r]) - self.policy.device_alpha * float(ev.scored[k, r])
        return max(displaced - noise, 0.0), max(devices, 0.0)


def _fleet_first(cohort: Cohort) -> tuple[bool, Cohort]:
    return cohort != FLEET, cohort


def _levels(
    s: Scores,
    scored: Ints,
    drifting: Ints,
    fraction_p: Floats,
    policy: DriftPolicy,
    family: int,
) -> tuple[Ints, Bools, Bools]:
    h = policy.hysteresis
    n = s.n.astype(np.float64)
    rows_ok = s.n >= policy.min_rows
    nan_ok = (s.n + s.nan) >= policy.min_rows
    frac_ok = scored >= policy.min_devices
    excess = drifting / np.maximum(scored, 1) - policy.device_alpha
    frac_p = np.where(np.isnan(fraction_p), 1.0, fraction_p)

    def graded(
        ok: Bools, p: Floats, value: Floats, warn: float, alert: float
    ) -> tuple[Ints, Bools]:
        warned = ok & (p < policy.warn_alpha) & (value >= warn)
        grade = warned.astype(np.int64) + (warned & (value >= alert))
        return grade, ok & (p < policy.resolve_alpha) & (value >= warn * h)

    dist, dist_a = graded(s.sufficient, s.p, s.psi, policy.psi_warn, policy.psi_alert)
    out, out_a = graded(
        rows_ok,
        s.out_of_range_p,
        s.out_of_range / np.maximum(n, 1),
        policy.out_of_range_warn,
        policy.out_of_range_alert,
    )
    nans, nan_a = graded(
        nan_ok, s.nan_p, s.nan / np.maximum(n + s.nan, 1), policy.nan_warn, policy.nan_alert
    )
    significant = frac_p < policy.fraction_alpha / family
    dev_alert = frac_ok & significant & (excess >= policy.min_excess_fraction)
    relaxed = frac_p < policy.resolve_alpha / family
    dev_a = frac_ok & relaxed & (excess >= policy.min_excess_fraction * h)
    grades = np.stack([dist, out, nans, 2 * dev_alert.astype(np.int64)], axis=-1)
    level = np.where(s.sufficient | frac_ok | rows_ok | nan_ok, grades.max(axis=-1), -1)
    return level, dist_a | out_a | nan_a | dev_a, grades > 0


__all__ = ["KINDS", "Cells", "Evidence"]
