"""Anytime-valid tests, as plain numpy functions: a gate may look at every tick.

A fixed-horizon test re-checked at every tick false-alarms far above its nominal level
(a z-test checked 100 times: about 37 % at a nominal 5 %). The two tests here keep their
level however often they are evaluated and whenever evaluation stops, by Ville's
inequality: a nonnegative supermartingale that starts at 1 exceeds ``1/alpha`` with
probability at most ``alpha``, ever.

- :func:`normal_mixture_radius`: the radius of the normal-mixture confidence sequence
  (Robbins 1970), dual to the mixture SPRT of Johari, Pekelis & Walsh ("Always valid
  inference", 2017): the mSPRT rejects ``theta0`` exactly when ``theta0`` lies outside
  ``estimate ± radius``. For an estimate that is (asymptotically) normal with variance
  ``v``, mixing over effects ~ N(0, tau²); ``tau`` is set to the effect a gate guards.
- :func:`log_evidence_above` / :func:`log_evidence_below`: Bernoulli likelihood ratios
  mixed over a grid of alternatives on one side of the null, against a one-sided
  composite null. Each ratio is a supermartingale under every rate on the null's side,
  so their average is too; exact for small counts, where a normal approximation is not.
- :func:`stratified_difference`: canary minus control means, weighted to the canaries'
  mix over strata, with its variance; the input to the normal mixture.

What this module does not do: decide pass or fail (hub/rollouts/gates.py does), or know
what the numbers mean.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

GRID = 64
"""Alternatives mixed over by the Bernoulli tests (a uniform grid on the alternative side)."""

_STEPS = (np.arange(GRID, dtype=np.float64) + 0.5) / GRID


def normal_mixture_radius(variance: float, tau: float, alpha: float) -> float:
    """Half-width of the two-sided (1 - alpha) normal-mixture confidence sequence.

    ``variance`` is the estimate's variance now, ``tau`` the mixing scale (same units as
    the estimate). Solving ``mSPRT statistic < 1/alpha`` for the distance gives
    ``sqrt(v (v + tau²) / tau² · (2 ln(1/alpha) + ln((v + tau²) / v)))``.
    """
    tau2 = tau * tau
    v = max(variance, tau2 * 1e-18, 1e-300)
    return math.sqrt(v * (v + tau2) / tau2 * (2.0 * math.log(1.0 / alpha) + math.log1p(tau2 / v)))


def log_evidence_above(successes: int, trials: int, p0: float) -> float:
    """Log e-value against "the rate is at most ``p0``", from ``successes`` of ``trials``.

    Reject (evidence that the rate exceeds ``p0``) when it reaches ``ln(1/alpha)``.
    """
    _check_counts(successes, trials)
    if p0 <= 0.0:
        return math.inf if successes > 0 else 0.0
    q = p0 + (1.0 - p0) * _STEPS
    ratios = (
        successes * (np.log(q) - math.log(p0))
        + (trials - successes) * np.log1p(-q)
        - (trials - successes) * math.log1p(-p0)
    )
    return _log_mean_exp(ratios)


def log_evidence_below(successes: int, trials: int, p1: float) -> float:
    """Log e-value against "the rate is at least ``p1``", from ``successes`` of ``trials``.

    Reject (evidence that the rate is below ``p1``) when it reaches ``ln(1/alpha)``.
    """
    _check_counts(successes, trials)
    if p1 >= 1.0:
        return math.inf if successes < trials else 0.0
    q = p1 * _STEPS
    ratios = (
        successes * (np.log(q) - math.log(p1))
        + (trials - successes) * np.log1p(-q)
        - (trials - successes) * math.log1p(-p1)
    )
    return _log_mean_exp(ratios)


@dataclass(frozen=True)
class Difference:
    """Canary minus control, over the strata both arms cover."""

    estimate: float
    variance: float
    canaries: int
    controls: int


def stratified_difference(
    canary: FloatArray,
    canary_strata: IntArray,
    control: FloatArray,
    control_strata: IntArray,
    *,
    variance_floor: float = 0.0,
) -> Difference | None:
    """The canaries' mean minus the control's, each stratum weighted by its share of the
    canaries (direct standardisation), so a control with another mix of, say, hardware
    revisions is compared as if it had the canaries' mix. Strata that lack either arm are
    left out; None when no stratum has both.

    Variance: within-stratum sample variances pooled per arm; both arms use the larger of
    the two (and ``variance_floor``), so a handful of canaries that happen to agree cannot
    shrink the interval below what the control's spread says devices vary by.
    """
    covered = np.intersect1d(canary_strata, control_strata)
    if covered.size == 0:
        return None
    in_x = np.isin(canary_strata, covered)
    in_y = np.isin(control_strata, covered)
    x, gx = canary[in_x], np.searchsorted(covered, canary_strata[in_x])
    y, gy = control[in_y], np.searchsorted(covered, control_strata[in_y])
    k = covered.size
    nx = np.bincount(gx, minlength=k).astype(np.float64)
    ny = np.bincount(gy, minlength=k).astype(np.float64)
    mx = np.bincount(gx, weights=x, minlength=k) / nx
    my = np.bincount(gy, weights=y, minlength=k) / ny
    weights = nx / x.size
    estimate = float(np.dot(weights, mx - my))
    spread = max(
        _pooled_variance(x - mx[gx], x.size - k),
        _pooled_variance(y - my[gy], y.size - k),
        variance_floor,
    )
    variance = spread * (1.0 / x.size + float(np.sum(weights * weights / ny)))
    return Difference(estimate, variance, int(x.size), int(y.size))


def _pooled_variance(residuals: FloatArray, dof: int) -> float:
    if dof < 1:
        return 0.0
    return float(np.dot(residuals, residuals)) / dof


def _log_mean_exp(values: FloatArray) -> float:
    top = float(np.max(values))
    if not math.isfinite(top):
        return top
    return top + math.log(float(np.mean(np.exp(values - top))))


def _check_counts(successes: int, trials: int) -> None:
    if not 0 <= successes <= trials:
        raise ValueError(f"need 0 <= successes ({successes}) <= trials ({trials})")
