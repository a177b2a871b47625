"""aggregate(): the plan, the loader and the combiner together, against reference sums."""

from __future__ import annotations

import math
import tracemalloc
from dataclasses import replace

import numpy as np
import pytest

from hub.rounds.aggregate import PRESETS, Strategy, aggregate, with_weighting
from hub.rounds.errors import InvalidPolicy, NothingToAggregate
from hub.rounds.layout import Layout
from hub.rounds.strategies import coordinate_median, krum_select, trimmed_mean
from hub.rounds.weighting import Submission, Weighting
from tests.hub.rounds.helpers import LAYOUT, make_round


def flat(tensors: dict) -> np.ndarray:
    return LAYOUT.flatten(tensors)


def test_default_clips_to_the_median_norm_then_takes_the_capped_weighted_mean() -> None:
    subs, deltas = make_round(9, seed=1)
    result = aggregate(subs, deltas.__getitem__, LAYOUT, PRESETS["default"])
    bound = float(np.median([s.norm for s in subs]))
    cap = math.floor(2 * np.median([s.claimed_samples for s in subs]))
    expected, total = np.zeros(LAYOUT.size), 0.0
    for s in subs:
        w = min(s.claimed_samples, cap)
        expected += w * min(1.0, bound / s.norm) * flat(deltas[s.key])
        total += w
    np.testing.assert_allclose(flat(result.update), expected / total, rtol=1e-6, atol=1e-7)
    assert result.plan.norm_bound == bound
    assert sum(result.shares.values()) == pytest.approx(1.0)
    assert result.velocity is None


def test_the_mean_reads_each_delta_once_in_order() -> None:
    subs, deltas = make_round(6, seed=2)
    reads: list[str] = []

    def load(key: str) -> dict:
        reads.append(key)
        return deltas[key]

    aggregate(subs, load, LAYOUT, PRESETS["default"])
    assert reads == [s.key for s in subs]


def test_streaming_aggregation_memory_does_not_grow_with_the_number_of_deltas() -> None:
    layout = Layout.from_shapes({"w": (50_000,)})
    n = 200

    def load(key: str) -> dict:
        rng = np.random.default_rng(int(key))
        return {"w": rng.random(50_000, dtype=np.float32)}

    subs = [Submission(str(i), f"d{i}", 1, 10, 100.0) for i in range(n)]
    tracemalloc.start()
    try:
        aggregate(subs, load, layout, PRESETS["default"])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    stacked = n * layout.size * 4
    assert peak < 10 * layout.size * 8 < stacked / 2


@pytest.mark.parametrize("combiner", ["median", "trimmed_mean"])
def test_rank_based_rules_see_the_clipped_deltas(combiner: str) -> None:
    subs, deltas = make_round(11, seed=3)
    strategy = Strategy(combiner=combiner)  # type: ignore[arg-type]
    result = aggregate(subs, deltas.__getitem__, LAYOUT, strategy)
    bound = float(np.median([s.norm for s in subs]))
    clipped = [
        ({k: v * np.float32(min(1.0, bound / s.norm)) for k, v in deltas[s.key].items()}, 1.0)
        for s in subs
    ]
    rule = coordinate_median if combiner == "median" else trimmed_mean
    np.testing.assert_allclose(flat(result.update), flat(rule(clipped)), rtol=1e-6, atol=1e-7)
    assert set(result.shares.values()) == {1 / 11}


def test_multikrum_keeps_n_minus_f_and_shares_their_weight() -> None:
    subs, deltas = make_round(10, seed=4)
    for x in deltas[subs[0].key].values():
        x *= 40  # far away from the others
    strategy = Strategy(
        combiner="multikrum", krum_malicious=2, weighting=Weighting(clip_quantile=None)
    )
    result = aggregate(subs, deltas.__getitem__, LAYOUT, strategy)
    kept = krum_select([(deltas[s.key], 1.0) for s in subs], 2, keep=8)
    assert result.shares[subs[0].key] == 0.0
    assert {i for i, s in enumerate(subs) if result.shares[s.key] > 0} == set(kept)
    weights = {i: subs[i].claimed_samples for i in kept}
    expected = sum(weights[i] * flat(deltas[subs[i].key]) for i in kept) / sum(weights.values())
    np.testing.assert_allclose(flat(result.update), expected, rtol=1e-6, atol=1e-7)


