"""Tail probabilities the drift tests need, in numpy and the standard library.

The hub depends on numpy only (scipy stays a test and bench dependency), and the tests
check every function here against scipy to 1e-9, so these are exact formulas, not
approximations:

- :func:`chi2_sf` for integer degrees of freedom, as the finite sums of the regularised
  upper incomplete gamma function (even ``df``: a Poisson tail; odd ``df``: ``erfc`` plus
  a half-integer series). The drift tests only ever have integer ``df`` (cells - 1).
- :func:`kolmogorov_sf`, the limiting Kolmogorov distribution, by its two theta series
  (the alternating one for large arguments, Jacobi's transform for small ones), each
  converging to double precision within a dozen terms.
- :func:`binom_sf` and :func:`betabinom_sf`, upper tails ``P(X >= k)`` summed in log space
  from the pmf at ``k`` by the pmf's term ratio, in chunks, stopping once past the mode
  the terms no longer change the sum; when ``k`` is below the mean the shorter lower tail
  is summed instead and subtracted from one.
- :func:`norm_cdf` through ``math.erfc``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import lru_cache

import numpy as np
import numpy.typing as npt

Floats = npt.NDArray[np.float64]
_CHUNK = 2048
_NEGLIGIBLE = 1e-18  # a chunk adding less than this share of the sum ends the series
_KOLMOGOROV_SWITCH = 1.18  # below: Jacobi's series for the cdf; above: the alternating sf
_KOLMOGOROV_TERMS = 12
_ERFC = np.vectorize(math.erfc, otypes=[np.float64])


def chi2_sf(x: npt.ArrayLike, df: int) -> Floats:
    """``P(X >= x)`` for ``X ~ χ²(df)``, elementwise over ``x``; ``df`` a positive integer."""
    if df < 1:
        raise ValueError(f"df must be a positive integer, got {df}")
    values = np.asarray(x, dtype=np.float64)
    result = np.ones(values.shape)
    positive = values > 0.0
    if not positive.any():
        return result
    y = values[positive] / 2.0
    log_y = np.log(y)
    if df % 2 == 0:
        total = np.zeros(y.shape)
        for j in range(df // 2):  # e^-y * sum_{j<k} y^j / j!
            total += np.exp(j * log_y - y - math.lgamma(j + 1.0))
    else:
        total = _ERFC(np.sqrt(y))
        for j in range(df // 2):  # + e^-y * sum_{j<k} y^(j+1/2) / Gamma(j + 3/2)
            total += np.exp((j + 0.5) * log_y - y - math.lgamma(j + 1.5))
    result[positive] = np.minimum(total, 1.0)
    return result


@lru_cache(maxsize=4096)
def chi2_isf(p: float, df: int) -> float:
    """The ``x`` with ``chi2_sf(x, df) == p`` (bisection; 1e-12 relative), for display."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"p must be in (0, 1), got {p}")
    low, high = 0.0, float(df)
    while float(chi2_sf(high, df)) > p:
        low, high = high, 2.0 * high
    while high - low > 1e-12 * high:
        mid = (low + high) / 2.0
        if float(chi2_sf(mid, df)) > p:
            low = mid
        else:
            high = mid
    return (low + high) / 2.0


def kolmogorov_sf(lam: npt.ArrayLike) -> Floats:
    """``P(K >= lam)`` for the limiting Kolmogorov distribution (``sqrt(n) * D``)."""
    values = np.asarray(lam, dtype=np.float64)
    result = np.ones(values.shape)
    small = (values > 0.0) & (values < _KOLMOGOROV_SWITCH)
    large = values >= _KOLMOGOROV_SWITCH
    if small.any():
        v = values[small]
        cdf = np.zeros(v.shape)
        for k in range(1, _KOLMOGOROV_TERMS + 1):
            cdf += np.exp(-((2 * k - 1) ** 2) * math.pi**2 / (8.0 * v * v))
        result[small] = 1.0 - math.sqrt(2.0 * math.pi) / v * cdf
    if large.any():
        v = values[large]
        sf = np.zeros(v.shape)
        for k in range(1, _KOLMOGOROV_TERMS + 1):
            sf += (-1.0) ** (k - 1) * np.exp(-2.0 * k * k * v * v)
        result[large] = 2.0 * sf
    return np.clip(result, 0.0, 1.0)


