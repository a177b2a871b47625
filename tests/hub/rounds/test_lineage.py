"""Lineage: every delta's part in a candidate, and a JSON record that round-trips."""

from __future__ import annotations

import pytest

from hub.rounds.aggregate import PRESETS, Strategy, aggregate
from hub.rounds.evaluation import HoldoutSummary
from hub.rounds.lineage import Excluded, Lineage, lineage_of
from protocol import canonical
from protocol.errors import Malformed
from tests.hub.rounds.helpers import LAYOUT, make_round


def build(strategy: Strategy = PRESETS["default"]) -> Lineage:
    subs, deltas = make_round(6, seed=11)
    aggregation = aggregate(subs, deltas.__getitem__, LAYOUT, strategy, max_norm=10.0)
    excluded = [
        Excluded("d9:3", "d9", 1, 10**9, "flagged", "duplicate", 0.5),
        Excluded("d8:2", "d8", 1, 100, "refused", "non_finite"),
    ]
    return lineage_of(
        aggregation, model="kws", version=5, parent_version=4, source="round:r-1", excluded=excluded
    )


def test_every_delta_used_or_not_has_a_record() -> None:
    lineage = build()
    used = [c for c in lineage.contributions if c.status == "used"]
    assert len(used) == 6
    assert sum(c.weight for c in used) == pytest.approx(1.0)
    assert all(c.norm_after is not None and c.norm_before is not None for c in used)
    assert all(c.norm_after <= lineage.norm_bound + 1e-9 for c in used)  # type: ignore[operator]
    flagged, refused = lineage.contributions[-2:]
    assert (flagged.status, flagged.reason, flagged.weight) == ("flagged", "duplicate", 0.0)
    assert (refused.status, refused.reason, refused.norm_before) == ("refused", "non_finite", None)
    assert lineage.devices == tuple(sorted(f"d{i}" for i in range(6)))


def test_lineage_names_the_strategy_and_its_parameters() -> None:
    lineage = build()
    assert (lineage.strategy, lineage.combiner, lineage.sample_weighting) == (
        "normbound(q=0.5)+mean",
        "mean",
        "capped",
    )
    assert lineage.parameters["clip_quantile"] == 0.5
    assert lineage.parameters["cap_multiple"] == 2.0
    assert "max_samples" not in lineage.parameters
    assert lineage.sample_cap is not None


def test_krum_records_the_deltas_it_left_out_as_unused() -> None:
    lineage = build(Strategy(combiner="krum"))
    statuses = [c.status for c in lineage.contributions[:6]]
    assert statuses.count("used") == 1
    assert statuses.count("unused") == 5


def test_lineage_round_trips_through_canonical_json() -> None:
    summary = HoldoutSummary("accuracy", 6, 0.6, 0.7, 0.1, 0.8)
    lineage = build().with_validation({"candidate_accuracy": 0.9, "parent_accuracy": 0.8}, summary)
    stored = canonical.dumps(lineage.to_json())
    assert Lineage.from_json(canonical.loads(stored)) == lineage


def test_a_corrupt_stored_lineage_is_refused() -> None:
    record = build().to_json()
    record["contributions"][0]["status"] = "trusted"
    with pytest.raises(Malformed, match="contributions"):
        Lineage.from_json(record)
