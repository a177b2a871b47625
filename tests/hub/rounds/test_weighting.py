"""The weighting plan: capped sample claims, staleness discount, norm bound."""

from __future__ import annotations

import math

import pytest

from hub.rounds.errors import InvalidPolicy
from hub.rounds.weighting import (
    Submission,
    Weighting,
    plan_weights,
    sample_cap,
    staleness_weight,
)


def sub(i: int, claimed: int = 100, norm: float = 1.0, staleness: int = 0) -> Submission:
    return Submission(f"d{i}:1", f"d{i}", 3, claimed, norm, staleness)


def test_a_device_claiming_a_billion_samples_weighs_at_most_twice_the_median() -> None:
    subs = [sub(i, claimed=100 + i) for i in range(9)] + [sub(9, claimed=10**9)]
    plan = plan_weights(subs, Weighting())
    assert plan.sample_cap == math.floor(2.0 * 104.5)
    liar = plan.entries[-1]
    assert (liar.claimed_samples, liar.samples_used) == (10**9, 209)
    assert liar.weight / plan.total_weight < 0.2


def test_honest_claims_below_the_cap_are_used_as_claimed() -> None:
    plan = plan_weights([sub(0, 50), sub(1, 100), sub(2, 150)], Weighting())
    assert [e.samples_used for e in plan.entries] == [50, 100, 150]


def test_the_policy_cap_bounds_the_median_cap_too() -> None:
    subs = [sub(i, claimed=1000) for i in range(3)]
    assert sample_cap([s.claimed_samples for s in subs], Weighting(max_samples=256)) == 256
    assert {e.samples_used for e in plan_weights(subs, Weighting(max_samples=256)).entries} == {256}


def test_uniform_weighting_ignores_every_claim() -> None:
    plan = plan_weights([sub(0, 1), sub(1, 10**9)], Weighting(samples="uniform"))
    assert plan.sample_cap is None
    assert [e.weight for e in plan.entries] == [1.0, 1.0]


@pytest.mark.parametrize(("tau", "factor"), [(0, 1.0), (1, 2**-0.5), (3, 0.5), (8, 1 / 3)])
def test_staleness_weight_is_fedbuffs_inverse_square_root(tau: int, factor: float) -> None:
    assert staleness_weight(tau) == pytest.approx(factor)


def test_stale_deltas_count_less() -> None:
    plan = plan_weights([sub(0, staleness=0), sub(1, staleness=3)], Weighting())
    assert [e.weight for e in plan.entries] == [100.0, 50.0]


def test_every_delta_is_clipped_to_the_rounds_median_norm() -> None:
    norms = [1.0, 2.0, 3.0, 4.0, 500.0]
    plan = plan_weights([sub(i, norm=n) for i, n in enumerate(norms)], Weighting())
    assert plan.norm_bound == 3.0
    assert [e.norm_after for e in plan.entries] == pytest.approx([1.0, 2.0, 3.0, 3.0, 3.0])


def test_the_models_hard_bound_wins_over_a_looser_quantile() -> None:
    plan = plan_weights([sub(0, norm=5.0), sub(1, norm=7.0)], Weighting(), max_norm=2.0)
    assert plan.norm_bound == 2.0
    assert [e.scale for e in plan.entries] == pytest.approx([0.4, 2 / 7])


def test_without_a_quantile_only_the_hard_bound_clips() -> None:
    plan = plan_weights([sub(0, norm=5.0)], Weighting(clip_quantile=None))
    assert (plan.norm_bound, plan.entries[0].scale) == (math.inf, 1.0)


@pytest.mark.parametrize(
    "knobs",
    [
        {"samples": "raw"},
        {"cap_multiple": 0.5},
        {"cap_multiple": math.inf},
        {"max_samples": 0},
        {"staleness_exponent": 2.0},
        {"clip_quantile": 0.0},
        {"clip_quantile": 1.5},
    ],
)
def test_nonsense_weighting_is_refused_with_the_field_named(knobs: dict) -> None:
    field = next(iter(knobs))
    with pytest.raises(InvalidPolicy, match=field):
        Weighting(**knobs)
