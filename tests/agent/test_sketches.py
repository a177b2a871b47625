"""Data-delta windows: exact mergeable sketches, out-of-range counts, predictions, stats."""

from __future__ import annotations

import itertools
import math
from functools import reduce

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from agent.sketches import SketchWindow
from protocol.manifest import (
    FeatureProfile,
    FileEntry,
    Head,
    ModelManifest,
    PredictionProfile,
    Profile,
    TensorSpec,
)
from protocol.messages import DataDelta, ModelRef
from protocol.sketches import FeatureSketch

T0 = 1_795_392_000_000
REF = ModelRef("m", 1, "c" * 64)
EDGES = ((0.0, 1.0, 2.0, 4.0), (-1.0, 0.0, 1.0))


def manifest(
    *,
    features: tuple[tuple[float, ...], ...] | None = EDGES,
    predictions: PredictionProfile | None = None,
    input_shape: tuple[int | None, ...] = (None, 2),
    n_scores: int = 3,
    head: Head | None = None,
) -> ModelManifest:
    profiles = tuple(
        FeatureProfile(f"x{i}", e, (1.0 / (len(e) - 1),) * (len(e) - 1))
        for i, e in enumerate(features or ())
    )
    profile = None
    if features is not None or predictions is not None:
        profile = Profile(profiles, predictions, rows=100)
    return ModelManifest(
        name="m",
        version=1,
        opset=21,
        inputs=(TensorSpec("x", "float32", input_shape),),
        outputs=(TensorSpec("scores", "float32", (None, n_scores)),),
        scores="scores",
        files=(FileEntry("model.onnx", "d" * 64, 10),),
        head=head,
        profile=profile,
    )


CLASSES3 = PredictionProfile("classes", (0.3, 0.3, 0.4))


def window(m: ModelManifest | None = None, **kwargs: object) -> SketchWindow:
    return SketchWindow(m or manifest(predictions=CLASSES3), T0, model=REF, **kwargs)  # type: ignore[arg-type]


def reference_sketch(name: str, edges: tuple[float, ...], column: np.ndarray) -> dict[str, object]:
    """The sketch computed directly from the rows, by the binning rule's comparisons."""
    e = np.asarray(edges)
    finite = column[np.isfinite(column)]
    counts = [
        int(np.sum((column >= lo) & ((column < hi) if i < len(e) - 2 else (column <= hi))))
        for i, (lo, hi) in enumerate(itertools.pairwise(e))
    ]
    return {
        "name": name,
        "counts": tuple(counts),
        "underflow": int(np.sum(column < e[0])),
        "overflow": int(np.sum(column > e[-1])),
        "nan": int(np.sum(np.isnan(column))),
        "n": finite.size,
        "mean": float(finite.mean()) if finite.size else 0.0,
        "m2": float(np.sum((finite - finite.mean()) ** 2)) if finite.size else 0.0,
        "min": float(finite.min()) if finite.size else None,
        "max": float(finite.max()) if finite.size else None,
    }


def assert_matches(sketch: FeatureSketch, expected: dict[str, object]) -> None:
    exact = {k: v for k, v in expected.items() if k not in ("mean", "m2")}
    assert {k: getattr(sketch, k) for k in exact} == exact
    assert sketch.mean == pytest.approx(expected["mean"], rel=1e-9, abs=1e-9)
    assert sketch.m2 == pytest.approx(expected["m2"], rel=1e-7, abs=1e-6)


values = st.one_of(
    st.floats(-5, 5, width=32),
    st.sampled_from([0.0, 1.0, 2.0, 4.0, -1.0, math.nan, math.inf, -math.inf]),
)
batches = st.lists(
    hnp.arrays(np.float32, st.tuples(st.integers(0, 12), st.just(2)), elements=values),
    min_size=1,
    max_size=4,
)


