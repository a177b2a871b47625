"""How much each screened delta counts, decided from metadata alone before any tensor is read.

Three things set a delta's say in the aggregate, and all three are known at ingest, so the
plan is made first and the tensors are then read once (streaming, O(parameters) memory):

1. **Samples, capped.** ``num_samples`` is the device's own claim, so it is never used
   raw: ``used = min(claimed, cap)`` with ``cap = floor(cap_multiple × median(claims))``
   over the deltas being aggregated (and never above ``max_samples`` when the policy
   sets one, e.g. the agent's feedback buffer size). One device claiming 10⁹ samples then
   weighs at most ``cap_multiple`` median devices; to move the median itself, half the
   contributors must lie. ``samples="uniform"`` ignores the claims altogether.
2. **Staleness.** A delta trained on a version ``τ`` versions behind the one it is applied
   to counts ``(1 + τ)^-a`` (FedBuff, a = 0.5).
3. **Norm bound.** Every delta is scaled to at most ``bound = min(max_norm,
   quantile_q(norms))`` (norm bounding, q = 0.5: the round's median norm), so a scaled
   or sign-flipped delta cannot outweigh an honest one however large it is. Scaling
   keeps the direction; the weight is unchanged.

The aggregate is then ``Σ wᵢ sᵢ Δᵢ / Σ usedᵢ`` with ``wᵢ = usedᵢ × (1 + τᵢ)^-a`` and
``sᵢ = min(1, bound / ‖Δᵢ‖)`` (for the mean; rank-based combiners use ``sᵢ Δᵢ`` only).
The denominator leaves the staleness discount out, as FedBuff's ``(1/K) Σ s(τᵢ) Δᵢ``
does: a buffer of stale deltas takes a smaller step, where a plain weighted mean would
only shift weight among them. With every delta fresh it is the weighted mean.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from hub.rounds.errors import InvalidPolicy

SampleWeighting = Literal["capped", "uniform"]


@dataclass(frozen=True)
class Submission:
    """A screened delta as the store describes it, without its tensors.

    ``key`` identifies it to the loader the shell passes to aggregation (e.g.
    ``"<device_id>:<seq>"``); ``base_version`` is the version it was trained from;
    ``norm`` is its L2 norm as received (screening computed it); ``staleness`` counts
    versions between its base and the version it is applied to.
    """

    key: str
    device_id: str
    base_version: int
    claimed_samples: int
    norm: float
    staleness: int = 0

    def __post_init__(self) -> None:
        if self.claimed_samples < 1:
            raise ValueError(f"{self.key}: claimed_samples must be >= 1 (the wire checks it)")
        if not (math.isfinite(self.norm) and self.norm >= 0.0):
            raise ValueError(f"{self.key}: norm must be finite and >= 0 (screening checks it)")
        if self.staleness < 0:
            raise ValueError(f"{self.key}: staleness must be >= 0")


@dataclass(frozen=True)
class Weighting:
    """The knobs of the plan (module docstring); the defaults are the hub's defaults."""

    samples: SampleWeighting = "capped"
    cap_multiple: float = 2.0
    max_samples: int | None = None
    staleness_exponent: float = 0.5
    clip_quantile: float | None = 0.5

    def __post_init__(self) -> None:
        if self.samples not in ("capped", "uniform"):
            raise InvalidPolicy(f"samples {self.samples!r} must be 'capped' or 'uniform'")
        if not 1.0 <= self.cap_multiple < math.inf:
            raise InvalidPolicy(f"cap_multiple {self.cap_multiple} must be >= 1 and finite")
        if self.max_samples is not None and self.max_samples < 1:
            raise InvalidPolicy(f"max_samples {self.max_samples} must be >= 1")
        if not 0.0 <= self.staleness_exponent <= 1.0:
            raise InvalidPolicy(f"staleness_exponent {self.staleness_exponent} outside [0, 1]")
        if self.clip_quantile is not None and not 0.0 < self.clip_quantile <= 1.0:
            raise InvalidPolicy(f"clip_quantile {self.clip_quantile} outside (0, 1]")


