"""Label-free performance: isotonic calibration, mergeable confidence sketches, CBPE.

The acceptance simulations run a seeded 3-class world: true labels follow
``softmax(W x)``, the model outputs the overconfident ``softmax(2.5 W x)``, and the
reference (registration) data is ``x ~ N(0, I)``. Devices send data and confidence
sketches; the hub assesses and evaluates buckets as it will in production.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.isotonic import IsotonicRegression

from hub.drift.aggregate import Aggregate
from hub.drift.assess import DeviceBucket
from hub.drift.performance import (
    choose_calibration,
    estimate,
    expected_calibration_error,
    fit_isotonic,
    sketch,
)
from hub.drift.policy import DriftPolicy
from hub.drift.reference import Reference
from hub.registry.profile import bin_proportions, quantile_edges
from protocol.manifest import FeatureProfile, PredictionProfile, Profile
from tests.hub.drift.helpers import window_counts
from tests.hub.drift.simfleet import Run, make_fleet
from tests.hub.monitor.storerun import StoreRun

FEATURES, CLASSES = 10, 3


@settings(max_examples=150, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    rows=st.integers(1, 300),
    distinct=st.integers(1, 40),
)
def test_isotonic_fit_predicts_like_scikit_learn(seed: int, rows: int, distinct: int) -> None:
    rng = np.random.default_rng(seed)
    x = rng.integers(0, distinct, rows) / distinct  # ties on purpose
    y = (rng.random(rows) < 0.2 + 0.6 * x).astype(float)
    ours = fit_isotonic(x, y)
    theirs = IsotonicRegression(out_of_bounds="clip").fit(x, y)
    probe = np.concatenate([x, np.linspace(-0.5, 1.5, 101)])
    np.testing.assert_allclose(ours.apply(probe), theirs.predict(probe), rtol=0, atol=1e-12)


def test_expected_calibration_error_counts_each_bin_gap_by_its_rows() -> None:
    confidence = np.array([0.05, 0.15, 0.15, 0.95, 0.95, 0.95, 0.95])
    correct = np.array([0, 0, 1, 1, 1, 1, 0])
    # bins 0, 1, 9: |0 - 0.05| * 1 + |1 - 0.30| * 1 ... over 7 rows
    expected = (abs(0 - 0.05) + abs(1 - 0.30) + abs(3 - 3.8)) / 7
    assert expected_calibration_error(confidence, correct) == pytest.approx(expected, rel=1e-12)


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return np.asarray(e / e.sum(axis=1, keepdims=True))


class World:
    """The seeded 3-class world of the module docstring."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng
        self.w = rng.normal(0.0, 0.6, size=(CLASSES, FEATURES))

    def model(self, x: np.ndarray) -> np.ndarray:
        return softmax(2.5 * (x @ self.w.T))

    def labels(self, x: np.ndarray, *, swap: bool = False) -> np.ndarray:
        truth = softmax(x @ self.w.T)
        if swap:  # concept drift: classes 1 and 2 trade places, inputs unchanged
            truth = truth[:, [0, 2, 1]]
        return np.asarray((self.rng.random(len(x))[:, None] > truth.cumsum(axis=1)).sum(axis=1))


def registration(world: World, rng: np.random.Generator):
    """What registration computes: profile over reference rows, calibration and accuracy
    over validation rows."""
    ref = rng.normal(size=(5000, FEATURES)).astype(np.float32)
    profiles, edges = [], []
    for j in range(FEATURES):
        e = quantile_edges(ref[:, j])
        profiles.append(FeatureProfile(f"f{j}", e, bin_proportions(e, ref[:, j])))
        edges.append(np.asarray(e))
    shares = np.bincount(world.model(ref).argmax(axis=1), minlength=CLASSES) / len(ref)
    profile = Profile(tuple(profiles), PredictionProfile("classes", tuple(shares)), rows=5000)
    val = rng.normal(size=(5000, FEATURES))
    scores, y = world.model(val), world.labels(val)
    choice = choose_calibration(scores, y, rng)
    accuracy = float((scores.argmax(axis=1) == y).mean())
    return Reference.from_profile(profile), edges, choice, accuracy


def test_calibration_is_kept_only_when_it_lowers_the_calibration_error() -> None:
    rng = np.random.default_rng(1)
    world = World(rng)
    x = rng.normal(size=(4000, FEATURES))
    y = world.labels(x)
    overconfident = choose_calibration(world.model(x), y, rng)
    assert overconfident.calibration is not None
    assert overconfident.ece_calibrated < overconfident.ece_raw / 3
    calibrated = choose_calibration(softmax(x @ world.w.T), y, rng)  # the true probabilities
    assert calibrated.calibration is None
    assert calibrated.ece_raw <= calibrated.ece_calibrated


def test_confidence_sketches_merge_and_the_estimate_is_the_mean_calibrated_confidence() -> None:
    rng = np.random.default_rng(2)
    world = World(rng)
    x = rng.normal(size=(3000, FEATURES))
    choice = choose_calibration(world.model(x), world.labels(x), rng)
    batch = rng.normal(size=(900, FEATURES))
    scores, labels = world.model(batch), world.labels(batch)
    labels[rng.random(900) < 0.7] = -1
    whole = sketch(scores, choice.calibration, 10, labels=labels)
    parts = [sketch(scores[i::3], choice.calibration, 10, labels=labels[i::3]) for i in range(3)]
    np.testing.assert_allclose(sum(parts), whole, rtol=1e-12)
    assert choice.calibration is not None
    c = choice.calibration.apply(scores.max(axis=1))
    result = estimate(whole, None, DriftPolicy())
    assert result.estimated_accuracy == pytest.approx(c.mean(), rel=1e-12)
    has = labels >= 0
    hit = scores.argmax(axis=1)[has] == labels[has]
    assert result.feedback_accuracy == pytest.approx(hit.mean(), rel=1e-12)
    assert result.feedback_expected == pytest.approx(c[has].mean(), rel=1e-12)


