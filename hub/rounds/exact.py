"""Exact mode for linear heads: merge sufficient statistics, solve the ridge problem once.

For a head trained by least squares, ``min_θ Σ‖[x, 1] θ - y‖² + n·l2·‖W - W₀‖²`` (bias
not penalised, ``θ = [W; b]``, ``W₀`` the base head), the solution depends on the rows
only through ``A = Σ [x,1]ᵀ[x,1]``, ``B = Σ [x,1]ᵀ y`` and ``n``. Each device sends its
:class:`LinearStats` instead of a delta; the hub adds them up and solves
``(A + n·l2·D) θ = B + n·l2·D θ₀`` (``D`` = identity on the weight rows, zero on the
bias row): exactly the head trained centrally on the union of every device's rows,
whatever order the statistics arrive in. The penalty matches
:mod:`agent.trainer`'s (``½ l2 ‖W - anchor‖²`` on the mean loss).

Classifiers are fitted to one-hot targets (a least-squares classifier, 0/1 for a binary
head's one logit): the argmax, which accuracy reads, is what it gets right; its scores
are not calibrated probabilities, which the validation metrics will show.

Order. Float addition is commutative but not associative, so sums merged as they
arrive differ in the last bits between orders. :func:`combine` sums per-device
statistics in sorted key order, so the same set gives bit-identical results however it
arrived; :func:`merge` (pairwise, for running totals) agrees to rounding.

What the statistics reveal, compared with a delta (see docs/rounds.md for more):
``B``'s bias row is the device's exact label histogram (classification) or target sum;
``A`` holds every second moment of its features, so with fewer rows than features the
hub learns the span of the device's feature vectors, and one row (``n = 1``) gives the
row itself and its label. A clipped delta after many SGD steps mixes the same data
non-linearly and is bounded in norm. Exact mode is therefore opt-in per model, refuses
stats of fewer than ``min_rows`` rows, and belongs with secure aggregation where the
devices' data is sensitive.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from hub.rounds.aggregate import Aggregation, Strategy
from hub.rounds.errors import NothingToAggregate
from hub.rounds.layout import Floats32
from hub.rounds.weighting import Planned, Submission, WeightPlan
from protocol.linearstats import LinearStats, local_stats, targets
from protocol.manifest import Head


def merge(a: LinearStats, b: LinearStats) -> LinearStats:
    """The statistics of both sets of rows together."""
    if a.xtx.shape != b.xtx.shape or a.xty.shape != b.xty.shape:
        raise ValueError("statistics of different heads")
    return LinearStats(a.xtx + b.xtx, a.xty + b.xty, a.count + b.count)


def combine(per_device: Mapping[str, LinearStats]) -> LinearStats:
    """All devices' statistics, summed in sorted key order (bit-identical for any
    arrival order of the same set).

    Raises:
        ValueError: nothing to combine, or statistics of different heads.
    """
    if not per_device:
        raise ValueError("no statistics to combine")
    keys = sorted(per_device)
    total = per_device[keys[0]]
    for key in keys[1:]:
        total = merge(total, per_device[key])
    return total


def solve_ridge(
    stats: LinearStats, *, l2: float, anchor: tuple[np.ndarray, np.ndarray] | None = None
) -> tuple[Floats32, Floats32]:
    """The head ``(weight (n_features, n_outputs), bias (n_outputs,))`` minimising the
    ridge objective of the module docstring; ``anchor`` defaults to zeros.

    Raises:
        ValueError: ``l2 < 0``, no rows, or a non-finite solution.
    """
    if l2 < 0 or stats.count == 0:
        raise ValueError("need l2 >= 0 and at least one row")
    d = stats.n_features
    theta0 = np.zeros((d + 1, stats.n_outputs))
    if anchor is not None:
        theta0[:d] = np.asarray(anchor[0], dtype=np.float64)
        theta0[d] = np.asarray(anchor[1], dtype=np.float64)
    penalty = np.ones(d + 1) * (stats.count * l2)
    penalty[d] = 0.0
    lhs = stats.xtx + np.diag(penalty)
    rhs = stats.xty + penalty[:, None] * theta0
    try:
        theta = np.linalg.solve(lhs, rhs)
    except np.linalg.LinAlgError:  # singular without a penalty: the minimum-norm answer
        theta = np.linalg.lstsq(lhs, rhs, rcond=None)[0]
    if not np.isfinite(theta).all():
        raise ValueError("the ridge solution is not finite")
    return theta[:d].astype(np.float32), theta[d].astype(np.float32)


def aggregate_stats(
    submissions: Sequence[Submission],
    load: Callable[[str], LinearStats],
    head: Head,
    base: tuple[np.ndarray, np.ndarray],
    *,
    l2: float,
) -> Aggregation:
    """Exact mode's aggregation: the ridge head of every submission's rows together,
    anchored at the ``base`` head, as the update from ``base`` that the candidate adds.

    Each device's share is its rows over all rows (what its statistics weigh in the
    sums); there is no clipping and no sample cap: the counts are the statistics'
    own (``xtx``'s corner), and a device that fabricates rows is not defended against
    here (docs/rounds.md, "Exact mode for linear heads").

    Raises:
        NothingToAggregate: no submissions.
    """
    if not submissions:
        raise NothingToAggregate("no statistics to solve")
    per_device = {s.key: load(s.key) for s in submissions}
    weight, bias = solve_ridge(combine(per_device), l2=l2, anchor=base)
    base_w = np.asarray(base[0], np.float64)
    update = {head.weight: (weight.astype(np.float64) - base_w).astype(np.float32)}
    if head.bias is not None:
        update[head.bias] = (bias.astype(np.float64) - np.asarray(base[1])).astype(np.float32)
    total = sum(stats.count for stats in per_device.values())
    entries = tuple(
        Planned(
            key=s.key,
            device_id=s.device_id,
            base_version=s.base_version,
            claimed_samples=s.claimed_samples,
            samples_used=per_device[s.key].count,
            staleness=0,
            staleness_factor=1.0,
            weight=float(per_device[s.key].count),
            norm_before=0.0,
            scale=1.0,
        )
        for s in submissions
    )
    shares = {s.key: per_device[s.key].count / total for s in submissions}
    plan = WeightPlan(entries, sample_cap=None, norm_bound=math.inf)
    return Aggregation(update, None, plan, shares, Strategy(), ridge_l2=l2)


__all__ = [
    "LinearStats",
    "aggregate_stats",
    "combine",
    "local_stats",
    "merge",
    "solve_ridge",
    "targets",
]
