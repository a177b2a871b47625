"""The anytime-valid tests, against independent computations and by simulation."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from hub.rollouts.sequential import (
    GRID,
    log_evidence_above,
    log_evidence_below,
    normal_mixture_radius,
    stratified_difference,
)


def msprt_statistic(d: float, v: float, tau: float) -> float:
    """Johari et al.'s mixture likelihood ratio for a normal estimate d with variance v."""
    return math.sqrt(v / (v + tau**2)) * math.exp(tau**2 * d**2 / (2 * v * (v + tau**2)))


@given(st.floats(1e-6, 10.0), st.floats(1e-3, 3.0), st.floats(0.001, 0.5), st.floats(-1.0, 1.0))
def test_radius_is_where_the_msprt_statistic_reaches_one_over_alpha(
    v: float, tau: float, alpha: float, offset: float
) -> None:
    r = normal_mixture_radius(v, tau, alpha)
    assert msprt_statistic(r, v, tau) == pytest.approx(1 / alpha, rel=1e-6)
    inside = r * (1 - 0.01 * abs(offset))
    assert msprt_statistic(inside, v, tau) <= 1 / alpha * (1 + 1e-9)


def test_radius_survives_zero_variance() -> None:
    assert 0.0 <= normal_mixture_radius(0.0, 0.03, 0.05) < 1e-6


def binomial_pmf(x: int, n: int, p: float) -> float:
    return math.comb(n, x) * p**x * (1 - p) ** (n - x)


def grid_mixture_reference(x: int, n: int, low: float, high: float, null: float) -> float:
    """The same grid mixture, written as a plain average of binomial likelihood ratios."""
    grid = [low + (high - low) * (j + 0.5) / GRID for j in range(GRID)]
    return sum(binomial_pmf(x, n, q) / binomial_pmf(x, n, null) for q in grid) / GRID


@given(st.integers(0, 60), st.integers(0, 60), st.floats(0.01, 0.9))
def test_bernoulli_evidence_matches_a_plain_average_of_likelihood_ratios(
    a: int, b: int, p: float
) -> None:
    x, n = min(a, b), max(a, b)
    above = grid_mixture_reference(x, n, p, 1.0, p)
    below = grid_mixture_reference(x, n, 0.0, p, p)
    assert math.exp(log_evidence_above(x, n, p)) == pytest.approx(above, rel=1e-6)
    assert math.exp(log_evidence_below(x, n, p)) == pytest.approx(below, rel=1e-6)


@given(st.integers(0, 50), st.integers(1, 50), st.floats(0.0, 0.95))
def test_evidence_of_excess_grows_with_failures(x: int, extra: int, p: float) -> None:
    n = x + extra
    assert log_evidence_above(x + 1, n, p) >= log_evidence_above(x, n, p)
    assert log_evidence_below(x + 1, n, max(p, 0.05)) <= log_evidence_below(x, n, max(p, 0.05))


def test_any_failure_is_proof_against_a_zero_tolerance() -> None:
    assert log_evidence_above(1, 1, 0.0) == math.inf
    assert log_evidence_above(0, 100, 0.0) == 0.0


def test_bernoulli_test_keeps_its_level_when_checked_after_every_device() -> None:
    rng = np.random.default_rng(0)
    alpha, p0, paths, length = 0.05, 0.1, 2000, 300
    outcomes = rng.random((paths, length)) < p0  # the worst case of the null: exactly p0
    failures = np.cumsum(outcomes, axis=1)
    bar = math.log(1 / alpha)
    crossed = sum(
        any(log_evidence_above(int(failures[i, t]), t + 1, p0) >= bar for t in range(0, length, 5))
        for i in range(paths)
    )
    print(f"\nBernoulli mixture SPRT checked 60 times: false alarms {crossed / paths:.2%}")
    assert crossed / paths <= alpha


def test_normal_mixture_keeps_its_level_at_every_look_where_a_z_test_does_not() -> None:
    """Checked after every batch: 100 looks, batches of 20 per arm, sigma 1."""
    rng = np.random.default_rng(1)
    paths, looks, batch, alpha = 4000, 100, 20, 0.05
    diff = (rng.normal(size=(paths, looks, batch)) - rng.normal(size=(paths, looks, batch))).mean(2)
    n = batch * np.arange(1, looks + 1)
    estimate = np.cumsum(diff, axis=1) / np.arange(1, looks + 1)
    variance = 2.0 / n
    radius = np.array([normal_mixture_radius(v, 0.2, alpha) for v in variance])
    mixture = np.mean(np.any(np.abs(estimate) > radius, axis=1))
    naive = np.mean(np.any(np.abs(estimate) > 1.96 * np.sqrt(variance), axis=1))
    print(f"\n100 looks under the null: z-test {naive:.1%}, normal mixture {mixture:.1%}")
    assert mixture <= alpha
    assert naive > 0.25


def test_stratified_difference_weights_control_to_the_canaries_mix() -> None:
    # two hardware revisions: rev a errs at 1 %, rev b at 10 %, on both versions
    canary = np.array([0.01] * 8 + [0.10] * 2)
    canary_strata = np.array([0] * 8 + [1] * 2)
    control = np.array([0.01] * 20 + [0.10] * 80)
    control_strata = np.array([0] * 20 + [1] * 80)
    pooled = canary.mean() - control.mean()
    diff = stratified_difference(canary, canary_strata, control, control_strata)
    assert diff is not None
    assert pooled == pytest.approx(-0.0540)  # the unstratified comparison flatters the canary
    assert diff.estimate == pytest.approx(0.0)
    assert (diff.canaries, diff.controls) == (10, 100)


def test_stratified_difference_matches_welch_with_one_stratum() -> None:
    rng = np.random.default_rng(2)
    x, y = rng.normal(1.0, 2.0, 12), rng.normal(0.0, 1.0, 40)
    diff = stratified_difference(x, np.zeros(12, np.int64), y, np.zeros(40, np.int64))
    assert diff is not None
    assert diff.estimate == pytest.approx(x.mean() - y.mean())
    spread = max(x.var(ddof=1), y.var(ddof=1))
    assert diff.variance == pytest.approx(spread / 12 + spread / 40)


def test_stratified_difference_leaves_out_strata_without_control() -> None:
    diff = stratified_difference(
        np.array([1.0, 2.0, 9.0]),
        np.array([0, 0, 5]),
        np.array([1.0, 2.0]),
        np.array([0, 0]),
    )
    assert diff is not None
    assert (diff.estimate, diff.canaries) == (0.0, 2)
    none = stratified_difference(np.array([1.0]), np.array([1]), np.array([1.0]), np.array([2]))
    assert none is None