@settings(max_examples=60, deadline=None)
@given(first=batches, second=batches)
def test_merged_windows_equal_the_sketch_of_all_their_rows(
    first: list[np.ndarray], second: list[np.ndarray]
) -> None:
    sketcher = window()
    for batch in first:
        sketcher.observe(batch, None, 1.0)
    a = sketcher.flush(T0 + 1000)
    for batch in second:
        sketcher.observe(batch, None, 1.0)
    b = sketcher.flush(T0 + 2000)

    rows = np.vstack([*first, *second]).astype(np.float64)
    for i, (left, right) in enumerate(zip(a.features, b.features, strict=True)):
        assert_matches(left.merge(right), reference_sketch(f"x{i}", EDGES[i], rows[:, i]))


def test_out_of_range_and_nan_values_are_counted_apart() -> None:
    sketcher = window()
    column = [-0.5, 0.0, 0.5, 1.0, 3.9, 4.0, 4.5, math.nan, math.inf, -math.inf]
    x = np.column_stack([column, np.zeros(len(column))]).astype(np.float32)

    sketcher.observe(x, None, 1.0)
    (first, second) = sketcher.flush(T0 + 10).features

    assert first.counts == (2, 1, 2)  # [0, 1) holds 0.0 and 0.5; the last bin includes 4.0
    assert (first.underflow, first.overflow, first.nan) == (2, 2, 1)
    assert (first.n, first.min, first.max) == (7, -0.5, 4.5)
    assert first.mean == pytest.approx(np.mean([-0.5, 0.0, 0.5, 1.0, 3.9, 4.0, 4.5]), rel=1e-6)
    assert second.counts == (0, 10)


def test_class_counts_use_the_argmax_and_nan_rows_apart() -> None:
    sketcher = window()
    scores = np.array([[0.1, 0.7, 0.2], [0.8, 0.1, 0.1], [0.2, 0.3, 0.5], [0.1, 0.6, 0.3]])
    sketcher.observe(np.zeros((4, 2)), scores, 1.0)
    sketcher.observe(np.zeros((1, 2)), np.array([[np.nan, 0.5, 0.5]]), 1.0)

    predictions = sketcher.flush(T0 + 10).predictions

    assert predictions is not None
    assert (predictions.kind, predictions.counts, predictions.nan) == ("classes", (1, 2, 1), 1)


def test_a_binary_sigmoid_column_counts_as_two_classes() -> None:
    binary = Head("gemm", "h", "w", "b", "f", "sigmoid", "classification", 3, 1)
    sketcher = window(manifest(features=None, head=binary, n_scores=1))

    sketcher.observe(np.zeros((4, 2)), np.array([[0.9], [0.2], [0.7], [0.51]]), 1.0)

    predictions = sketcher.flush(T0).predictions
    assert predictions is not None
    assert predictions.counts == (1, 3)


def test_regression_predictions_are_binned_over_the_profile_edges() -> None:
    bins = PredictionProfile("bins", (0.5, 0.5), (0.0, 10.0, 20.0))
    sketcher = window(manifest(predictions=bins, n_scores=1))

    scores = np.array([[-1.0], [0.0], [9.9], [10.0], [20.0], [25.0], [np.nan]])
    sketcher.observe(np.zeros((7, 2)), scores, 1.0)

    predictions = sketcher.flush(T0).predictions
    assert predictions is not None
    assert predictions.kind == "bins"
    assert predictions.counts == (2, 2)
    assert (predictions.underflow, predictions.overflow, predictions.nan) == (1, 1, 1)


def test_flush_closes_the_window_and_starts_an_empty_one() -> None:
    sketcher = window()
    sketcher.observe(np.ones((3, 2)), np.eye(3), 5.0, rows=3)
    sketcher.observe(None, None, 7.0, rows=2, error=True)

    first = sketcher.flush(T0 + 60_000)
    second = sketcher.flush(T0 + 120_000)

    assert isinstance(first, DataDelta)
    assert (first.window_start, first.window_end, first.model) == (T0, T0 + 60_000, REF)
    assert (first.inference_count, first.error_count) == (5, 2)  # rows, not requests
    assert first.features[0].n == 3
    assert (second.window_start, second.window_end) == (T0 + 60_000, T0 + 120_000)
    assert (second.inference_count, second.error_count, second.latency_p95_ms) == (0, 0, 0.0)
    assert all(f.n == 0 and sum(f.counts) == 0 for f in second.features)
    assert second.predictions is not None
    assert sum(second.predictions.counts) == 0


