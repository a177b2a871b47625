"""The runtime: any ONNX model served as its exporter meant, bad input refused with a 4xx,
and a health check that catches NaN, wrong shapes and slow models."""

from __future__ import annotations

import dataclasses
import gc
import hashlib
from typing import Any

import numpy as np
import pytest
from onnx import TensorProto, helper

from agent import runtime as runtime_module
from agent.errors import InferenceFailed, InvalidInput, ModelUnhealthy
from agent.runtime import PROVIDERS, ModelRuntime, WatchPolicy
from protocol.errors import ShapeMismatch
from protocol.headparams import head_forward, read_head
from protocol.messages import ModelRef
from protocol.package import decode_package
from protocol.tensors import encode_tensors
from tests import models
from tests.packages import Built, build_package, nan_model, with_manifest


def runtime_of(built: Built) -> ModelRuntime:
    return ModelRuntime.from_package(decode_package(built.data), built.ref)


@pytest.fixture(scope="module")
def mlp() -> tuple[ModelRuntime, models.Exported]:
    exported = models.mlp_classifier()
    return runtime_of(build_package(exported.model)), exported


def test_skl2onnx_mlp_classifier_matches_sklearn_predict_proba(
    mlp: tuple[ModelRuntime, models.Exported],
) -> None:
    runtime, exported = mlp
    output = runtime.predict(exported.x)
    np.testing.assert_allclose(
        output.scores, exported.estimator.predict_proba(exported.x), atol=1e-5
    )


def test_predict_returns_the_features_the_head_sees(
    mlp: tuple[ModelRuntime, models.Exported],
) -> None:
    runtime, exported = mlp
    head = runtime.manifest.head
    assert head is not None
    output = runtime.predict(exported.x[:5])
    assert output.features is not None
    assert output.features.shape == (5, head.n_features)
    weight, bias = read_head(runtime.model_bytes, head)
    expected = head_forward(head, weight, bias, output.features)
    np.testing.assert_allclose(expected, output.scores, atol=1e-5)


@pytest.mark.parametrize(
    "model",
    [
        pytest.param(models.gemm_classifier(), id="hand-built-gemm"),
        pytest.param(models.matmul_add_regressor(), id="hand-built-matmul-add"),
        pytest.param(models.logistic_regression(binary=True).model, id="skl2onnx-logreg"),
        pytest.param(models.decision_tree().model, id="skl2onnx-tree-no-head"),
    ],
)
def test_any_model_serves_and_passes_its_health_check(model: bytes) -> None:
    runtime = runtime_of(build_package(model))
    report = runtime.health_check()
    assert report.rows == 8
    assert report.latency_ms <= report.budget_ms
    spec = runtime.manifest.inputs[0]
    assert runtime.predict(np.zeros((3, spec.shape[1] or 1), np.float32)).scores.shape[0] == 3


def test_runtime_runs_on_the_cpu_provider_only(mlp: tuple[ModelRuntime, Any]) -> None:
    runtime, _ = mlp
    assert runtime._session.get_providers() == list(PROVIDERS)


def test_json_numbers_float64_and_lists_are_accepted(mlp: tuple[ModelRuntime, Any]) -> None:
    runtime, exported = mlp
    rows = exported.x[:2].astype(np.float64).tolist()
    np.testing.assert_allclose(runtime.predict(rows).scores, runtime.predict(exported.x[:2]).scores)


@pytest.mark.parametrize(
    "bad",
    [
        pytest.param(np.zeros((2, 5), np.float32), id="wrong-width"),
        pytest.param(np.zeros(4, np.float32), id="wrong-rank"),
        pytest.param(np.zeros((1, 2, 4), np.float32), id="too-many-dims"),
        pytest.param([["a", "b", "c", "d"]], id="strings"),
        pytest.param([[1.0, 2.0], [3.0]], id="ragged"),
        pytest.param(np.array([[1e39, 0, 0, 0]]), id="overflows-float32"),
        pytest.param(np.ones((1, 4), bool), id="bool-for-float"),
        pytest.param({"x": np.zeros((1, 4), np.float32)}, id="mapping-with-a-wrong-name"),
    ],
)
def test_runtime_refuses_wrong_shape_or_dtype_with_a_422(
    mlp: tuple[ModelRuntime, Any], bad: Any
) -> None:
    runtime, _ = mlp
    before = runtime.counters()
    with pytest.raises(InvalidInput) as info:
        runtime.predict(bad)
    assert info.value.status_hint == 422
    assert runtime.counters() == before  # the caller's fault, not the model's


def test_integer_inputs_take_whole_numbers_only() -> None:
    node = helper.make_node("Cast", ["x"], ["y"], to=TensorProto.FLOAT)
    model = models.build(
        [node],
        [models.value_info("x", None, 2, dtype=TensorProto.INT64)],
        [models.value_info("y", None, 2)],
    )
    runtime = runtime_of(build_package(model, smoke={"x": np.ones((4, 2), np.float32)}))
    runtime.health_check()
    np.testing.assert_array_equal(runtime.predict([[1.0, 2.0]]).scores, [[1.0, 2.0]])
    with pytest.raises(InvalidInput):
        runtime.predict([[1.5, 2.0]])


def test_nan_scores_fail_the_inference_and_count_their_rows_as_errors() -> None:
    runtime = runtime_of(build_package(nan_model()))
    with pytest.raises(InferenceFailed):
        runtime.predict(np.ones((2, 4), np.float32))
    assert runtime.counters() == (2, 2)  # rows, not requests


