"""One aggregation: a strategy, screened deltas read through a loader, an update out.

The shell (the round closer, or the buffer flush) hands :func:`aggregate` the
:class:`~hub.rounds.weighting.Submission` rows of the deltas to use and a ``load(key)``
callable that decodes one delta from the store. The plan (weights, norm bound) comes
from the submissions alone; then:

- the **mean** (the default, and FedAvg) reads each delta once through ``load`` and
  forgets it: O(parameters) memory, whatever the number of deltas;
- the **rank-based** rules (median, trimmed mean, Krum, MultiKrum) need every delta at
  once: a float32 stack of n × P (see :mod:`hub.rounds.strategies` and
  :meth:`Strategy.memory_bytes`, which the policy checks before a round starts).

Server momentum, when the strategy has it, turns the rule's output into the step applied
to the base; the velocity is state the caller keeps between versions.

Named strategies (:data:`PRESETS`): ``default`` is norm bounding at the round's median
norm then the capped-sample weighted mean; ``fedavg`` is the same mean without the norm
bound (capped samples still: raw claims are never weights here; the simulations use
:func:`~hub.rounds.strategies.weighted_mean` directly to show what raw claims do).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np

from hub.rounds import strategies
from hub.rounds.errors import InvalidPolicy, NothingToAggregate
from hub.rounds.layout import Floats32, Layout, Tensors
from hub.rounds.weighting import Submission, Weighting, WeightPlan, plan_weights

Combiner = Literal["mean", "median", "trimmed_mean", "krum", "multikrum"]
Loader = Callable[[str], Tensors]
STREAMING: frozenset[Combiner] = frozenset({"mean"})


@dataclass(frozen=True)
class Strategy:
    """A combiner, the weighting plan in front of it and optional server momentum.

    ``krum_malicious`` is Krum's ``f`` (the number of attackers it tolerates);
    ``multikrum_keep`` defaults to ``n - f``. ``trim_fraction`` is cut from each end.
    """

    combiner: Combiner = "mean"
    weighting: Weighting = field(default_factory=Weighting)
    trim_fraction: float = 0.2
    krum_malicious: int = 0
    multikrum_keep: int | None = None
    server_momentum: float = 0.0
    server_lr: float = 1.0

    def __post_init__(self) -> None:
        if self.combiner not in ("mean", "median", "trimmed_mean", "krum", "multikrum"):
            raise InvalidPolicy(f"combiner {self.combiner!r} is not one the hub has")
        if not 0.0 <= self.trim_fraction < 0.5:
            raise InvalidPolicy(f"trim_fraction {self.trim_fraction} outside [0, 0.5)")
        if self.krum_malicious < 0 or (self.multikrum_keep is not None and self.multikrum_keep < 1):
            raise InvalidPolicy("krum_malicious must be >= 0 and multikrum_keep >= 1")
        if not (0.0 <= self.server_momentum < 1.0 and 0.0 < self.server_lr < math.inf):
            raise InvalidPolicy("server_momentum must be in [0, 1) and server_lr positive")

    @property
    def streaming(self) -> bool:
        return self.combiner in STREAMING

    @property
    def name(self) -> str:
        """A short label for lineage and metrics: ``normbound(q=0.5)+mean``."""
        parts = []
        if self.weighting.clip_quantile is not None:
            parts.append(f"normbound(q={self.weighting.clip_quantile:g})")
        parts.append(self.combiner)
        if self.server_momentum:
            parts.append(f"momentum({self.server_momentum:g})")
        return "+".join(parts)

    def memory_bytes(self, n_deltas: int, n_parameters: int) -> int:
        """Peak bytes the combiner needs beyond one decoded delta (an estimate for policy
        checks: streaming is a float64 sum and its scratch; the others add a float32
        stack, float64 column blocks and, for Krum, the n × n distances)."""
        accumulator = 16 * n_parameters
        if self.streaming:
            return accumulator
        stack = 4 * n_deltas * n_parameters
        block = min(strategies.BLOCK_BYTES, 8 * n_deltas * n_parameters)
        krum = 16 * n_deltas * n_deltas if self.combiner in ("krum", "multikrum") else 0
        return stack + 2 * block + accumulator + krum


PRESETS: Mapping[str, Strategy] = {
    "default": Strategy(),
    "fedavg": Strategy(weighting=Weighting(clip_quantile=None)),
    "fedavgm": Strategy(weighting=Weighting(clip_quantile=None), server_momentum=0.9),
    "median": Strategy(combiner="median", weighting=Weighting(clip_quantile=None)),
    "trimmed_mean": Strategy(combiner="trimmed_mean", weighting=Weighting(clip_quantile=None)),
    "multikrum": Strategy(combiner="multikrum", weighting=Weighting(clip_quantile=None)),
}
"""Strategies by name, as a model policy or ``edgefleet round start --strategy`` names them."""


@dataclass(frozen=True, eq=False)
class Aggregation:
    """What one aggregation produced.

    ``update`` is the step to add to the base head (after momentum); ``velocity`` is the
    momentum state to keep (``None`` without momentum); ``shares`` gives each planned
    delta's factor in the result, by key: weight shares for the mean rules (summing to
    1 when all are fresh, less when stale ones shrink the step), ``1/n`` for median and
    trimmed mean, the kept deltas' shares for Krum.
    """

    update: dict[str, Floats32]
    velocity: dict[str, Floats32] | None
    plan: WeightPlan
    shares: dict[str, float]
    strategy: Strategy
    ridge_l2: float | None = None
    """Set when exact mode solved the ridge problem (:mod:`hub.rounds.exact`) instead of
    combining deltas: ``strategy`` is then not what made the update."""


def aggregate(
    submissions: Sequence[Submission],
    load: Loader,
    layout: Layout,
    strategy: Strategy,
    *,
    max_norm: float = math.inf,
    velocity: Tensors | None = None,
) -> Aggregation:
    """Aggregate the deltas named by ``submissions`` with ``strategy``.

    ``load(key)`` returns one decoded delta (it is called once per submission, in order;
    a streaming strategy holds one at a time). ``max_norm`` is the model's hard bound.

    Raises:
        NothingToAggregate: no submissions, or all of weight zero.
        ValueError: a loaded delta that does not fit ``layout`` (screening's job first).
    """
    plan = plan_weights(submissions, strategy.weighting, max_norm=max_norm)
    if not plan.entries or plan.total_weight <= 0.0:
        raise NothingToAggregate("no accepted delta carries weight")
    if strategy.streaming:
        mean = strategies.WeightedMean(layout)
        for entry in plan.entries:
            mean.add(load(entry.key), entry.weight, entry.scale)
        result = mean.result(plan.denominator)
        shares = _weight_shares(plan, range(len(plan.entries)))
    else:
        result, shares = _rank_based(plan, load, layout, strategy)
    if strategy.server_momentum == 0.0:
        update = result if strategy.server_lr == 1.0 else _scaled(result, strategy.server_lr)
        return Aggregation(update, None, plan, shares, strategy)
    step, new_velocity = strategies.server_momentum(
        result, velocity, momentum=strategy.server_momentum, server_lr=strategy.server_lr
    )
    return Aggregation(step, new_velocity, plan, shares, strategy)


def _rank_based(
    plan: WeightPlan, load: Loader, layout: Layout, strategy: Strategy
) -> tuple[dict[str, Floats32], dict[str, float]]:
    """Fill one float32 stack straight from the loader (each row clipped in place), so
    the peak is the stack plus one decoded delta, then apply the rank-based rule."""
    n = len(plan.entries)
    stack = np.empty((n, layout.size), dtype=np.float32)
    for row, entry in enumerate(plan.entries):
        delta = load(entry.key)
        why = layout.mismatch(delta)
        if why is not None:
            raise ValueError(why)
        for name, _, where in layout.slices():
            stack[row, where] = np.asarray(delta[name]).ravel()
        if entry.scale != 1.0:
            stack[row] *= np.float32(entry.scale)
    if strategy.combiner == "median":
        return layout.unflatten(strategies.median_rows(stack)), _equal_shares(plan)
    if strategy.combiner == "trimmed_mean":
        result = strategies.trimmed_rows(stack, strategy.trim_fraction)
        return layout.unflatten(result), _equal_shares(plan)
    f = strategy.krum_malicious
    keep = 1 if strategy.combiner == "krum" else (strategy.multikrum_keep or n - f)
    chosen = strategies.lowest(strategies.krum_rows(stack, f), max(1, min(keep, n)))
    if strategy.combiner == "krum":  # the one delta itself, whatever its weight
        shares = dict.fromkeys((e.key for e in plan.entries), 0.0)
        shares[plan.entries[chosen[0]].key] = 1.0
        return layout.unflatten(stack[chosen[0]]), shares
    shares = _weight_shares(plan, chosen)
    if not any(shares.values()):
        raise NothingToAggregate("the deltas Krum kept carry no weight")
    mean = np.zeros(layout.size, dtype=np.float64)
    for i in chosen:
        mean += stack[i].astype(np.float64) * shares[plan.entries[i].key]
    return layout.unflatten(mean), shares


def _scaled(tensors: Tensors, factor: float) -> dict[str, Floats32]:
    return {
        name: (np.asarray(x, np.float64) * factor).astype(np.float32) for name, x in tensors.items()
    }


def _weight_shares(plan: WeightPlan, used: Sequence[int] | range) -> dict[str, float]:
    """Each delta's factor in the result: weight over the undiscounted total of the
    deltas used (below 1 in all when some are stale: the step shrinks)."""
    chosen = set(used)
    total = math.fsum(plan.entries[i].weight / plan.entries[i].staleness_factor for i in chosen)
    return {
        e.key: (e.weight / total if i in chosen and total > 0 else 0.0)
        for i, e in enumerate(plan.entries)
    }


def _equal_shares(plan: WeightPlan) -> dict[str, float]:
    return {e.key: 1.0 / len(plan.entries) for e in plan.entries}


def with_weighting(strategy: Strategy, **changes: object) -> Strategy:
    """``strategy`` with some weighting knobs changed (``clip_quantile=None``...)."""
    return replace(strategy, weighting=replace(strategy.weighting, **changes))  # type: ignore[arg-type]


__all__ = [
    "PRESETS",
    "STREAMING",
    "Aggregation",
    "Combiner",
    "Loader",
    "Strategy",
    "aggregate",
    "with_weighting",
]
