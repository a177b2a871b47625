"""The drift reference profile, metrics and the refusal of unsafe or malformed data."""

from __future__ import annotations

import io
import itertools
import pickle
import zipfile

import numpy as np
import pytest

from hub.errors import InvalidRequest
from hub.registry import datasets, profile
from protocol.manifest import TensorSpec
from tests import models


def npz(**arrays: object) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)  # type: ignore[arg-type]
    return buffer.getvalue()


def rows(n: int = 200, features: int = 4, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, features)).astype(np.float32)


def test_load_reads_x_y_and_names() -> None:
    x = rows(10, 3)
    data = datasets.load_dataset(
        npz(X=x.astype(np.float64), y=np.arange(10), feature_names=np.array(["a", "b", "c"])),
        what="reference",
    )
    assert data.x.dtype == np.float32
    np.testing.assert_array_equal(data.x, x)
    assert data.y is not None
    assert data.y.tolist() == list(range(10))
    assert data.feature_names == ("a", "b", "c")


def pickled_npz() -> bytes:
    """An .npz whose X is an object array: loading it would run pickle (B29)."""
    buffer = io.BytesIO()
    np.savez(buffer, X=np.array([{"rce": 1}, None], dtype=object))
    return buffer.getvalue()


def zip_bomb() -> bytes:
    """A small .npz declaring a 4 GiB array in its header."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "<f4", "fortran_order": False, "shape": (1 << 20, 1 << 10)}
    )
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("X.npy", header.getvalue() + bytes(1 << 16))
    return buffer.getvalue()


BAD_DATA = [
    pytest.param(pickled_npz(), "pickle", id="object-array-pickle"),
    pytest.param(pickle.dumps({"X": [1, 2]}), "not an .npz", id="raw-pickle"),
    pytest.param(zip_bomb(), "exceeds", id="declared-4GiB"),
    pytest.param(b"", "not an .npz", id="empty"),
    pytest.param(npz(Y=rows(3)), "unexpected array 'Y'", id="no-X"),
    pytest.param(npz(), "no array 'X'", id="empty-archive"),
    pytest.param(npz(X=np.zeros(5, np.float32)), "2-D", id="1-D-X"),
    pytest.param(npz(X=np.zeros((0, 4), np.float32)), "2-D", id="no-rows"),
    pytest.param(npz(X=np.array([["a", "b"]])), "real numbers", id="string-X"),
    pytest.param(npz(X=np.array([[1.0, np.nan], [1.0, 2.0]])), "row 0", id="nan-row"),
    pytest.param(npz(X=rows(3), y=np.zeros(4)), "does not match", id="y-rows"),
    pytest.param(npz(X=rows(3), y=np.array([0, np.inf, 1])), "y has NaN", id="inf-y"),
    pytest.param(
        npz(X=rows(3, 2), feature_names=np.array(["a"])), "feature_names", id="names-count"
    ),
]


@pytest.mark.parametrize(("data", "message"), BAD_DATA)
def test_bad_data_is_refused_with_a_reason(data: bytes, message: str) -> None:
    with pytest.raises(InvalidRequest, match=message):
        datasets.load_dataset(data, what="reference")


def test_oversize_upload_is_refused_before_parsing() -> None:
    with pytest.raises(InvalidRequest, match="exceeds"):
        datasets.load_dataset(npz(X=rows(100)), what="reference", max_bytes=100)


@pytest.mark.parametrize(
    "column",
    [
        pytest.param(np.random.default_rng(0).normal(size=500), id="normal"),
        pytest.param(np.array([1.0] * 400 + [2.0] * 100), id="heavy-ties"),
        pytest.param(np.full(50, 3.5), id="constant"),
        pytest.param(np.array([7.0]), id="one-row"),
        pytest.param(np.random.default_rng(1).integers(0, 3, 300).astype(float), id="categorical"),
    ],
)
def test_edges_strictly_increase_and_proportions_sum_to_one(column: np.ndarray) -> None:
    edges = profile.quantile_edges(column)
    assert len(edges) >= 2
    assert all(b > a for a, b in itertools.pairwise(edges))
    assert edges[0] == column.min()
    proportions = profile.bin_proportions(edges, column)
    assert len(proportions) == len(edges) - 1
    assert sum(proportions) == pytest.approx(1.0)


def test_quantile_bins_hold_equal_shares_of_continuous_data() -> None:
    column = np.random.default_rng(0).normal(size=1000)
    proportions = profile.bin_proportions(profile.quantile_edges(column, 10), column)
    assert proportions == pytest.approx([0.1] * 10, abs=0.002)


def test_values_outside_the_edges_fold_into_the_end_bins() -> None:
    edges = (0.0, 1.0, 2.0)
    assert profile.bin_proportions(edges, np.array([-5.0, 0.5, 2.0, 9.0])) == (0.5, 0.5)


def test_prediction_profile_counts_argmax_classes() -> None:
    scores = np.array([[0.9, 0.1, 0.0], [0.2, 0.7, 0.1], [0.1, 0.8, 0.1], [0.3, 0.3, 0.4]])
    predicted = profile.prediction_profile(scores, "classification")
    assert predicted.kind == "classes"
    assert predicted.proportions == (0.25, 0.5, 0.25)


def test_a_single_probability_column_is_a_binary_classifier() -> None:
    predicted = profile.prediction_profile(np.array([[0.9], [0.2], [0.6]]), "classification")
    assert predicted.proportions == pytest.approx((1 / 3, 2 / 3))


def test_regression_predictions_get_bins() -> None:
    predicted = profile.prediction_profile(np.linspace(0, 1, 100).reshape(-1, 1), "regression")
    assert predicted.kind == "bins"
    assert len(predicted.edges) == 11
    assert sum(predicted.proportions) == pytest.approx(1.0)


def test_task_is_inferred_from_probability_rows() -> None:
    assert profile.infer_task(np.array([[0.2, 0.8], [1.0, 0.0]])) == "classification"
    assert profile.infer_task(np.array([[2.0, -1.0], [0.5, 0.5]])) == "regression"
    assert profile.infer_task(np.array([[0.3], [0.4]])) == "regression"


def test_metrics_accuracy_and_mse() -> None:
    scores = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
    assert profile.metrics(scores, np.array([0.0, 1.0, 1.0, 1.0]), "classification") == {
        "accuracy": 0.75,
        "rows": 4.0,
    }
    assert profile.metrics(np.array([[1.0], [3.0]]), np.array([1.0, 1.0]), "regression") == {
        "mse": 2.0,
        "rows": 2.0,
    }


@pytest.mark.parametrize(
    "labels",
    [
        pytest.param(np.array([0.0, 2.0]), id="class-out-of-range"),
        pytest.param(np.array([0.5, 1.0]), id="not-an-index"),
        pytest.param(np.array([-1.0, 1.0]), id="negative"),
    ],
)
def test_metrics_refuse_labels_that_are_not_class_indices(labels: np.ndarray) -> None:
    with pytest.raises(InvalidRequest, match="validation y"):
        profile.metrics(np.array([[0.9, 0.1], [0.2, 0.8]]), labels, "classification")


def test_smoke_rows_spread_over_the_data() -> None:
    x = np.arange(100, dtype=np.float32).reshape(50, 2)
    smoke = profile.smoke_rows(x, 8)
    assert smoke.shape == (8, 2)
    assert smoke[0, 0] == 0
    assert smoke[-1, 0] == 98
    assert profile.smoke_rows(x[:3], 8).shape == (3, 2)


def test_latency_budget_has_a_floor_and_a_factor() -> None:
    assert profile.latency_budget_ms(0.1) == 50.0
    assert profile.latency_budget_ms(4.01) == 80.2


def test_runner_scores_a_real_model_on_onnxruntime() -> None:
    spec = TensorSpec("x", "float32", (None, 4))
    runner = profile.ModelRunner(models.gemm_classifier(), spec)
    scores = runner.run(rows(10), "probabilities")
    assert scores.shape == (10, 3)
    np.testing.assert_allclose(scores.sum(axis=1), 1.0, rtol=1e-5)
    assert runner.latency_p95_ms(rows(8), "probabilities") > 0


def test_runner_casts_to_a_float64_input() -> None:
    spec = TensorSpec("x", "float64", (None, 3))
    model = models.matmul_add_regressor(dtype=np.float64)
    assert profile.ModelRunner(model, spec).run(rows(5, 3), "prediction").shape == (5, 2)


def test_runner_wraps_onnxruntime_failures() -> None:
    spec = TensorSpec("x", "float32", (None, 4))
    runner = profile.ModelRunner(models.gemm_classifier(), spec)
    with pytest.raises(InvalidRequest, match="fails on the data"):
        runner.run(rows(5, 7), "probabilities")
