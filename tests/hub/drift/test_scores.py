"""Drift scores from counts: equal to scipy on the same counts, and calibrated with no drift."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import special
from scipy import stats as sp
from scipy.spatial import distance

from agent.sketches import bin_counts
from hub.drift.policy import DriftPolicy
from hub.drift.reference import Reference
from hub.drift.scores import score, significance
from protocol.manifest import FeatureProfile, PredictionProfile, Profile
from tests.hub.drift.helpers import binned, make_reference, window_counts
from tests.hub.drift.test_stats import exact_out_of_range_sf

POLICY = DriftPolicy()


def reference_of(ref_counts: list[int], classes: list[int] | None = None) -> Reference:
    """A reference whose proportions are exact fractions of integer counts of ``m`` rows."""
    m = sum(ref_counts)
    feature = FeatureProfile(
        "x", tuple(float(i) for i in range(len(ref_counts) + 1)), tuple(c / m for c in ref_counts)
    )
    predictions = None
    if classes is not None:
        assert sum(classes) == m
        predictions = PredictionProfile("classes", tuple(c / m for c in classes))
    return Reference.from_profile(Profile((feature,), predictions, rows=m))


def counts_row(reference: Reference, bins: list[int], under: int, over: int, nan: int):
    row = np.zeros(reference.shape[1], dtype=np.int64)
    row[: len(bins)] = bins
    row[reference.width :] = (under, over, nan)
    return row


@settings(max_examples=150, deadline=None)
@given(data=st.data(), b=st.integers(2, 24))
def test_scores_equal_scipy_on_the_same_counts(data: st.DataObject, b: int) -> None:
    ref_counts = data.draw(st.lists(st.integers(1, 2000), min_size=b, max_size=b))
    bins = data.draw(st.lists(st.integers(0, 400), min_size=b, max_size=b))
    under, over, nan = (data.draw(st.integers(0, 30)) for _ in range(3))
    reference = reference_of(ref_counts)
    counts = counts_row(reference, bins, under, over, nan)[None, None, :]
    s = score(counts, reference, DriftPolicy(min_rows=2, min_expected=1e-9))
    folded = np.array(bins, dtype=np.float64)
    folded[0] += under
    folded[-1] += over
    n, m = folded.sum(), float(sum(ref_counts))
    if n == 0:
        return
    r = np.array(ref_counts, dtype=np.float64)

    q_s, p_s = (folded + 0.5) / (n + b / 2), (r + 0.5) / (m + b / 2)
    psi = special.rel_entr(q_s, p_s).sum() + special.rel_entr(p_s, q_s).sum()
    assert s.psi[0, 0] == pytest.approx(psi, rel=1e-9, abs=1e-12)
    # The distance is the square root of a divergence: near zero, float64 rounding of the
    # divergence (~1e-16) becomes ~1e-8 in the distance for any implementation, so the two
    # agree to 1e-9 on the divergence, and on the distance wherever it is not rounding noise.
    js = distance.jensenshannon(r / m, folded / n, base=2)
    assert s.js[0, 0] ** 2 == pytest.approx(js**2, abs=1e-9)
    if js**2 > 1e-12:
        assert s.js[0, 0] == pytest.approx(js, abs=1e-9)

    x = np.repeat(np.arange(b), folded.astype(np.int64))
    y = np.repeat(np.arange(b), r.astype(np.int64))
    assert s.ks[0, 0] == pytest.approx(sp.ks_2samp(x, y).statistic, abs=1e-12)
    n_eff = n * m / (n + m)
    assert s.ks_p[0, 0] == pytest.approx(
        special.kolmogorov(np.sqrt(n_eff) * s.ks[0, 0]), rel=1e-9, abs=1e-15
    )

    if (folded + r > 0).all() and s.sufficient[0, 0]:
        chi2, p, dof, _ = sp.chi2_contingency(np.vstack([folded, r]), correction=False)
        assert s.chi2[0, 0] == pytest.approx(chi2, rel=1e-9, abs=1e-9)
        assert int(s.df[0, 0]) == dof
        assert s.p[0, 0] == pytest.approx(p, rel=1e-9, abs=1e-300)

    k = under + over
    if k:
        oor = float(exact_out_of_range_sf(k, int(n), int(m)))  # scipy's loses tiny tails
        assert s.out_of_range_p[0, 0] == pytest.approx(oor, rel=1e-9)
    if nan:
        expected = float(sp.binom.sf(nan - 1, int(n) + nan, POLICY.nan_tolerance))
        assert s.nan_p[0, 0] == pytest.approx(expected, rel=1e-9)


def test_class_predictions_score_without_ks_and_test_unknown_classes_like_nan() -> None:
    reference = reference_of([50, 50], classes=[60, 30, 10])
    counts = np.zeros((1, *reference.shape), dtype=np.int64)
    counts[0, 1, :3] = (40, 40, 20)
    counts[0, 1, reference.width + 1] = 3  # argmax past the known classes
    s = score(counts, reference, POLICY)
    view = s.at((0, 1), reference)
    assert view.name == "@prediction"
    assert view.ks is None
    assert view.ks_p is None
    chi2, _, _, _ = sp.chi2_contingency(np.vstack([[40, 40, 23], [60, 30, 10]]), correction=False)
    assert view.chi2 == pytest.approx(chi2, rel=1e-9)
    assert view.out_of_range_p == pytest.approx(float(sp.binom.sf(2, 103, 0.001)), rel=1e-9)


def test_thin_bins_are_pooled_until_each_expects_five_rows() -> None:
    reference = Reference.from_profile(
        Profile((), PredictionProfile("classes", (0.7, 0.2, 0.08, 0.02)), rows=1000)
    )
    counts = np.zeros((1, *reference.shape), dtype=np.int64)
    counts[0, 0, :4] = (30, 10, 7, 3)  # n = 50: 0.08 and 0.02 expect 4 and 1 rows
    s = score(counts, reference, POLICY)
    assert int(s.df[0, 0]) == 2  # cells {0.7}, {0.2}, {0.08 + 0.02}
    chi2, p, _, _ = sp.chi2_contingency(
        np.vstack([[30, 10, 10], [700, 200, 100]]), correction=False
    )
    assert s.chi2[0, 0] == pytest.approx(chi2, rel=1e-9)
    assert s.p[0, 0] == pytest.approx(p, rel=1e-9)


def test_too_few_rows_is_not_enough_data_not_a_pass() -> None:
    reference = reference_of([100] * 10)
    counts = counts_row(reference, [19, 0, 0, 0, 0, 0, 0, 0, 0, 0], 0, 0, 0)[None, None, :]
    s = score(counts, reference, POLICY)
    view = s.at((0, 0), reference)
    assert view.state == "insufficient"
    assert view.p is None
    assert view.chi2 is None
    assert view.psi is not None  # the effect size is still shown, flagged insufficient


def test_vectorised_binning_counts_like_the_agent() -> None:
    rng = np.random.default_rng(3)
    edges = np.sort(rng.normal(size=11))
    x = rng.normal(size=(5, 200)) * 1.5
    x[0, :3] = (edges[0], edges[-1], edges[4])
    counts, under, over = binned(edges, x)
    for w in range(5):
        c, u, o = bin_counts(edges, x[w])
        assert np.array_equal(counts[w], c)
        assert (under[w], over[w]) == (u, o)


def test_binned_ks_brackets_the_continuous_ks_statistic() -> None:
    rng = np.random.default_rng(4)
    reference, edges = make_reference(rng, features=1, bins=10, m=4000)
    ref_rows = rng.normal(size=4000)
    for shift in (0.0, 0.3, 1.0):
        x = rng.normal(shift, 1.0, size=(1, 800, 1))
        s = score(window_counts(reference, edges, x), reference, POLICY)
        continuous = sp.ks_2samp(x[0, :, 0], ref_rows).statistic
        # the binned D and its bound enclose the continuous statistic up to the
        # reference sample's own noise (another 4000 rows than the profile's)
        assert s.ks[0, 0] - 0.04 <= continuous <= s.ks_upper[0, 0] + 0.04
        assert s.ks_upper[0, 0] - s.ks[0, 0] <= max(reference.proportions[0]) + 1e-12


def test_no_drift_p_values_are_calibrated_from_20_rows_up() -> None:
    """With no drift, P(p < α) ≈ α over fresh references and windows (printed)."""
    rng = np.random.default_rng(11)
    print("\n  bins   n   rate/α at α=0.05  0.01  0.001  (60k windows each, 30 references)")
    worst = 0.0
    for bins in (10, 20):
        for n in (20, 30, 60, 100, 1000):
            p_values = []
            for _ in range(30):
                reference, edges = make_reference(rng, features=1, bins=bins, m=5000)
                x = rng.normal(size=(2000, n, 1))
                p, sufficient = significance(window_counts(reference, edges, x), reference, POLICY)
                assert sufficient.all()
                p_values.append(p[:, 0])
            pv = np.concatenate(p_values)
            ratios = [float(np.mean(pv < a)) / a for a in (0.05, 0.01, 0.001)]
            worst = max(worst, ratios[1])
            print(f"  {bins:4d} {n:4d}   {ratios[0]:14.2f} {ratios[1]:5.2f} {ratios[2]:6.2f}")
            assert 0.5 <= ratios[0] <= 1.25
            assert ratios[1] <= 1.4  # the per-device level of the fraction test
            assert ratios[2] <= 2.0  # 60 expected events: wide sampling noise at this tail
    print(f"  worst rate/α at α=0.01: {worst:.2f}")


def test_psi_with_no_drift_behaves_like_a_scaled_chi_square() -> None:
    """PSI's no-drift mean is ``(b-1)(1/n + 1/m)`` and ``psi_null`` its 99.9th percentile,
    from about 5 rows per bin; a fixed PSI >= 0.1 fires on most small windows (printed)."""
    rng = np.random.default_rng(4)
    print("\n  bins     n  mean PSI  (b-1)(1/n+1/m)  simulated p99.9  psi_null  PSI>=0.1")
    for bins, n in ((10, 30), (10, 100), (10, 1000), (20, 100), (20, 1000)):
        psi, null = [], []
        for _ in range(10):
            reference, edges = make_reference(rng, features=1, bins=bins, m=5000)
            s = score(
                window_counts(reference, edges, rng.normal(size=(3000, n, 1))), reference, POLICY
            )
            psi.append(s.psi[:, 0])
            null.append(s.psi_null[:, 0])
        values = np.concatenate(psi)
        formula = (bins - 1) * (1 / n + 1 / 5000)
        p999, shown = float(np.quantile(values, 0.999)), float(np.median(np.concatenate(null)))
        fixed = float(np.mean(values >= 0.1))
        print(
            f"  {bins:4d} {n:5d}  {values.mean():8.4f}  {formula:14.4f}  {p999:15.4f}  "
            f"{shown:8.4f}  {fixed:8.1%}"
        )
        if n / bins >= 5:
            assert values.mean() == pytest.approx(formula, rel=0.12)
            assert p999 == pytest.approx(shown, rel=0.15)
