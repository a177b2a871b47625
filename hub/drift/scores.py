"""Drift scores that know their sample size, for every row of many count matrices at once.

For one row (a feature, or the predictions) with ``n`` finite values in the window and a
reference of ``m`` rows and proportions ``p`` over ``b`` bins. Out-of-range values are
folded into the end bins for the distribution scores, as registration folds them when it
computes ``p`` (:func:`hub.registry.profile.bin_proportions`), and counted on their own:

- **PSI** ``Σ (q̃ - p̃) ln(q̃ / p̃)`` with a pseudo-count of ½ per bin on both sides
  (``q̃ = (c + ½) / (n + b/2)``, ``p̃ = (m p + ½) / (m + b/2)``): finite with empty bins,
  and negligible once bins hold a few rows. Effect size, not evidence: with no drift it
  averages about ``(b - 1)(1/n + 1/m)``.
- **Jensen–Shannon distance**, base 2 (in ``[0, 1]``), on the raw proportions.
- **KS statistic from the binned CDFs**, ``D = max_i |Q_i - P_i|`` at the bin edges. The
  continuous KS statistic of the same rows lies in ``[D, D_upper]`` where
  ``D_upper = max_i max(Q_i - P_{i-1}, P_i - Q_{i-1})`` (within a bin each CDF rises by at
  most that bin's share), so the binning error is at most ``D_upper - D``, at most the
  largest bin share (about ``1/b`` for quantile bins). Its p-value uses the limiting
  Kolmogorov distribution at ``sqrt(nm/(n+m)) * D``; since ``D`` under-states the
  continuous statistic, that p-value is conservative. Class predictions have no order:
  no KS.
- **The distribution test**: Pearson's two-sample χ² of homogeneity between the window's
  counts and the reference's ``m p``, with ``df = cells - 1``. It is PSI's second-order
  form (``PSI ≈ X² (1/n + 1/m)``), and unlike PSI its no-drift distribution does not hinge
  on how empty bins are smoothed; the simulations in docs/drift.md show it calibrated at
  the 1% and 0.1% tails from 20-row windows up. Bins whose expected count
  ``min(n, m) p_i`` is below ``min_expected`` are pooled with their neighbours first
  (left to right), so rare classes do not inflate it. Its p-value is *the* p-value of the
  row, and ``psi_null`` shows PSI's no-drift 99.9th percentile for these counts
  (``χ²_{0.999}(b - 1) (1/n + 1/m)``) beside PSI: close to the simulated percentile
  from about 5 rows per bin, an over-statement below (the pseudo-counts shrink PSI).
- **Out-of-range rate** ``(underflow + overflow) / n``. The reference edges are the
  reference's minimum and maximum, so with no drift the out-of-range share of a
  continuous feature is ``Beta(2, m - 1)`` and the count ``BetaBinomial(n, 2, m - 1)``
  exactly; the p-value is its upper tail. (For class predictions, overflow is an argmax
  past the known classes and is tested like NaN, against ``nan_tolerance``.)
- **NaN rate** over all values; the p-value is the binomial upper tail at the policy's
  ``nan_tolerance`` (the reference itself holds no NaN).

"Not enough data" is a state of its own (:attr:`Scores.sufficient` false): fewer than
``min_rows`` finite values, or fewer than two cells left after pooling.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

from hub.drift import stats
from hub.drift.policy import DriftPolicy
from hub.drift.reference import Reference

Floats = npt.NDArray[np.float64]
Ints = npt.NDArray[np.int64]
Bools = npt.NDArray[np.bool_]


@dataclass(frozen=True)
class FeatureScore:
    """One row's scores in one window set (module docstring); ``None`` where undefined."""

    name: str
    state: Literal["scored", "insufficient"]
    n: int
    nan: int
    psi: float | None
    psi_null: float | None
    js: float | None
    ks: float | None
    ks_upper: float | None
    ks_p: float | None
    chi2: float | None
    df: int
    p: float | None
    out_of_range_rate: float
    out_of_range_p: float
    nan_rate: float
    nan_p: float


