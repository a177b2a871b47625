"""Exact mode: statistics merge in any order and solve to the central ridge answer."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hub.rounds.exact import LinearStats, combine, local_stats, merge, solve_ridge, targets
from tests.hub.rounds.helpers import make_head

HEAD = make_head()


def device_rows(seed: int, rows: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(loc=rng.normal(size=5), size=(rows, 5))
    return x, targets(HEAD, rng.integers(0, 3, size=rows))


def central_ridge(x: np.ndarray, y: np.ndarray, l2: float, anchor: tuple) -> np.ndarray:
    """The reference: least squares on the augmented system, with the penalty as rows."""
    n, d = x.shape
    design = np.hstack([x, np.ones((n, 1))])
    penalty = np.sqrt(n * l2) * np.eye(d + 1)[:d]  # no row for the bias
    lhs = np.vstack([design, penalty])
    rhs = np.vstack([y, np.sqrt(n * l2) * anchor[0]])
    solution: np.ndarray = np.linalg.lstsq(lhs, rhs, rcond=None)[0]
    return solution


def test_merged_statistics_solve_to_the_central_ridge_head() -> None:
    devices = {f"d{i}": device_rows(i, rows=20 + 7 * i) for i in range(8)}
    stats = combine({k: local_stats(x, y) for k, (x, y) in devices.items()})
    x = np.vstack([x for x, _ in devices.values()])
    y = np.vstack([y for _, y in devices.values()])
    rng = np.random.default_rng(99)
    anchor = (rng.normal(size=(5, 3)), rng.normal(size=3))
    weight, bias = solve_ridge(stats, l2=0.05, anchor=anchor)
    expected = central_ridge(x, y, 0.05, anchor)
    np.testing.assert_allclose(weight, expected[:5], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(bias, expected[5], rtol=1e-5, atol=1e-6)
    assert stats.count == len(x)


def test_the_solution_zeroes_the_trainers_gradient() -> None:
    x, y = device_rows(3, rows=200)
    anchor = (np.ones((5, 3)), np.zeros(3))
    weight, bias = solve_ridge(local_stats(x, y), l2=0.1, anchor=anchor)
    residual = x @ weight + bias - y
    grad_w = x.T @ residual / len(x) + 0.1 * (weight - anchor[0])
    grad_b = residual.mean(axis=0)
    assert np.abs(grad_w).max() < 1e-5
    assert np.abs(grad_b).max() < 1e-5


@settings(max_examples=40, deadline=None)
@given(st.integers(2, 9), st.randoms(use_true_random=False))
def test_combine_is_bit_identical_for_any_arrival_order(n: int, shuffle) -> None:
    per_device = {f"d{i}": local_stats(*device_rows(i, rows=5 + i)) for i in range(n)}
    arrival = list(per_device.items())
    shuffle.shuffle(arrival)
    a, b = combine(per_device), combine(dict(arrival))
    assert np.array_equal(a.xtx, b.xtx)
    assert np.array_equal(a.xty, b.xty)
    assert np.array_equal(solve_ridge(a, l2=0.01)[0], solve_ridge(b, l2=0.01)[0])


@settings(max_examples=40, deadline=None)
@given(st.integers(2, 9), st.randoms(use_true_random=False))
def test_running_merges_in_any_order_and_grouping_agree_to_rounding(n: int, rnd) -> None:
    parts = [local_stats(*device_rows(i, rows=5 + i)) for i in range(n)]
    rnd.shuffle(parts)
    while len(parts) > 1:  # merge random neighbours: any tree of merges
        i = rnd.randrange(len(parts) - 1)
        parts[i : i + 2] = [merge(parts[i], parts[i + 1])]
    reference = combine({f"d{i}": local_stats(*device_rows(i, rows=5 + i)) for i in range(n)})
    np.testing.assert_allclose(parts[0].xtx, reference.xtx, rtol=1e-12, atol=1e-9)
    np.testing.assert_allclose(parts[0].xty, reference.xty, rtol=1e-12, atol=1e-9)
    assert parts[0].count == reference.count


def test_the_bias_row_reveals_the_label_histogram() -> None:
    """What exact mode gives away: B's last row is the device's exact class counts."""
    labels = np.array([0, 0, 2, 2, 2, 1])
    stats = local_stats(np.zeros((6, 5)), targets(HEAD, labels))
    assert stats.xty[-1].tolist() == [2.0, 1.0, 3.0]


def test_one_rows_statistics_give_the_row_away() -> None:
    row = np.array([[1.5, -2.0, 0.5, 3.0, 1.0]])
    stats = local_stats(row, targets(HEAD, np.array([1])))
    np.testing.assert_array_equal(stats.xtx[-1, :5], row[0])
    assert (
        LinearStats.mismatch(stats, HEAD, min_rows=32)
        == "1 rows, fewer than the 32 exact mode requires"
    )


@pytest.mark.parametrize(
    ("change", "why"),
    [
        (lambda s: LinearStats(s.xtx[1:, 1:], s.xty[1:], s.count), "for a head of 5"),
        (lambda s: replace(s, xty=np.full_like(s.xty, np.nan)), "NaN"),
        (lambda s: replace(s, xtx=s.xtx + np.triu(np.ones_like(s.xtx), 1)), "symmetric"),
        (lambda s: replace(s, count=s.count * 1000), "the claim is"),
        (lambda s: replace(s, xtx=s.xtx - np.diag([1e6, 0, 0, 0, 0, 0])), "negative"),
    ],
)
def test_statistics_that_no_device_could_send_are_refused(change, why: str) -> None:
    stats = change(local_stats(*device_rows(1, rows=40)))
    assert why in (stats.mismatch(HEAD) or "")


def test_honest_statistics_pass_the_check() -> None:
    assert local_stats(*device_rows(1, rows=40)).mismatch(HEAD, min_rows=32) is None


def test_targets_follow_the_head() -> None:
    np.testing.assert_array_equal(targets(make_head(n_outputs=1), np.array([1, 0])), [[1.0], [0.0]])
    np.testing.assert_array_equal(targets(HEAD, np.array([2])), [[0.0, 0.0, 1.0]])
    regression = make_head("regression", n_outputs=2)
    np.testing.assert_array_equal(targets(regression, np.array([[1, 2]])), [[1.0, 2.0]])


def test_nothing_to_solve_is_refused() -> None:
    with pytest.raises(ValueError, match="row"):
        solve_ridge(LinearStats.empty(5, 3), l2=0.1)
    with pytest.raises(ValueError, match="no statistics"):
        combine({})