def performance_buckets(world, reference, edges, choice, fleet, bucket, *, scale=1.0, swap=False):
    """One bucket of every device: data counts, predictions and a confidence sketch with
    labelled feedback on 20% of the rows. Returns the buckets and the true accuracy."""
    rng = world.rng
    buckets, hits, total = [], 0, 0
    for device in fleet:
        n = int(rng.integers(device.rows[0], device.rows[1] + 1))
        x = rng.normal(size=(n, FEATURES)) * scale
        scores, y = world.model(x), world.labels(x, swap=swap)
        predicted = scores.argmax(axis=1)
        hits += int((predicted == y).sum())
        total += n
        counts = window_counts(reference, edges, x[None, :, :])[0]
        counts[-1, :CLASSES] = np.bincount(predicted, minlength=CLASSES)
        feedback = np.where(rng.random(n) < 0.2, y, -1)
        aggregate = Aggregate(
            scope=reference.digest,
            counts=counts,
            moments=np.zeros((reference.features, 3)),
            performance=sketch(
                scores, choice.calibration, reference.confidence_bins, labels=feedback
            ),
            inferences=n,
            errors=0,
            windows=1,
            parts=frozenset({(device.device_id, bucket)}),
        )
        buckets.append(DeviceBucket.of(device.device_id, device.version, device.tags, aggregate))
    return buckets, hits / total


@pytest.mark.parametrize("runner", [Run, StoreRun], ids=["pure", "store"])
def test_label_free_estimate_tracks_true_accuracy_under_covariate_shift(
    runner: type[Run] | type[StoreRun],
) -> None:
    """Inputs shrink toward the class boundaries bucket after bucket (x -> s x): the
    model's accuracy falls; the merged label-free estimate follows it within 3 points."""
    rng = np.random.default_rng(20)
    world = World(rng)
    reference, edges, choice, accuracy = registration(world, rng)
    run = runner(reference, edges, DriftPolicy(), reference_accuracy=accuracy)
    fleet = make_fleet(rng, 150)
    print(
        f"\n  reference accuracy {accuracy:.3f}; calibration ECE (cross-validated) "
        f"raw {choice.ece_raw:.3f} -> isotonic {choice.ece_calibrated:.3f}"
    )
    print("  scale  true acc  estimate  |error|  feedback  level")
    worst = 0.0
    for bucket, scale in enumerate((1.0, 1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.5)):
        devices, true = performance_buckets(
            world, reference, edges, choice, fleet, bucket, scale=scale
        )
        assessment = run.bucket(devices)
        p = assessment.performance
        assert p.estimated_accuracy is not None
        assert p.feedback_accuracy is not None
        error = abs(p.estimated_accuracy - true)
        worst = max(worst, error)
        print(
            f"  {scale:5.1f}  {true:8.3f}  {p.estimated_accuracy:8.3f}  {error:7.3f}"
            f"  {p.feedback_accuracy:8.3f}  {p.level}"
        )
        assert error <= 0.03
    print(f"  worst |estimate - true accuracy|: {worst:.3f}")
    opened = [a for _, a in run.opened() if a.kind == "performance"]
    assert opened, "the accuracy drop should open a performance alert"
    assert run.alerts[opened[0].id].severity == "alert"
    assert "estimated_accuracy_drop" in run.alerts[opened[0].id].performance.reasons  # type: ignore[union-attr]


@pytest.mark.parametrize("runner", [Run, StoreRun], ids=["pure", "store"])
def test_concept_drift_is_quiet_on_inputs_and_shows_in_feedback_accuracy(
    runner: type[Run] | type[StoreRun],
) -> None:
    """Labels of classes 1 and 2 swap from bucket 3 on; the inputs do not change."""
    rng = np.random.default_rng(21)
    world = World(rng)
    reference, edges, choice, accuracy = registration(world, rng)
    run = runner(reference, edges, DriftPolicy(), reference_accuracy=accuracy)
    fleet = make_fleet(rng, 150)
    print("\n  bucket  true acc  estimate  feedback  expected  worst input level")
    for bucket in range(8):
        devices, true = performance_buckets(
            world, reference, edges, choice, fleet, bucket, swap=bucket >= 3
        )
        a = run.bucket(devices)
        p = a.performance
        worst = max(a.findings, key=lambda f: f.rank)
        print(
            f"  {bucket:6d}  {true:8.3f}  {p.estimated_accuracy:8.3f}  {p.feedback_accuracy:8.3f}"
            f"  {p.feedback_expected:8.3f}  {worst.level}"
        )
        assert all(f.level == "ok" for f in a.findings), "input drift must stay quiet"
        if bucket >= 3:
            assert p.feedback_accuracy is not None
            assert p.feedback_expected is not None
            assert p.feedback_accuracy < p.feedback_expected - 0.1
            assert "feedback_below_estimate" in p.reasons
    kinds = {a.kind for _, a in run.opened()}
    assert kinds == {"performance"}
    (alert,) = [a for a in run.alerts.values() if a.kind == "performance"]
    assert alert.severity == "alert"
    assert alert.first_bucket_ms == run.assessments[3].start_ms
