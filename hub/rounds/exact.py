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

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from hub.rounds.layout import Floats32, Floats64
from protocol.manifest import Head


@dataclass(frozen=True, eq=False)
class LinearStats:
    """``A = Σ x̃ᵀx̃``, ``B = Σ x̃ᵀy`` with ``x̃ = [x, 1]``, and the row count ``n``."""

    xtx: Floats64
    xty: Floats64
    count: int

    def __post_init__(self) -> None:
        d = self.xtx.shape[0]
        if self.xtx.shape != (d, d) or self.xty.ndim != 2 or self.xty.shape[0] != d:
            raise ValueError(f"xtx {self.xtx.shape} and xty {self.xty.shape} do not fit")
        if self.count < 0:
            raise ValueError("count must be >= 0")

    @property
    def n_features(self) -> int:
        return int(self.xtx.shape[0]) - 1

    @property
    def n_outputs(self) -> int:
        return int(self.xty.shape[1])

    @classmethod
    def empty(cls, n_features: int, n_outputs: int) -> LinearStats:
        d = n_features + 1
        return cls(np.zeros((d, d)), np.zeros((d, n_outputs)), 0)

    def mismatch(self, head: Head, *, min_rows: int = 1) -> str | None:
        """Why these statistics cannot come from a device of ``head`` (``None``: they
        can): shapes, finiteness, symmetry, the count in the bias corner, ``min_rows``."""
        d = head.n_features + 1
        if self.xtx.shape != (d, d) or self.xty.shape != (d, head.n_outputs):
            return f"statistics of {self.xtx.shape}/{self.xty.shape} for a head of {d - 1}"
        if not (np.isfinite(self.xtx).all() and np.isfinite(self.xty).all()):
            return "statistics hold NaN or Inf"
        if not np.array_equal(self.xtx, self.xtx.T):
            return "xtx is not symmetric"
        if self.xtx[-1, -1] != self.count:
            return f"xtx counts {self.xtx[-1, -1]} rows, the claim is {self.count}"
        if np.any(np.diag(self.xtx) < 0):
            return "xtx has a negative diagonal"
        if self.count < min_rows:
            return f"{self.count} rows, fewer than the {min_rows} exact mode requires"
        return None


def targets(head: Head, labels: np.ndarray) -> Floats64:
    """Least-squares targets: one-hot classes, 0/1 for a binary head, values otherwise."""
    y = np.asarray(labels)
    out: Floats64
    if head.task == "regression":
        out = y.astype(np.float64).reshape(len(y), head.n_outputs)
    elif head.n_outputs == 1:
        out = (y == 1).astype(np.float64).reshape(-1, 1)
    else:
        out = np.eye(head.n_outputs)[y.astype(np.int64)]
    return out


def local_stats(features: np.ndarray, y: np.ndarray) -> LinearStats:
    """One device's statistics from its rows (``y`` from :func:`targets`): the device side."""
    x = np.asarray(features, dtype=np.float64)
    xt = np.hstack([x, np.ones((len(x), 1))])
    gram = xt.T @ xt
    symmetric = (gram + gram.T) / 2  # BLAS need not give bit-equal (i, j) and (j, i)
    return LinearStats(symmetric, xt.T @ np.asarray(y, dtype=np.float64), len(x))


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


__all__ = ["LinearStats", "combine", "local_stats", "merge", "solve_ridge", "targets"]
