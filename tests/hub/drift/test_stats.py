"""The drift tests' tail probabilities equal scipy's to 1e-9 (the exact sum where it is off)."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from scipy import special
from scipy import stats as sp

from hub.drift import stats

RTOL = 1e-9


def close(ours: float, theirs: float) -> bool:
    """Equal to 1e-9 relative, or both below 1e-300 (underflow on either side)."""
    return abs(ours - theirs) <= RTOL * max(abs(theirs), 1e-300) or max(ours, theirs) < 1e-300


def exact_binom_sf(k: int, n: int, p: float) -> float:
    """``P(X >= k)`` as an exact rational sum (``p`` is a binary fraction), then rounded."""
    a, d = p.as_integer_ratio()
    total = sum(math.comb(n, i) * a**i * (d - a) ** (n - i) for i in range(max(k, 0), n + 1))
    return float(Fraction(total, d**n))


@pytest.mark.parametrize(("k", "n"), [(347, 370), (350, 373), (351, 374), (354, 378)])
def test_binom_sf_equals_the_exact_sum_in_the_far_tail(k: int, n: int) -> None:
    assert stats.binom_sf(k, n, 0.125) == pytest.approx(exact_binom_sf(k, n, 0.125), rel=1e-12)


@pytest.mark.parametrize("df", [1, 2, 3, 4, 9, 10, 19, 21, 100, 101, 511])
def test_chi2_sf_equals_scipy_over_the_whole_range(df: int) -> None:
    x = np.concatenate([[0.0, 1e-12, 1e-3], np.geomspace(0.01, 50 * df + 200, 400)])
    ours = stats.chi2_sf(x, df)
    theirs = special.chdtrc(df, x)
    for a, b in zip(ours, theirs, strict=True):
        assert close(float(a), float(b)), (df, a, b)


def test_chi2_isf_inverts_the_tail() -> None:
    for df in (1, 2, 9, 21, 200):
        assert stats.chi2_isf(0.001, df) == pytest.approx(sp.chi2.isf(0.001, df), rel=1e-9)


def test_kolmogorov_sf_equals_scipy_on_both_series() -> None:
    lam = np.concatenate([[0.0, 0.05], np.linspace(0.1, 4.0, 600)])
    ours = stats.kolmogorov_sf(lam)
    theirs = special.kolmogorov(lam)
    for a, b in zip(ours, theirs, strict=True):
        assert close(float(a), float(b)) or abs(a - b) < 1e-15, (a, b)


@settings(max_examples=300, deadline=None)
@given(
    n=st.integers(1, 20_000),
    p=st.floats(1e-5, 1 - 1e-5),
    where=st.floats(0.0, 1.0),
)
def test_binom_sf_equals_scipy(n: int, p: float, where: float) -> None:
    """Below 1e-100 scipy is no reference (binom.sf(353, 378, 0.125) is 1% off the exact
    4.58945324237e-284, ours within 1e-12): there the exact sum is, where it has few terms."""
    k = round(where * n)
    theirs = float(sp.binom.sf(k - 1, n, p))
    if theirs < 1e-100:
        assume(n - k <= 100)
        theirs = exact_binom_sf(k, n, p)
    assert close(stats.binom_sf(k, n, p), theirs)


def exact_out_of_range_sf(k: int, n: int, m: int) -> Fraction:
    """``P(K >= k)`` for ``K ~ BetaBinomial(n, 2, m - 1)`` in exact rationals: pmf(0) is
    ``B(2, n+m-1) / B(2, m-1)`` and each next term follows by the pmf's ratio."""
    pmf = Fraction((m - 1) * m, (n + m - 1) * (n + m))
    below = Fraction(0)
    for j in range(k):
        below += pmf
        pmf *= Fraction((n - j) * (j + 2), (j + 1) * (n - j - 1 + m - 1))
    return 1 - below


@settings(max_examples=200, deadline=None)
@given(n=st.integers(1, 3000), m=st.integers(2, 100_000), where=st.floats(0.0, 1.0))
def test_betabinom_sf_equals_exact_rationals(n: int, m: int, where: float) -> None:
    # the out-of-range null: BetaBinomial(n, 2, m - 1), k spread from 0 to a few means
    k = round(where * min(n, 12 * n / (m + 1) + 5))
    assert close(stats.betabinom_sf(k, n, 2.0, m - 1.0), float(exact_out_of_range_sf(k, n, m)))


@pytest.mark.parametrize(
    ("k", "n", "m"), [(3, 100_000, 5000), (90, 100_000, 5000), (1, 10**6, 10**5)]
)
def test_betabinom_sf_agrees_with_scipy_on_large_windows(k: int, n: int, m: int) -> None:
    # scipy's betabinom goes through betaln and is good to about 1e-9 relative here
    theirs = float(sp.betabinom.sf(k - 1, n, 2, m - 1))
    assert stats.betabinom_sf(k, n, 2.0, m - 1.0) == pytest.approx(theirs, rel=1e-8)


def test_binom_tails_at_the_edges() -> None:
    assert stats.binom_sf(0, 10, 0.3) == 1.0
    assert stats.binom_sf(11, 10, 0.3) == 0.0
    assert stats.binom_sf(1, 10, 0.0) == 0.0
    assert stats.binom_sf(10, 10, 1.0) == 1.0
    assert close(stats.binom_sf(1000, 1000, 0.01), float(sp.binom.sf(999, 1000, 0.01)))


def test_norm_cdf_equals_scipy() -> None:
    for z in (-8.0, -3.1, -1.0, 0.0, 0.5, 2.0, 6.0):
        assert close(stats.norm_cdf(z), float(sp.norm.cdf(z)))