def test_krum_returns_one_delta_whole() -> None:
    subs, deltas = make_round(7, seed=5)
    result = aggregate(subs, deltas.__getitem__, LAYOUT, Strategy(combiner="krum"))
    (chosen,) = [k for k, share in result.shares.items() if share == 1.0]
    bound = result.plan.norm_bound
    norm = next(s.norm for s in subs if s.key == chosen)
    expected = flat(deltas[chosen]) * min(1.0, bound / norm)
    np.testing.assert_allclose(flat(result.update), expected, rtol=1e-6)


def test_fedavgm_carries_its_velocity_between_aggregations() -> None:
    subs, deltas = make_round(5, seed=6)
    first = aggregate(subs, deltas.__getitem__, LAYOUT, PRESETS["fedavgm"])
    second = aggregate(
        subs, deltas.__getitem__, LAYOUT, PRESETS["fedavgm"], velocity=first.velocity
    )
    assert first.velocity is not None
    np.testing.assert_allclose(flat(second.update), 1.9 * flat(first.update), rtol=1e-6)


def test_no_submissions_is_nothing_to_aggregate() -> None:
    with pytest.raises(NothingToAggregate):
        aggregate([], lambda key: {}, LAYOUT, PRESETS["default"])


def test_a_delta_of_another_layout_is_a_callers_bug() -> None:
    subs, deltas = make_round(2, seed=7)
    deltas[subs[1].key] = {"w": np.zeros((5, 3), np.float32)}
    with pytest.raises(ValueError, match="missing"):
        aggregate(subs, deltas.__getitem__, LAYOUT, PRESETS["default"])


def test_with_weighting_changes_one_knob() -> None:
    changed = with_weighting(PRESETS["default"], clip_quantile=0.8)
    assert changed.weighting.clip_quantile == 0.8
    assert changed.weighting.samples == "capped"


def test_strategy_names_say_what_runs() -> None:
    assert PRESETS["default"].name == "normbound(q=0.5)+mean"
    assert PRESETS["fedavg"].name == "mean"
    assert PRESETS["fedavgm"].name == "mean+momentum(0.9)"
    assert PRESETS["default"].streaming
    assert not PRESETS["median"].streaming


def test_memory_estimates_separate_streaming_from_stacking() -> None:
    n, p = 1000, 1_000_000
    assert PRESETS["default"].memory_bytes(n, p) == 16 * p
    assert PRESETS["median"].memory_bytes(n, p) > 4 * n * p


@pytest.mark.parametrize(
    "knobs",
    [{"combiner": "bulyan"}, {"trim_fraction": 0.5}, {"krum_malicious": -1}, {"server_lr": 0.0}],
)
def test_impossible_strategies_are_refused(knobs: dict) -> None:
    with pytest.raises(InvalidPolicy):
        Strategy(**knobs)


def test_a_buffer_of_stale_deltas_takes_a_smaller_step() -> None:
    """FedBuff divides by the undiscounted weight: all three versions behind, half the step."""
    subs, deltas = make_round(6, seed=12)
    fresh = aggregate(subs, deltas.__getitem__, LAYOUT, PRESETS["default"])
    stale_subs = [replace(s, staleness=3) for s in subs]
    stale = aggregate(stale_subs, deltas.__getitem__, LAYOUT, PRESETS["default"])
    np.testing.assert_allclose(flat(stale.update), 0.5 * flat(fresh.update), rtol=1e-6)
    assert sum(stale.shares.values()) == pytest.approx(0.5)
