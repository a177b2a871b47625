"""Each aggregation rule against a straightforward reference computation (loops, float64)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hub.rounds import strategies
from hub.rounds.layout import Layout
from hub.rounds.strategies import (
    WeightedMean,
    coordinate_median,
    krum,
    krum_scores,
    krum_select,
    multikrum,
    server_momentum,
    trimmed_mean,
    weighted_mean,
)

LAYOUT = Layout.from_shapes({"head.bias": (3,), "head.weight": (4, 3)})


def random_results(n: int, seed: int, layout: Layout = LAYOUT) -> list[tuple[dict, float]]:
    rng = np.random.default_rng(seed)
    return [
        (
            {name: rng.normal(size=shape).astype(np.float32) for name, shape in layout.shapes},
            float(rng.integers(1, 100)),
        )
        for _ in range(n)
    ]


def flat(tensors: dict) -> np.ndarray:
    return np.concatenate([np.asarray(tensors[name], np.float64).ravel() for name in LAYOUT.names])


def reference_weighted_mean(results) -> np.ndarray:
    total = sum(w for _, w in results)
    acc = np.zeros(LAYOUT.size)
    for delta, w in results:
        acc += w * flat(delta)
    mean: np.ndarray = acc / total
    return mean


def reference_median(results) -> np.ndarray:
    vectors = [flat(d) for d, _ in results]
    out = []
    for j in range(LAYOUT.size):
        column = sorted(v[j] for v in vectors)
        n = len(column)
        mid = n // 2
        out.append(column[mid] if n % 2 else (column[mid - 1] + column[mid]) / 2)
    return np.array(out)


def reference_trimmed_mean(results, fraction: float) -> np.ndarray:
    vectors = [flat(d) for d, _ in results]
    n = len(vectors)
    cut = int(fraction * n)
    out = []
    for j in range(LAYOUT.size):
        column = sorted(v[j] for v in vectors)[cut : n - cut]
        out.append(sum(column) / len(column))
    return np.array(out)


def reference_krum_scores(results, f: int) -> list[float]:
    """Flower's aggregate_krum scoring, restated with a double loop."""
    vectors = [flat(d) for d, _ in results]
    n = len(vectors)
    closest = max(1, n - f - 2)
    scores = []
    for i in range(n):
        distances = sorted(
            float(np.sum((vectors[i] - vectors[j]) ** 2)) for j in range(n) if j != i
        )
        scores.append(sum(distances[:closest]))
    return scores


def test_weighted_mean_matches_the_reference() -> None:
    results = random_results(9, seed=1)
    np.testing.assert_allclose(flat(weighted_mean(results)), reference_weighted_mean(results), 1e-6)


def test_streaming_mean_equals_the_batch_mean_and_holds_one_accumulator() -> None:
    results = random_results(25, seed=2)
    mean = WeightedMean(LAYOUT)
    for delta, w in results:
        mean.add(delta, w)
    assert mean.count == 25
    np.testing.assert_allclose(flat(mean.result()), flat(weighted_mean(results)), rtol=1e-7)


def test_streaming_mean_scales_each_delta_before_weighting() -> None:
    results = random_results(5, seed=3)
    scales = [1.0, 0.5, 0.25, 1.0, 0.1]
    mean = WeightedMean(LAYOUT)
    for (delta, w), s in zip(results, scales, strict=True):
        mean.add(delta, w, s)
    total = sum(w for _, w in results)
    expected = sum(w * s * flat(d) for (d, w), s in zip(results, scales, strict=True)) / total
    np.testing.assert_allclose(flat(mean.result()), expected, rtol=1e-6)


def test_an_empty_or_weightless_mean_is_zero() -> None:
    mean = WeightedMean(LAYOUT)
    assert all(not x.any() for x in mean.result().values())
    mean.add(random_results(1, seed=4)[0][0], 0.0)
    assert all(not x.any() for x in mean.result().values())


@pytest.mark.parametrize("weight", [-1.0, math.inf, math.nan])
def test_streaming_mean_refuses_a_bad_weight(weight: float) -> None:
    with pytest.raises(ValueError, match="weight"):
        WeightedMean(LAYOUT).add(random_results(1, seed=5)[0][0], weight)


def test_streaming_mean_refuses_a_delta_of_another_layout() -> None:
    delta = random_results(1, seed=6)[0][0]
    delta["head.bias"] = np.zeros(4, np.float32)
    with pytest.raises(ValueError, match=r"head\.bias"):
        WeightedMean(LAYOUT).add(delta, 1.0)