@dataclass(frozen=True, eq=False)
class Scores:
    """Scores as arrays shaped like the counts without their last axis (``[..., rows]``)."""

    n: Ints
    nan: Ints
    sufficient: Bools
    psi: Floats
    js: Floats
    ks: Floats
    ks_upper: Floats
    ks_p: Floats
    chi2: Floats
    df: Ints
    p: Floats
    out_of_range: Ints
    out_of_range_p: Floats
    nan_p: Floats
    psi_null: Floats

    def at(self, index: tuple[int, ...], reference: Reference) -> FeatureScore:
        """The score at ``index`` (leading indices, then the row) as plain values."""
        row = index[-1]
        n, nan = int(self.n[index]), int(self.nan[index])
        ok = bool(self.sufficient[index])
        classes = reference.kinds[row] == "classes"

        def value(array: Floats, scored_only: bool = True) -> float | None:
            if (scored_only and not ok) or not math.isfinite(float(array[index])):
                return None
            return float(array[index])

        return FeatureScore(
            name=reference.names[row],
            state="scored" if ok else "insufficient",
            n=n,
            nan=nan,
            psi=value(self.psi, scored_only=False) if n else None,
            psi_null=value(self.psi_null),
            js=value(self.js, scored_only=False) if n else None,
            ks=None if classes or not n else value(self.ks, scored_only=False),
            ks_upper=None if classes or not n else value(self.ks_upper, scored_only=False),
            ks_p=None if classes else value(self.ks_p),
            chi2=value(self.chi2),
            df=int(self.df[index]),
            p=value(self.p),
            out_of_range_rate=int(self.out_of_range[index]) / n if n else 0.0,
            out_of_range_p=float(self.out_of_range_p[index]),
            nan_rate=nan / (n + nan) if n + nan else 0.0,
            nan_p=float(self.nan_p[index]),
        )


def fold(counts: Ints, reference: Reference) -> Ints:
    """Bins only (``[..., rows, width]``), with underflow in the first bin and overflow in
    each row's last bin, as registration folds out-of-range reference values."""
    width = reference.width
    folded = counts[..., :width].copy()
    folded[..., 0] += counts[..., width]
    rows = np.arange(len(reference.names))
    folded[..., rows, reference.bins - 1] += counts[..., width + 1]
    return folded


def chi2_test(
    folded: Ints, reference: Reference, policy: DriftPolicy
) -> tuple[Floats, Ints, Floats, Bools]:
    """Pearson's two-sample χ² per row (module docstring): statistic, df, p, sufficient."""
    if folded.ndim == 2:  # one count matrix: give it a leading axis and take it off again
        chi2, df, pvalue, sufficient = chi2_test(folded[None], reference, policy)
        return chi2[0], df[0], pvalue[0], sufficient[0]
    n = folded.sum(axis=-1)
    m = float(reference.rows)
    p = reference.proportions
    small = np.minimum(n, m)
    valid = np.arange(reference.width) < reference.bins[:, None]
    lightest = np.where(valid, p, np.inf).min(axis=-1)
    pooled = (small * lightest < policy.min_expected) & (n >= policy.min_rows)
    chi2 = _pearson(folded.astype(np.float64), n, p, m)
    df = np.broadcast_to(reference.bins - 1, n.shape).copy()
    for row in np.flatnonzero(pooled.reshape(-1, len(reference.names)).any(axis=0)):
        _pool_row(int(row), folded, n, small, pooled, chi2, df, reference, policy)
    sufficient = (n >= policy.min_rows) & (df >= 1)
    pvalue = np.ones(n.shape)
    for d in np.unique(df[sufficient]):
        where = sufficient & (df == d)
        pvalue[where] = stats.chi2_sf(chi2[where], int(d))
    return chi2, df, pvalue, sufficient


def _pool_row(
    row: int,
    folded: Ints,
    n: Ints,
    small: Floats,
    pooled: Bools,
    chi2: Floats,
    df: Ints,
    reference: Reference,
    policy: DriftPolicy,
) -> None:
    """Re-test row ``row`` of the ``pooled`` windows over pooled cells, in place: one
    grouping per distinct window size, then one vectorised sum into the groups."""
    bins = int(reference.bins[row])
    p = reference.proportions[row, :bins]
    where = np.nonzero(pooled[..., row])
    sizes, inverse = np.unique(small[..., row][where], return_inverse=True)
    groups = np.stack([_groups(p, policy.min_expected / size) for size in sizes])
    group = groups[inverse]  # [windows, bins]: each bin's cell
    count = len(inverse)
    flat = (np.arange(count)[:, None] * bins + group).ravel()
    cells = (
        np.bincount(flat, weights=folded[..., row, :bins][where].ravel(), minlength=count * bins)
        .reshape(count, bins)
        .astype(np.float64)
    )
    shares = (
        np.bincount(flat, weights=np.broadcast_to(p, group.shape).ravel(), minlength=count * bins)
        .reshape(count, bins)
        .astype(np.float64)
    )
    chi2[..., row][where] = _pearson(cells, n[..., row][where], shares, float(reference.rows))
    df[..., row][where] = groups.max(axis=1)[inverse]


def _pearson(counts: Floats, n: npt.ArrayLike, p: Floats, m: float) -> Floats:
    """``nm/(n+m) Σ (c/n - p)² / π̂`` over cells with ``π̂ = (c + m p)/(n + m) > 0``."""
    n = np.asarray(n, dtype=np.float64)
    total = (n + m)[..., None]
    pooled = (counts + m * p) / total
    safe_n = np.where(n > 0, n, 1.0)[..., None]
    terms = np.where(pooled > 0, (counts / safe_n - p) ** 2 / np.where(pooled > 0, pooled, 1), 0)
    result: Floats = terms.sum(axis=-1) * n * m / (n + m)
    return result


