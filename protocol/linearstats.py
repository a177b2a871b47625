"""Sufficient statistics of a linear head's rows: what a device sends in exact mode.

For a head trained by least squares the centrally trained answer depends on the rows
only through ``A = Σ x̃ᵀx̃``, ``B = Σ x̃ᵀy`` (``x̃ = [x, 1]``, ``y`` the least-squares
targets of :func:`targets`) and the row count ``n``, so a device that sends these instead
of a trained delta lets the hub solve the ridge problem exactly (docs/rounds.md, "Exact
mode for linear heads"). The agent computes them (:func:`local_stats`); the hub checks
them against the base head (:meth:`LinearStats.mismatch`), sums and solves them.

On the wire they travel in the :class:`~protocol.messages.DeltaUpload` of a round whose
device config says ``update_kind = "stats"``, as a :mod:`protocol.tensors` container of
two float32 tensors named :data:`STATS_TENSORS`: ``xtx (d+1, d+1)`` and ``xty (d+1, k)``;
``num_samples`` is ``n``. float32 carries the sums to about 7 significant digits; the
hub merges them in float64. With frames capped at 256 KiB that fits heads of up to about
250 features. One upload route keeps the device's outbox, acks, replay windows, rate
limits and the broker's topic rights unchanged; the round says which kind it takes.

What the statistics reveal compared with a delta: ``B``'s bias row is the device's exact
label histogram, ``A`` every second moment of its head features (one row gives the row
itself). Exact mode is opt-in per model and refuses statistics of fewer than
``min_rows`` rows.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from protocol.manifest import Head

Floats64 = npt.NDArray[np.float64]
STATS_TENSORS = ("xtx", "xty")
"""The container's tensor names, in the order :func:`to_tensors` writes them."""


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


def to_tensors(stats: LinearStats) -> dict[str, np.ndarray]:
    """The wire form: float32 ``xtx`` and ``xty`` (the count travels as ``num_samples``)."""
    return {"xtx": stats.xtx.astype(np.float32), "xty": stats.xty.astype(np.float32)}


def from_tensors(tensors: Mapping[str, np.ndarray], count: int) -> LinearStats:
    """The statistics a decoded container and the upload's row count describe.

    Raises:
        ValueError: other tensor names, or shapes that do not fit together.
    """
    if sorted(tensors) != sorted(STATS_TENSORS):
        names = ", ".join(sorted(n[:40] for n in tensors)[:4])
        raise ValueError(f"statistics need tensors xtx and xty, not {names}")
    xtx = np.asarray(tensors["xtx"], dtype=np.float64)
    xty = np.asarray(tensors["xty"], dtype=np.float64)
    if xtx.ndim != 2:
        raise ValueError(f"xtx is {list(xtx.shape)}, not a square matrix")
    return LinearStats(xtx, xty, count)


__all__ = ["STATS_TENSORS", "LinearStats", "from_tensors", "local_stats", "targets", "to_tensors"]