def test_runtime_counts_predicted_rows_not_requests(mlp: tuple[ModelRuntime, Any]) -> None:
    runtime, _ = mlp
    before, _ = runtime.counters()
    for rows in (1, 7, 32):
        runtime.predict(np.zeros((rows, 4), np.float32))
    runtime.predict([[0.0] * 4] * 3)
    assert runtime.counters() == (before + 43, 0)


@pytest.mark.parametrize(
    "built",
    [
        pytest.param(build_package(nan_model()), id="nan-outputs"),
        pytest.param(
            with_manifest(build_package(models.gemm_classifier()), latency_budget_ms=0.0),
            id="latency-budget-zero",
        ),
        pytest.param(build_package(models.gemm_classifier(), with_smoke=False), id="no-smoke"),
        pytest.param(
            build_package(models.gemm_classifier(), smoke={"x": np.ones((8, 5), np.float32)}),
            id="smoke-of-another-shape",
        ),
        pytest.param(
            build_package(models.gemm_classifier(), smoke={"z": np.ones((8, 4), np.float32)}),
            id="smoke-for-another-input",
        ),
    ],
)
def test_health_check_fails_an_unhealthy_model(built: Built) -> None:
    with pytest.raises(ModelUnhealthy):
        runtime_of(built).health_check()


def test_health_check_fails_probabilities_outside_zero_one() -> None:
    built = build_package(models.matmul_add_regressor())
    head = built.manifest.head
    assert head is not None
    as_classifier = dataclasses.replace(head, activation="softmax", task="classification")
    with pytest.raises(ModelUnhealthy, match="outside"):
        runtime_of(with_manifest(built, head=as_classifier)).health_check()


def test_onnxruntime_load_failures_are_unhealthy_models() -> None:
    built = build_package(models.gemm_classifier())
    with pytest.raises(ModelUnhealthy):
        ModelRuntime(built.manifest, b"not a model", ref=built.ref)


def test_with_head_serves_new_parameters_for_the_same_version() -> None:
    runtime = runtime_of(build_package(models.gemm_classifier()))
    head = runtime.manifest.head
    assert head is not None
    bias = np.array([1.0, 2.0, 3.0], np.float32)
    retrained = runtime.with_head(np.zeros((head.n_features, head.n_outputs), np.float32), bias)
    assert retrained.ref == runtime.ref
    scores = retrained.predict(np.ones((2, 4), np.float32)).scores
    np.testing.assert_allclose(
        scores, np.tile(np.exp(bias) / np.exp(bias).sum(), (2, 1)), atol=1e-6
    )
    retrained.health_check()


def test_with_head_refuses_a_model_without_a_head() -> None:
    runtime = runtime_of(build_package(models.decision_tree().model))
    with pytest.raises(ShapeMismatch):
        runtime.with_head(np.zeros((4, 3)), np.zeros(3))


def test_a_model_with_several_inputs_takes_a_mapping() -> None:
    node = helper.make_node("Add", ["a", "b"], ["y"])
    model = models.build(
        [node],
        [models.value_info("a", None, 2), models.value_info("b", None, 2)],
        [models.value_info("y", None, 2)],
    )
    runtime = runtime_of(build_package(model))
    runtime.health_check()
    ones = np.ones((1, 2), np.float32)
    np.testing.assert_array_equal(runtime.predict({"a": ones, "b": ones}).scores, [[2.0, 2.0]])
    with pytest.raises(InvalidInput):
        runtime.predict(ones)


def test_model_ref_travels_with_the_runtime() -> None:
    built = build_package(models.gemm_classifier(), name="iris", version=7)
    runtime = runtime_of(built)
    assert runtime.ref == ModelRef("iris", 7, built.sha256)
    assert encode_tensors(built.smoke)  # the smoke inputs are a tensor container


def test_watch_policy_table() -> None:
    policy = WatchPolicy(predictions=10, ms=1000, max_error_rate=0.2)
    assert policy.verdict(5, 0, 10) is None
    assert policy.verdict(5, 3, 10) == "rollback"  # 3 > 0.2 * 10: it cannot recover
    assert policy.verdict(10, 2, 10) == "commit"
    assert policy.verdict(10, 3, 10) == "rollback"
    assert policy.verdict(0, 0, 1000) == "commit"  # a quiet window commits at its deadline
    assert policy.verdict(4, 1, 10, final=True) == "rollback"


def test_runtimes_of_identical_model_bytes_share_one_session_and_keep_their_own_counters() -> None:
    built = build_package(models.gemm_classifier())
    first, second = runtime_of(built), runtime_of(built)
    assert first._session is second._session
    first.predict(np.ones((3, 4), np.float32))
    assert first.counters() == (3, 0)
    assert second.counters() == (0, 0)


def test_a_retrained_head_or_another_thread_count_gets_its_own_session() -> None:
    runtime = runtime_of(build_package(models.gemm_classifier()))
    head = runtime.manifest.head
    assert head is not None
    retrained = runtime.with_head(
        np.zeros((head.n_features, head.n_outputs), np.float32), np.zeros(3, np.float32)
    )
    threaded = ModelRuntime(runtime.manifest, runtime.model_bytes, ref=runtime.ref, threads=2)
    assert len({id(runtime._session), id(retrained._session), id(threaded._session)}) == 3
    scores = runtime.predict(np.ones((2, 4), np.float32)).scores
    assert not np.allclose(scores, retrained.predict(np.ones((2, 4), np.float32)).scores)


def test_the_shared_session_is_freed_with_the_last_runtime_that_holds_it() -> None:
    built = build_package(models.gemm_classifier(hidden=11))
    runtime = runtime_of(built)
    key = (hashlib.sha256(runtime.model_bytes).hexdigest(), 1)
    assert key in runtime_module._SESSIONS
    del runtime
    gc.collect()
    assert key not in runtime_module._SESSIONS