def _groups(p: Floats, min_share: float) -> Ints:
    """Adjacent bins pooled left to right until each group holds ``min_share`` of the
    reference; a light remainder joins the last group."""
    groups = np.zeros(len(p), dtype=np.int64)
    current, mass = 0, 0.0
    for i, share in enumerate(p):
        groups[i] = current
        mass += share
        if mass >= min_share and i < len(p) - 1:
            current, mass = current + 1, 0.0
    if mass < min_share and current > 0:
        groups[groups == current] = current - 1
    return groups


def significance(counts: Ints, reference: Reference, policy: DriftPolicy) -> tuple[Floats, Bools]:
    """Only the distribution test's p-value and sufficiency: the per-device path."""
    _, _, p, sufficient = chi2_test(fold(counts, reference), reference, policy)
    return p, sufficient


def score(counts: Ints, reference: Reference, policy: DriftPolicy) -> Scores:
    """Every score of every row of ``counts`` (``[..., rows, width + 3]``)."""
    width = reference.width
    folded = fold(counts, reference)
    n = folded.sum(axis=-1)
    nan = counts[..., width + 2]
    out = counts[..., width] + counts[..., width + 1]
    m = float(reference.rows)
    b = reference.bins.astype(np.float64)
    valid = np.arange(width) < reference.bins[:, None]
    p = reference.proportions
    safe_n = np.where(n > 0, n, 1)[..., None].astype(np.float64)
    q = folded / safe_n

    q_s = np.where(valid, (folded + 0.5) / (n[..., None] + b[:, None] / 2), 1.0)
    p_s = np.where(valid, (m * p + 0.5) / (m + b[:, None] / 2), 1.0)
    psi = ((q_s - p_s) * np.log(q_s / p_s)).sum(axis=-1)

    mid = (p + q) / 2
    with np.errstate(divide="ignore", invalid="ignore"):
        js_terms = np.where(p > 0, p * np.log2(p / mid), 0.0) + np.where(
            q > 0, q * np.log2(q / mid), 0.0
        )
    js = np.sqrt(np.maximum(js_terms.sum(axis=-1) / 2, 0.0))

    cq, cp = np.cumsum(q, axis=-1), np.cumsum(p, axis=-1)
    ks = np.abs(cq - cp).max(axis=-1)
    prev_q = np.concatenate([np.zeros((*cq.shape[:-1], 1)), cq[..., :-1]], axis=-1)
    prev_p = np.concatenate([np.zeros((*cp.shape[:-1], 1)), cp[..., :-1]], axis=-1)
    ks_upper = np.maximum(cq - prev_p, cp - prev_q).max(axis=-1)
    n_eff = n * m / (n + m)
    ks_p = stats.kolmogorov_sf(np.sqrt(n_eff) * ks)

    chi2, df, pvalue, sufficient = chi2_test(folded, reference, policy)
    psi_null = np.full(n.shape, np.nan)
    enough = n >= policy.min_rows
    for row, b in enumerate(reference.bins):  # PSI spans every bin: df = b - 1, unpooled
        where = enough[..., row]
        if b > 1 and where.any():
            quantile = stats.chi2_isf(policy.warn_alpha, int(b) - 1)
            psi_null[..., row][where] = quantile * (1 / n[..., row][where] + 1 / m)
    out_p = np.ones(n.shape)
    nan_p = np.ones(n.shape)
    classes = np.array([k == "classes" for k in reference.kinds])
    for index in zip(*np.nonzero(out > 0), strict=True):
        k, rows = int(out[index]), int(n[index])
        if classes[index[-1]]:
            out_p[index] = stats.binom_sf(k, rows, policy.nan_tolerance)
        else:
            out_p[index] = stats.betabinom_sf(k, rows, 2.0, m - 1.0)
    for index in zip(*np.nonzero(nan > 0), strict=True):
        k = int(nan[index])
        nan_p[index] = stats.binom_sf(k, int(n[index]) + k, policy.nan_tolerance)

    return Scores(
        n=n,
        nan=nan,
        sufficient=sufficient,
        psi=psi,
        js=js,
        ks=ks,
        ks_upper=ks_upper,
        ks_p=ks_p,
        chi2=chi2,
        df=df,
        p=pvalue,
        out_of_range=out,
        out_of_range_p=out_p,
        nan_p=nan_p,
        psi_null=psi_null,
    )


__all__ = ["FeatureScore", "Scores", "chi2_test", "fold", "score", "significance"]