@pytest.mark.parametrize("n", [1, 2, 7, 10])
def test_coordinate_median_matches_the_reference(n: int) -> None:
    results = random_results(n, seed=10 + n)
    np.testing.assert_allclose(flat(coordinate_median(results)), reference_median(results), 1e-6)


@pytest.mark.parametrize(("n", "fraction"), [(10, 0.2), (7, 0.1), (5, 0.0), (11, 0.45)])
def test_trimmed_mean_matches_the_reference(n: int, fraction: float) -> None:
    results = random_results(n, seed=20 + n)
    np.testing.assert_allclose(
        flat(trimmed_mean(results, fraction)), reference_trimmed_mean(results, fraction), 1e-6
    )


def test_trimmed_mean_refuses_to_trim_everything() -> None:
    with pytest.raises(ValueError, match="trim_fraction"):
        trimmed_mean(random_results(4, seed=7), 0.5)


def test_rank_based_rules_work_in_column_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    results = random_results(6, seed=8)
    whole = flat(coordinate_median(results)), flat(trimmed_mean(results, 0.2))
    monkeypatch.setattr(strategies, "BLOCK_BYTES", 8 * 6 * 2)  # two columns per block
    blocked = flat(coordinate_median(results)), flat(trimmed_mean(results, 0.2))
    np.testing.assert_array_equal(whole[0], blocked[0])
    np.testing.assert_array_equal(whole[1], blocked[1])


@pytest.mark.parametrize(("n", "f"), [(10, 2), (7, 0), (4, 3), (2, 0)])
def test_krum_scores_match_flowers_double_loop(n: int, f: int) -> None:
    results = random_results(n, seed=30 + n)
    np.testing.assert_allclose(krum_scores(results, f), reference_krum_scores(results, f), 1e-9)


def test_krum_picks_the_most_central_delta_and_multikrum_averages_the_kept() -> None:
    results = random_results(10, seed=40)
    scores = reference_krum_scores(results, 2)
    order = sorted(range(10), key=lambda i: scores[i])
    np.testing.assert_array_equal(flat(krum(results, 2)), flat(results[order[0]][0]))
    assert krum_select(results, 2, keep=8) == order[:8]
    expected = reference_weighted_mean([results[i] for i in order[:8]])
    np.testing.assert_allclose(flat(multikrum(results, 2)), expected, 1e-6)


def test_krum_leaves_out_far_away_deltas() -> None:
    results = random_results(10, seed=41)
    for delta, _ in results[:2]:
        for x in delta.values():
            x *= 50
    assert not {0, 1} & set(krum_select(results, 2, keep=8))


def test_server_momentum_matches_flowers_fedavgm() -> None:
    rng = np.random.default_rng(50)
    updates = [{"w": rng.normal(size=4).astype(np.float32)} for _ in range(4)]
    velocity = None
    reference_velocity = np.zeros(4)
    for i, update in enumerate(updates):
        step, velocity = server_momentum(update, velocity, momentum=0.9, server_lr=0.5)
        pseudo_gradient = -update["w"].astype(np.float64)  # Flower: initial - fedavg result
        reference_velocity = pseudo_gradient + (0.9 * reference_velocity if i else 0.0)
        np.testing.assert_allclose(step["w"], -0.5 * reference_velocity, rtol=1e-6)


@settings(max_examples=50, deadline=None)
@given(
    st.integers(1, 12),
    st.integers(0, 2**32 - 1),
    st.randoms(use_true_random=False),
)
def test_every_rule_ignores_the_order_of_the_deltas(n: int, seed: int, shuffle) -> None:
    results = random_results(n, seed)
    shuffled = list(results)
    shuffle.shuffle(shuffled)
    for rule in (weighted_mean, coordinate_median, lambda r: trimmed_mean(r, 0.2)):
        np.testing.assert_allclose(flat(rule(results)), flat(rule(shuffled)), rtol=1e-6, atol=1e-7)


@settings(max_examples=50, deadline=None)
@given(st.integers(1, 12), st.integers(0, 2**32 - 1))
def test_robust_rules_stay_within_the_coordinates_range(n: int, seed: int) -> None:
    results = random_results(n, seed)
    vectors = np.array([flat(d) for d, _ in results])
    low, high = vectors.min(axis=0) - 1e-6, vectors.max(axis=0) + 1e-6
    for rule in (weighted_mean, coordinate_median, lambda r: trimmed_mean(r, 0.3)):
        out = flat(rule(results))
        assert np.all((low <= out) & (out <= high))
