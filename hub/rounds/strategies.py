"""Aggregation rules as plain numpy functions over ``(delta, weight)`` pairs, Flower-style.

Every function takes ``results: Sequence[tuple[Tensors, float]]`` (deltas sharing one
:class:`~hub.rounds.layout.Layout`, each with a non-negative weight) and returns the
aggregate as float32 tensors of that layout. Weights are whatever the caller planned
(:mod:`hub.rounds.weighting`): this module trusts nothing and decides nothing about them.

========================  =========================  ======================================
rule                      weights                    memory (n deltas, P parameters)
========================  =========================  ======================================
:class:`WeightedMean`     used                       O(P): streaming, one delta at a time
:func:`weighted_mean`     used                       O(P) beyond the inputs
:func:`coordinate_median` ignored (rank-based)       O(n·P) float32 stack + O(n·B) per block
:func:`trimmed_mean`      ignored (rank-based)       same as the median
:func:`krum_select`       --                         O(n·P) stack + O(n²) distances
:func:`multikrum`         used among the kept        same as Krum
========================  =========================  ======================================

The rank-based rules ignore weights as Flower's and the literature's do (Yin et al. 2018;
Blanchard et al. 2017): weighting a median by self-reported counts would hand it back to
whoever claims most. Their stack is float32 (the codec's dtype) and they work on column
blocks of at most :data:`BLOCK_BYTES`, so the temporary memory stays small beside it.

Server momentum (FedAvgM, Hsu et al. 2019) works on any rule's output:
:func:`server_momentum` returns the step and the new velocity, the state the caller keeps.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from hub.rounds.layout import Floats32, Layout, Tensors

Results = Sequence[tuple[Tensors, float]]
BLOCK_BYTES = 64 * 1024 * 1024
"""Column blocks of the rank-based rules hold at most this many bytes of the stack."""


class WeightedMean:
    """Streaming weighted mean: ``add`` deltas one at a time, ``result`` their mean.

    Holds two float64 vectors of the layout's size (the sum, and scratch for one
    product) whatever the number of deltas, so a round of 1,000 deltas of 1M parameters
    needs 16 MB, not 4 GB. ``scale`` multiplies
    the delta before weighting (the norm bound's clip factor), so clipped copies are
    never made.
    """

    def __init__(self, layout: Layout) -> None:
        self.layout = layout
        self._sum = np.zeros(layout.size, dtype=np.float64)
        self._scratch = np.empty(layout.size, dtype=np.float64)
        self._slices = layout.slices()
        self._weights: list[float] = []

    @property
    def count(self) -> int:
        return len(self._weights)

    def add(self, delta: Tensors, weight: float, scale: float = 1.0) -> None:
        """Accumulate ``weight × scale × delta``.

        Raises:
            ValueError: a negative or non-finite weight or scale, or a delta that does
                not fit the layout (screening refuses those first: a caller's bug here).
        """
        if not (0.0 <= weight < math.inf and 0.0 <= scale < math.inf):
            raise ValueError(f"weight {weight} and scale {scale} must be finite and >= 0")
        why = self.layout.mismatch(delta)
        if why is not None:
            raise ValueError(why)
        factor = weight * scale
        for name, _, where in self._slices:
            product = self._scratch[where]  # the product in float64, not the delta's dtype
            np.multiply(np.asarray(delta[name]).ravel(), factor, out=product, dtype=np.float64)
            self._sum[where] += product
        self._weights.append(weight)

    def result(self, total: float | None = None) -> dict[str, Floats32]:
        """The sum so far divided by ``total`` (default: the sum of the weights, the
        weighted mean); zeros when that is zero.

        FedBuff divides by the deltas' undiscounted weight, so that a buffer of stale
        deltas moves the model less (:mod:`hub.rounds.weighting`).
        """
        total = math.fsum(self._weights) if total is None else total
        if total == 0.0:
            return self.layout.zeros()
        return self.layout.unflatten(self._sum / total)


def weighted_mean(results: Results) -> dict[str, Floats32]:
    """``Σ wᵢ Δᵢ / Σ wᵢ``: FedAvg when the weights are sample counts.

    Flower's ``aggregate`` passes the self-reported counts here as they come; the hub
    passes capped ones (:mod:`hub.rounds.weighting`).
    """
    layout = _layout(results)
    mean = WeightedMean(layout)
    for delta, weight in results:
        mean.add(delta, weight)
    return mean.result()


def coordinate_median(results: Results) -> dict[str, Floats32]:
    """The per-coordinate median of the deltas (unweighted; Yin et al. 2018)."""
    layout = _layout(results)
    return layout.unflatten(median_rows(stack_deltas(results, layout)))


def trimmed_mean(results: Results, trim_fraction: float = 0.2) -> dict[str, Floats32]:
    """Per coordinate, the mean after dropping the ``floor(trim_fraction × n)`` smallest
    and as many largest values (unweighted; Flower's ``aggregate_trimmed_avg``).

    Raises:
        ValueError: ``trim_fraction`` outside [0, 0.5).
    """
    layout = _layout(results)
    return layout.unflatten(trimmed_rows(stack_deltas(results, layout), trim_fraction))


def krum_scores(results: Results, num_malicious: int) -> np.ndarray:
    """Each delta's Krum score: the sum of squared distances to its ``n - f - 2`` nearest
    others (at least one), Blanchard et al. 2017. Lower is more central."""
    layout = _layout(results)
    return krum_rows(stack_deltas(results, layout), num_malicious)


def median_rows(stack: np.ndarray) -> np.ndarray:
    """:func:`coordinate_median` of the rows of a float32 ``(n, P)`` stack, as float64."""
    n, size = stack.shape
    out = np.empty(size, dtype=np.float64)
    for block in _column_blocks(n, size):
        out[block] = np.median(stack[:, block].astype(np.float64), axis=0)
    return out


def trimmed_rows(stack: np.ndarray, trim_fraction: float) -> np.ndarray:
    """:func:`trimmed_mean` of the rows of a stack, as float64."""
    if not 0.0 <= trim_fraction < 0.5:
        raise ValueError(f"trim_fraction {trim_fraction} outside [0, 0.5)")
    n, size = stack.shape
    cut = math.floor(trim_fraction * n)
    out = np.empty(size, dtype=np.float64)
    for block in _column_blocks(n, size):
        part = np.partition(stack[:, block].astype(np.float64), (cut, n - cut - 1), axis=0)
        out[block] = part[cut : n - cut].mean(axis=0)
    return out


def krum_rows(stack: np.ndarray, num_malicious: int) -> np.ndarray:
    """:func:`krum_scores` of the rows of a stack (distances from float64 Gram blocks)."""
    if num_malicious < 0:
        raise ValueError("num_malicious must be >= 0")
    n, size = stack.shape
    gram = np.zeros((n, n), dtype=np.float64)
    for block in _column_blocks(n, size):
        part = stack[:, block].astype(np.float64)
        gram += part @ part.T
    sq = np.diag(gram)
    distances = np.maximum(sq[:, None] + sq[None, :] - 2.0 * gram, 0.0)
    nearest = max(1, n - num_malicious - 2)
    scores = np.empty(n, dtype=np.float64)
    for i in range(n):
        others = np.delete(distances[i], i)
        scores[i] = np.sort(others)[: min(nearest, others.size)].sum()
    return scores


def lowest(scores: np.ndarray, keep: int) -> list[int]:
    """Indices of the ``keep`` lowest scores, lowest first (ties: the earlier index)."""
    if not 1 <= keep <= len(scores):
        raise ValueError(f"keep {keep} outside [1, {len(scores)}]")
    return [int(i) for i in np.argsort(scores, kind="stable")[:keep]]


def krum_select(results: Results, num_malicious: int, keep: int = 1) -> list[int]:
    """Indices of the ``keep`` deltas with the lowest Krum scores, best first (ties: the
    earlier index), so the choice depends on nothing but the deltas and their order."""
    return lowest(krum_scores(results, num_malicious), keep)


def krum(results: Results, num_malicious: int) -> dict[str, Floats32]:
    """The single most central delta (Krum)."""
    chosen = krum_select(results, num_malicious, 1)[0]
    return {name: np.asarray(x, dtype=np.float32).copy() for name, x in results[chosen][0].items()}


def multikrum(results: Results, num_malicious: int, keep: int | None = None) -> dict[str, Floats32]:
    """The weighted mean of the ``keep`` most central deltas (default ``n - f``)."""
    keep = len(results) - num_malicious if keep is None else keep
    chosen = krum_select(results, num_malicious, max(1, keep))
    return weighted_mean([results[i] for i in chosen])


def server_momentum(
    update: Tensors, velocity: Tensors | None, *, momentum: float, server_lr: float = 1.0
) -> tuple[dict[str, Floats32], dict[str, Floats32]]:
    """FedAvgM: ``v' = momentum × v + update`` and the step ``server_lr × v'``.

    ``velocity`` is ``None`` on the first round (Flower starts the vector at the first
    update, the same thing). Returns ``(step, v')``; the caller stores ``v'``.
    """
    if not (0.0 <= momentum < 1.0 and 0.0 < server_lr < math.inf):
        raise ValueError("momentum must be in [0, 1) and server_lr positive")
    new_velocity = {
        name: np.asarray(
            np.asarray(x, np.float64)
            + (0.0 if velocity is None else momentum * np.asarray(velocity[name], np.float64)),
            dtype=np.float32,
        )
        for name, x in update.items()
    }
    step = {name: np.asarray(v * server_lr, dtype=np.float32) for name, v in new_velocity.items()}
    return step, new_velocity


def stack_deltas(results: Results, layout: Layout) -> np.ndarray:
    """The deltas as rows of one float32 ``(n, P)`` matrix: the rank-based rules' memory."""
    stack = np.empty((len(results), layout.size), dtype=np.float32)
    for row, (delta, _) in enumerate(results):
        why = layout.mismatch(delta)
        if why is not None:
            raise ValueError(why)
        for name, _, where in layout.slices():
            stack[row, where] = np.asarray(delta[name]).ravel()
    return stack


def _column_blocks(rows: int, size: int) -> list[slice]:
    width = max(1, BLOCK_BYTES // (8 * max(rows, 1)))
    return [slice(start, min(start + width, size)) for start in range(0, size, width)]


def _layout(results: Results) -> Layout:
    if not results:
        raise ValueError("no deltas to aggregate")
    if any(not 0.0 <= w < math.inf for _, w in results):
        raise ValueError("weights must be finite and >= 0")
    return Layout.of(results[0][0])


__all__ = [
    "BLOCK_BYTES",
    "Results",
    "WeightedMean",
    "coordinate_median",
    "krum",
    "krum_rows",
    "krum_scores",
    "krum_select",
    "lowest",
    "median_rows",
    "multikrum",
    "server_momentum",
    "stack_deltas",
    "trimmed_mean",
    "trimmed_rows",
    "weighted_mean",
]
