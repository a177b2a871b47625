"""Where a candidate version came from: every delta that counted (and every one that did not).

A :class:`Lineage` is what ``GET /api/v1/models/{name}/versions/{v}/lineage`` returns and
what the registry stores in ``versions.lineage``: the parent, the round or buffer flush,
the strategy with all its parameters, the bounds it applied, one
:class:`ContributionRecord` per delta (device, base, samples claimed and used, norm
before and after clipping, weight, staleness, status and why), and the validation
metrics once known. Built with :func:`lineage_of` from an
:class:`~hub.rounds.aggregate.Aggregation` and the deltas that were not used.

Round-trip law: ``Lineage.from_json(l.to_json()) == l`` (via :mod:`protocol.schema`,
which also refuses a malformed stored record).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

from hub.rounds.aggregate import Aggregation, Strategy
from hub.rounds.evaluation import HoldoutSummary
from protocol import schema

ContributionStatus = Literal["used", "unused", "flagged", "refused"]


@dataclass(frozen=True)
class ContributionRecord:
    """One delta's part. ``weight`` is its share of the aggregate (0 to 1; the shares of
    the used deltas sum to 1). ``unused``: accepted but left out by the combiner (Krum
    keeps some); ``flagged`` (a duplicate) and ``refused`` deltas carry their reason.
    Norms are ``None`` for deltas that never decoded."""

    key: str
    device_id: str
    base_version: int
    samples_claimed: int
    samples_used: int
    norm_before: float | None
    norm_after: float | None
    weight: float
    staleness: int
    status: ContributionStatus
    reason: str | None = None


@dataclass(frozen=True)
class Excluded:
    """A delta of the round or buffer that screening flagged or refused."""

    key: str
    device_id: str
    base_version: int
    samples_claimed: int
    status: Literal["flagged", "refused"]
    reason: str
    norm: float | None = None
    staleness: int = 0


@dataclass(frozen=True)
class Lineage:
    """The record of one candidate version (module docstring).

    ``source`` is ``round:<round_id>`` or ``buffer:<model>:<flush number>``;
    ``parameters`` holds the strategy's numeric knobs (absent when unset);
    ``norm_bound`` is ``None`` when no bound applied; ``validation`` holds the hub
    validation metrics (``candidate_accuracy``, ``parent_accuracy``...) once known.
    """

    model: str
    version: int
    parent_version: int
    source: str
    strategy: str
    combiner: str
    sample_weighting: str
    parameters: dict[str, float]
    norm_bound: float | None
    sample_cap: int | None
    contributions: tuple[ContributionRecord, ...]
    validation: dict[str, float] | None = None
    holdouts: HoldoutSummary | None = None
    velocity: str | None = None
    """Server momentum's velocity after this aggregation: the sha256 of an f32 tensor
    container in the hub's artifact store (``None`` without momentum). A round on this
    version continues from it, so FedAvgM's state follows the lineage chain and survives
    restarts; a rejected candidate's velocity is never picked up."""

    def to_json(self) -> dict[str, Any]:
        result: dict[str, Any] = schema.to_json(self)
        return result

    @classmethod
    def from_json(cls, value: object) -> Lineage:
        """Raises: Malformed when ``value`` is not a lineage record."""
        return schema.from_json(cls, value, path="lineage")

    def with_validation(
        self, metrics: dict[str, float], holdouts: HoldoutSummary | None = None
    ) -> Lineage:
        return replace(self, validation=dict(metrics), holdouts=holdouts or self.holdouts)

    @property
    def devices(self) -> tuple[str, ...]:
        """The devices whose deltas shaped the candidate, sorted."""
        return tuple(sorted({c.device_id for c in self.contributions if c.status == "used"}))


def strategy_parameters(strategy: Strategy) -> dict[str, float]:
    """The numeric knobs of ``strategy``, unset ones left out (JSON has no None-as-number)."""
    w = strategy.weighting
    knobs: dict[str, float | int | None] = {
        "cap_multiple": w.cap_multiple,
        "max_samples": w.max_samples,
        "staleness_exponent": w.staleness_exponent,
        "clip_quantile": w.clip_quantile,
        "trim_fraction": strategy.trim_fraction,
        "krum_malicious": strategy.krum_malicious,
        "multikrum_keep": strategy.multikrum_keep,
        "server_momentum": strategy.server_momentum,
        "server_lr": strategy.server_lr,
    }
    return {k: float(v) for k, v in knobs.items() if v is not None}


def lineage_of(
    aggregation: Aggregation,
    *,
    model: str,
    version: int,
    parent_version: int,
    source: str,
    excluded: Sequence[Excluded] = (),
) -> Lineage:
    """The lineage of the candidate ``aggregation`` made (before validation)."""
    plan = aggregation.plan
    records = [
        ContributionRecord(
            key=e.key,
            device_id=e.device_id,
            base_version=e.base_version,
            samples_claimed=e.claimed_samples,
            samples_used=e.samples_used,
            norm_before=e.norm_before,
            norm_after=e.norm_after,
            weight=aggregation.shares.get(e.key, 0.0),
            staleness=e.staleness,
            status="used" if aggregation.shares.get(e.key, 0.0) > 0 else "unused",
        )
        for e in plan.entries
    ]
    records += [
        ContributionRecord(
            key=x.key,
            device_id=x.device_id,
            base_version=x.base_version,
            samples_claimed=x.samples_claimed,
            samples_used=0,
            norm_before=x.norm,
            norm_after=None,
            weight=0.0,
            staleness=x.staleness,
            status=x.status,
            reason=x.reason,
        )
        for x in excluded
    ]
    strategy = aggregation.strategy
    exact = aggregation.ridge_l2 is not None
    return Lineage(
        model=model,
        version=version,
        parent_version=parent_version,
        source=source,
        strategy="exact(ridge)" if exact else strategy.name,
        combiner="ridge" if exact else strategy.combiner,
        sample_weighting="rows" if exact else strategy.weighting.samples,
        parameters={"l2": aggregation.ridge_l2 or 0.0} if exact else strategy_parameters(strategy),
        norm_bound=plan.norm_bound if math.isfinite(plan.norm_bound) else None,
        sample_cap=plan.sample_cap,
        contributions=tuple(records),
    )


__all__ = [
    "ContributionRecord",
    "ContributionStatus",
    "Excluded",
    "Lineage",
    "lineage_of",
    "strategy_parameters",
]