def norm_cdf(z: float) -> float:
    """Standard normal ``P(Z <= z)``."""
    return 0.5 * math.erfc(-z / math.sqrt(2.0))


def binom_sf(k: int, n: int, p: float) -> float:
    """``P(X >= k)`` for ``X ~ Binomial(n, p)``."""
    if k <= 0:
        return 1.0
    if k > n or p <= 0.0:
        return 0.0
    if p >= 1.0:
        return 1.0
    log_p, log_q = math.log(p), math.log1p(-p)

    def log_pmf(j: int) -> float:
        return _log_choose(n, j) + j * log_p + (n - j) * log_q

    def log_ratio(j: Floats) -> Floats:  # log pmf(j+1) - log pmf(j)
        return np.log(n - j) - np.log(j + 1.0) + log_p - log_q

    return _upper_tail(k, n, n * p, log_pmf, log_ratio)


def betabinom_sf(k: int, n: int, a: float, b: float) -> float:
    """``P(X >= k)`` for ``X ~ BetaBinomial(n, a, b)``."""
    if k <= 0:
        return 1.0
    if k > n:
        return 0.0
    log_beta_ab = math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)

    def log_pmf(j: int) -> float:
        return (
            _log_choose(n, j)
            + math.lgamma(j + a)
            + math.lgamma(n - j + b)
            - math.lgamma(n + a + b)
            - log_beta_ab
        )

    def log_ratio(j: Floats) -> Floats:
        return np.log(n - j) - np.log(j + 1.0) + np.log(j + a) - np.log(n - j - 1.0 + b)

    return _upper_tail(k, n, n * a / (a + b), log_pmf, log_ratio)


def _log_choose(n: int, j: int) -> float:
    return math.lgamma(n + 1.0) - math.lgamma(j + 1.0) - math.lgamma(n - j + 1.0)


def _upper_tail(
    k: int,
    n: int,
    mean: float,
    log_pmf: Callable[[int], float],
    log_ratio: Callable[[Floats], Floats],
) -> float:
    """``sum_{j>=k} pmf(j)``, or ``1 - sum_{j<k} pmf(j)`` when ``k`` is below the mean.

    Terms come from ``log pmf(start)`` plus cumulative log ratios; the sum is kept as a
    log-sum-exp and stops when a whole chunk past the mode adds a negligible share.
    """
    upper = k >= mean
    start = k if upper else k - 1
    last = n if upper else 0
    anchor = log_pmf(start)
    if anchor == -math.inf:
        return 0.0 if upper else 1.0
    log_total = anchor
    position = start
    while position != last:
        if upper:
            j = np.arange(position, min(position + _CHUNK, last), dtype=np.float64)
            steps = np.cumsum(log_ratio(j))  # log pmf(j+1) - log pmf(start)
            position = int(j[-1]) + 1
        else:
            j = np.arange(position - 1, max(position - 1 - _CHUNK, last - 1), -1, dtype=np.float64)
            steps = np.cumsum(-log_ratio(j))  # log pmf(j) - log pmf(start), j going down
            position = int(j[-1])
        terms = anchor + steps
        top = float(terms.max())
        chunk = top + math.log(float(np.exp(terms - top).sum()))
        peak = max(chunk, log_total)
        log_total = peak + math.log(math.exp(log_total - peak) + math.exp(chunk - peak))
        anchor = float(terms[-1])
        if chunk - log_total < math.log(_NEGLIGIBLE) and terms[-1] <= terms[0]:
            break
    total = math.exp(log_total)
    return min(total, 1.0) if upper else max(0.0, 1.0 - total)


__all__ = [
    "betabinom_sf",
    "binom_sf",
    "chi2_isf",
    "chi2_sf",
    "kolmogorov_sf",
    "norm_cdf",
]