@dataclass(frozen=True)
class Planned:
    """One delta's part in the aggregate: its capped samples, staleness factor, weight
    (their product) and the factor that brings its norm within the bound."""

    key: str
    device_id: str
    base_version: int
    claimed_samples: int
    samples_used: int
    staleness: int
    staleness_factor: float
    weight: float
    norm_before: float
    scale: float

    @property
    def norm_after(self) -> float:
        return self.norm_before * self.scale


@dataclass(frozen=True)
class WeightPlan:
    """The plan for a set of deltas, in the order given, with the bounds it used."""

    entries: tuple[Planned, ...]
    sample_cap: int | None
    norm_bound: float

    @property
    def total_weight(self) -> float:
        """The sum of the weights, staleness discounts included."""
        return math.fsum(e.weight for e in self.entries)

    @property
    def denominator(self) -> float:
        """What the mean divides by: the weights *without* their staleness discounts
        (FedBuff's ``(1/K) Σ s(τᵢ) Δᵢ``), so stale deltas shrink the step rather than
        only shifting it between deltas. Equals :attr:`total_weight` when all are fresh."""
        return math.fsum(e.weight / e.staleness_factor for e in self.entries)


def staleness_weight(staleness: int, exponent: float = 0.5) -> float:
    """FedBuff's polynomial staleness discount ``(1 + τ)^-exponent``: 1 when fresh."""
    if staleness < 0:
        raise ValueError("staleness must be >= 0")
    return float((1.0 + staleness) ** -exponent)


def sample_cap(claims: Sequence[int], weighting: Weighting) -> int | None:
    """``floor(cap_multiple × median(claims))``, within ``max_samples`` (None: uniform)."""
    if weighting.samples == "uniform" or not claims:
        return None
    cap = max(1, math.floor(weighting.cap_multiple * float(np.median(claims))))
    return cap if weighting.max_samples is None else min(cap, weighting.max_samples)


def norm_bound(norms: Sequence[float], weighting: Weighting, max_norm: float) -> float:
    """``min(max_norm, quantile_q(norms))``; ``max_norm`` alone without a quantile."""
    if weighting.clip_quantile is None or not norms:
        return max_norm
    return min(max_norm, float(np.quantile(np.asarray(norms), weighting.clip_quantile)))


def plan_weights(
    submissions: Sequence[Submission], weighting: Weighting, *, max_norm: float = math.inf
) -> WeightPlan:
    """Every delta's weight and clip factor (module docstring), in the order given.

    ``max_norm`` is the model's hard bound (what screening enforced); the quantile bound
    can only tighten it.
    """
    if not max_norm >= 0.0:
        raise ValueError("max_norm must be >= 0")
    cap = sample_cap([s.claimed_samples for s in submissions], weighting)
    bound = norm_bound([s.norm for s in submissions], weighting, max_norm)
    entries = []
    for s in submissions:
        used = 1 if cap is None else min(s.claimed_samples, cap)
        factor = staleness_weight(s.staleness, weighting.staleness_exponent)
        scale = 1.0 if s.norm <= bound else bound / s.norm
        entries.append(
            Planned(
                key=s.key,
                device_id=s.device_id,
                base_version=s.base_version,
                claimed_samples=s.claimed_samples,
                samples_used=used,
                staleness=s.staleness,
                staleness_factor=factor,
                weight=used * factor,
                norm_before=s.norm,
                scale=scale,
            )
        )
    return WeightPlan(tuple(entries), cap, bound)


__all__ = [
    "Planned",
    "SampleWeighting",
    "Submission",
    "WeightPlan",
    "Weighting",
    "norm_bound",
    "plan_weights",
    "sample_cap",
    "staleness_weight",
]