def test_a_clock_stepping_back_closes_the_window_at_its_start() -> None:
    sketcher = window()
    delta = sketcher.flush(T0 - 5000)
    assert (delta.window_start, delta.window_end) == (T0, T0)


def test_latency_percentiles_are_nearest_rank() -> None:
    sketcher = window()
    for latency in range(1, 21):
        sketcher.observe(np.zeros((1, 2)), np.eye(3)[:1], float(latency))

    delta = sketcher.flush(T0)
    assert (delta.latency_p50_ms, delta.latency_p95_ms) == (10.0, 19.0)


def test_latency_reservoir_stays_bounded_and_samples_the_whole_window() -> None:
    sketcher = window(latency_samples=64, rng=np.random.default_rng(0))
    for latency in range(10_000):
        sketcher.observe(None, None, float(latency))

    delta = sketcher.flush(T0)
    assert delta.inference_count == 10_000
    assert 3000 < delta.latency_p50_ms < 7000
    assert delta.latency_p95_ms > 8000


def test_failed_calls_are_counted_but_not_sketched() -> None:
    sketcher = window()
    sketcher.observe(np.full((2, 2), 100.0), np.eye(3)[:2], 3.0, rows=2, error=True)

    delta = sketcher.flush(T0)
    assert (delta.inference_count, delta.error_count) == (2, 2)
    assert delta.features[0].n == 0
    assert delta.predictions is not None
    assert sum(delta.predictions.counts) == 0


def test_inputs_that_are_not_rows_of_features_sketch_nothing_per_feature() -> None:
    image = manifest(features=None, input_shape=(None, 3, 8, 8), predictions=CLASSES3)
    sketcher = window(image)
    sketcher.observe(np.zeros((2, 3, 8, 8)), np.eye(3)[:2], 1.0)

    delta = sketcher.flush(T0)
    assert sketcher.feature_names == ()
    assert delta.features == ()
    assert delta.predictions is not None
    assert sum(delta.predictions.counts) == 2


def test_without_a_profile_features_get_moments_only() -> None:
    sketcher = window(manifest(features=None))
    sketcher.observe(np.array([[1.0, 2.0], [3.0, np.inf]]), None, 1.0)

    first, second = sketcher.flush(T0).features
    assert (first.name, first.counts, first.n, first.mean) == ("f0", (), 2, 2.0)
    assert (second.overflow, second.n) == (1, 1)


def test_rows_of_another_width_are_not_sketched() -> None:
    sketcher = window()
    sketcher.observe(np.zeros((2, 5)), None, 1.0)

    assert all(f.n == 0 for f in sketcher.flush(T0).features)


def test_merge_of_many_windows_is_order_independent() -> None:
    rng = np.random.default_rng(5)
    sketcher = window()
    deltas = []
    for k in range(5):
        sketcher.observe(rng.normal(1.5, 2.0, size=(50, 2)), None, 1.0)
        deltas.append(sketcher.flush(T0 + k))
    forward = [reduce(FeatureSketch.merge, [d.features[i] for d in deltas]) for i in range(2)]
    backward = [
        reduce(FeatureSketch.merge, [d.features[i] for d in deltas[::-1]]) for i in range(2)
    ]
    for f, b in zip(forward, backward, strict=True):
        assert (f.counts, f.underflow, f.overflow, f.n) == (b.counts, b.underflow, b.overflow, b.n)
        assert f.mean == pytest.approx(b.mean)
        assert f.m2 == pytest.approx(b.m2)
