"""The trainable head: found, exposed, read, rewritten, and consistent with onnxruntime."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from protocol.errors import NonFinite, ShapeMismatch, UnsafeModel
from protocol.headparams import head_forward, read_head, write_head
from protocol.heads import find_head, head_unsupported_reason, prepare_model
from protocol.manifest import Head
from protocol.modelcheck import inspect_model
from tests import models

ATOL = 1e-5
Factory = Callable[[], bytes]


def expect(kind, node, weight, bias, feature, activation, n_features, n_outputs, transposed=False):
    classifies = activation != "identity" or kind == "linear_classifier"
    return Head(
        kind=kind,
        node=node,
        weight=weight,
        bias=bias,
        feature=feature,
        activation=activation,
        task="classification" if classifies else "regression",
        n_features=n_features,
        n_outputs=n_outputs,
        transposed=transposed,
    )


MLP = ("matmul_add", "MatMul1", "coefficient1", "intercepts1", "next_activations")
LINEAR = ("coefficients", "intercepts", "X")
SUPPORTED = [
    pytest.param(
        models.gemm_classifier,
        expect("gemm", "Gemm_2", "w2", "b2", "hidden", "softmax", 6, 3, transposed=True),
        id="gemm-transB-softmax-unnamed-nodes",
    ),
    pytest.param(
        models.matmul_add_regressor,
        expect("matmul_add", "head_matmul", "w2", "b2", "features", "identity", 5, 2),
        id="matmul-add-identity",
    ),
    pytest.param(
        lambda: models.matmul_add_regressor(dtype=np.float64),
        expect("matmul_add", "head_matmul", "w2", "b2", "features", "identity", 5, 2),
        id="matmul-add-float64",
    ),
    pytest.param(
        models.bias_free_classifier,
        expect("matmul_add", "head", "w", None, "x", "softmax", 3, 2),
        id="matmul-without-bias",
    ),
    pytest.param(
        lambda: models.mlp_classifier().model,
        expect(*MLP, "softmax", 5, 3),
        id="skl2onnx-mlp-classifier",
    ),
    pytest.param(
        lambda: models.mlp_classifier(binary=True).model,
        expect(*MLP, "sigmoid", 5, 1),
        id="skl2onnx-mlp-binary",
    ),
    pytest.param(
        lambda: models.mlp_regressor().model,
        expect(*MLP, "identity", 5, 1),
        id="skl2onnx-mlp-regressor-reshape",
    ),
    pytest.param(
        lambda: models.logistic_regression().model,
        expect("linear_classifier", "LinearClassifier", *LINEAR, "softmax", 4, 3, True),
        id="skl2onnx-logistic-normalizer",
    ),
    pytest.param(
        lambda: models.logistic_regression(binary=True).model,
        expect("linear_classifier", "LinearClassifier", *LINEAR, "sigmoid", 4, 1, True),
        id="skl2onnx-logistic-binary",
    ),
    pytest.param(
        lambda: models.linear_regression().model,
        expect("linear_regressor", "LinearRegressor", *LINEAR, "identity", 4, 1, True),
        id="skl2onnx-linear-regression",
    ),
    pytest.param(
        lambda: models.linear_regression(n_targets=2).model,
        expect("linear_regressor", "LinearRegressor", *LINEAR, "identity", 4, 2, True),
        id="skl2onnx-linear-regression-2-targets",
    ),
]
FACTORIES = [pytest.param(p.values[0], id=p.id) for p in SUPPORTED]


def run(model: bytes, rows: int = 9) -> dict[str, np.ndarray]:
    """Every output of ``model`` on fixed random inputs."""
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    (given,) = session.get_inputs()
    dtype = np.float64 if given.type == "tensor(double)" else np.float32
    x = np.random.default_rng(1).normal(size=(rows, given.shape[1])).astype(dtype)
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, {given.name: x}), strict=True))


def scores(model: bytes, head: Head, outputs: dict[str, np.ndarray]) -> np.ndarray:
    """The scores (first float output) as (batch, n_outputs); class 1's column if binary."""
    name = next(s.name for s in inspect_model(model).outputs if s.dtype.startswith("float"))
    values = outputs[name].reshape(len(outputs[name]), -1)
    if head.n_outputs == 1 and values.shape[1] == 2:  # binary: [1 - p, p]
        np.testing.assert_allclose(values[:, 0], 1 - values[:, 1], atol=ATOL)
        return values[:, 1:]
    return values


def prepared(factory: Factory) -> tuple[bytes, Head]:
    model = factory()
    head = find_head(model)
    assert head is not None, head_unsupported_reason(model)
    return prepare_model(model, head), head


@pytest.mark.parametrize(("factory", "expected"), SUPPORTED)
def test_find_head_finds_the_layer_that_produces_the_scores(
    factory: Factory, expected: Head
) -> None:
    assert find_head(factory()) == expected
    assert head_unsupported_reason(factory()) is None


@pytest.mark.parametrize("factory", FACTORIES)
def test_prepared_model_passes_inspection_and_outputs_the_features(factory: Factory) -> None:
    model, head = prepared(factory)
    info = inspect_model(model)
    feature = next(s for s in info.outputs if s.name == head.feature)
    assert feature.shape[-1] == head.n_features
    before, after = run(factory()), run(model)
    assert after[head.feature].shape == (9, head.n_features)
    for name, values in before.items():
        np.testing.assert_array_equal(after[name], values)


@pytest.mark.parametrize("factory", FACTORIES)
def test_head_is_stable_across_prepare_and_prepare_is_idempotent(factory: Factory) -> None:
    model, head = prepared(factory)
    assert find_head(model) == head
    assert prepare_model(model, head) == model
    assert all(node.name for node in onnx.load_from_string(model).graph.node)


@pytest.mark.parametrize("factory", FACTORIES)
def test_head_forward_reproduces_onnxruntime_scores(factory: Factory) -> None:
    model, head = prepared(factory)
    outputs = run(model)
    weight, bias = read_head(model, head)
    assert weight.dtype == bias.dtype == np.float32
    assert (weight.shape, bias.shape) == ((head.n_features, head.n_outputs), (head.n_outputs,))
    predicted = head_forward(head, weight, bias, outputs[head.feature])
    np.testing.assert_allclose(predicted, scores(model, head, outputs), atol=ATOL)


@pytest.mark.parametrize("factory", FACTORIES)
def test_write_head_changes_scores_exactly_as_head_forward_predicts(factory: Factory) -> None:
    model, head = prepared(factory)
    weight, bias = read_head(model, head)
    rng = np.random.default_rng(7)
    new_weight = (weight + rng.normal(scale=0.5, size=weight.shape)).astype(np.float32)
    new_bias = (bias + rng.normal(scale=0.5, size=bias.shape)).astype(np.float32)
    if head.bias is None:
        new_bias[:] = 0
    rewritten = write_head(model, head, new_weight, new_bias)
    outputs = run(rewritten)
    predicted = head_forward(head, new_weight, new_bias, outputs[head.feature])
    np.testing.assert_allclose(predicted, scores(rewritten, head, outputs), atol=ATOL)
    assert not np.allclose(predicted, scores(model, head, run(model)), atol=1e-3)
    np.testing.assert_array_equal(read_head(rewritten, head)[0], new_weight)
    np.testing.assert_array_equal(read_head(rewritten, head)[1], new_bias)


def _stored(model: bytes, name: str) -> onnx.TensorProto:
    stored: onnx.TensorProto = next(
        t for t in onnx.load_from_string(model).graph.initializer if t.name == name
    )
    return stored


@pytest.mark.parametrize(
    ("factory", "name", "dims", "dtype"),
    [
        pytest.param(models.gemm_classifier, "w2", [3, 6], onnx.TensorProto.FLOAT, id="transB"),
        pytest.param(models.matmul_add_regressor, "b2", [1, 2], onnx.TensorProto.FLOAT, id="bias"),
        pytest.param(
            lambda: models.matmul_add_regressor(dtype=np.float64),
            "w2",
            [5, 2],
            onnx.TensorProto.DOUBLE,
            id="float64",
        ),
    ],
)
def test_write_head_keeps_the_graph_layout_and_dtype(
    factory: Factory, name: str, dims: list[int], dtype: int
) -> None:
    model, head = prepared(factory)
    weight, bias = read_head(model, head)
    stored = _stored(write_head(model, head, weight * 2, bias * 2), name)
    assert (list(stored.dims), stored.data_type) == (dims, dtype)
    np.testing.assert_allclose(
        numpy_helper.to_array(stored), 2 * numpy_helper.to_array(_stored(model, name))
    )


def test_binary_logistic_regression_is_written_back_as_antisymmetric_rows() -> None:
    model, head = prepared(lambda: models.logistic_regression(binary=True).model)
    weight, bias = read_head(model, head)
    rewritten = write_head(model, head, weight + 1, bias + 1)
    (node,) = onnx.load_from_string(rewritten).graph.node
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    rows = np.array(attrs["coefficients"], np.float32).reshape(2, 4)
    np.testing.assert_array_equal(rows, [-(weight[:, 0] + 1), weight[:, 0] + 1])
    np.testing.assert_array_equal(attrs["intercepts"], [-(bias[0] + 1), bias[0] + 1])


@pytest.mark.parametrize("binary", [False, True], ids=["multiclass", "binary"])
def test_skl2onnx_mlp_served_by_onnxruntime_equals_sklearn_predict_proba(binary: bool) -> None:
    exported = models.mlp_classifier(binary=binary)
    session = ort.InferenceSession(exported.model, providers=["CPUExecutionProvider"])
    _, probabilities = session.run(None, {"X": exported.x})
    np.testing.assert_allclose(
        probabilities, exported.estimator.predict_proba(exported.x), atol=ATOL
    )


def test_skl2onnx_mlp_head_equals_sklearn_last_layer() -> None:
    exported = models.mlp_classifier()
    model, head = prepared(lambda: exported.model)
    weight, bias = read_head(model, head)
    np.testing.assert_allclose(weight, exported.estimator.coefs_[-1], atol=1e-7)
    np.testing.assert_allclose(bias, exported.estimator.intercepts_[-1], atol=1e-7)


def test_head_forward_logits_are_the_pre_activation_values() -> None:
    model, head = prepared(models.gemm_classifier)
    weight, bias = read_head(model, head)
    features = run(model)[head.feature]
    logits = head_forward(head, weight, bias, features, activate=False)
    np.testing.assert_allclose(logits, features @ weight + bias, rtol=1e-6, atol=1e-6)
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))
    np.testing.assert_allclose(
        head_forward(head, weight, bias, features), exp / exp.sum(axis=1, keepdims=True), atol=1e-6
    )


def _per_step_head() -> bytes:
    """x[N, T, 3] -> MatMul -> Add: a per-timestep layer, not a (batch, features) head."""
    weight = numpy_helper.from_array(np.ones((3, 2), np.float32), "w")
    bias = numpy_helper.from_array(np.zeros(2, np.float32), "b")
    nodes = [
        onnx.helper.make_node("MatMul", ["x", "w"], ["m"]),
        onnx.helper.make_node("Add", ["m", "b"], ["y"]),
    ]
    x, y = models.value_info("x", None, 4, 3), models.value_info("y", None, 4, 2)
    return models.build(nodes, [x], [y], [weight, bias])


def _scaled_gemm() -> bytes:
    """Gemm with alpha = 2: reading its weight as-is would mispredict the scores."""
    weight = numpy_helper.from_array(np.ones((3, 2), np.float32), "w")
    node = onnx.helper.make_node("Gemm", ["x", "w"], ["y"], alpha=2.0)
    return models.build(
        [node], [models.value_info("x", None, 3)], [models.value_info("y", None, 2)], [weight]
    )


@pytest.mark.parametrize(
    ("factory", "scores_name", "reason"),
    [
        pytest.param(_per_step_head, None, "(batch, features)", id="per-timestep-matmul"),
        pytest.param(_scaled_gemm, None, "alpha", id="gemm-with-alpha"),
        pytest.param(lambda: models.sgd_classifier().model, None, "Div", id="sgd-ovr-normalised"),
        pytest.param(
            lambda: models.decision_tree().model, None, "TreeEnsembleClassifier", id="tree"
        ),
        pytest.param(models.argmax_model, None, "no float output", id="argmax-only"),
        pytest.param(models.shared_weight_model, None, "shared", id="tied-weights"),
        pytest.param(models.gemm_classifier, "logits", "not a graph output", id="not-an-output"),
        pytest.param(lambda: models.mlp_classifier().model, "label", "Cast", id="label-output"),
    ],
)
def test_models_without_a_supported_head_still_serve_with_a_reason(
    factory: Factory, scores_name: str | None, reason: str
) -> None:
    model = factory()
    inspect_model(model)
    assert find_head(model, scores_name) is None
    assert reason in (head_unsupported_reason(model, scores_name) or "")


GEMM = expect("gemm", "Gemm_2", "w2", "b2", "hidden", "softmax", 6, 3, transposed=True)
MISMATCHED = [
    pytest.param(GEMM, np.zeros((6, 2)), np.zeros(3), ShapeMismatch, id="weight-shape"),
    pytest.param(GEMM, np.zeros((3, 6)), np.zeros(3), ShapeMismatch, id="weight-transposed"),
    pytest.param(GEMM, np.zeros((6, 3)), np.zeros(4), ShapeMismatch, id="bias-shape"),
    pytest.param(GEMM, np.full((6, 3), np.nan), np.zeros(3), NonFinite, id="nan-weight"),
    pytest.param(GEMM, np.zeros((6, 3)), np.array([0, np.inf, 0]), NonFinite, id="inf-bias"),
    pytest.param(GEMM, np.full((6, 3), "a"), np.zeros(3), ShapeMismatch, id="not-numbers"),
]


@pytest.mark.parametrize(("head", "weight", "bias", "error"), MISMATCHED)
def test_write_head_refuses_parameters_that_do_not_fit(
    head: Head, weight: np.ndarray, bias: np.ndarray, error: type[Exception]
) -> None:
    with pytest.raises(error):
        write_head(models.gemm_classifier(), head, weight, bias)


def test_write_head_refuses_a_float32_value_that_overflows() -> None:
    weight, bias = np.full((6, 3), 1e39), np.zeros(3)
    with pytest.raises(NonFinite):
        write_head(models.gemm_classifier(), GEMM, weight, bias)


def test_write_head_refuses_a_bias_for_a_head_without_one() -> None:
    model, head = prepared(models.bias_free_classifier)
    weight, bias = read_head(model, head)
    np.testing.assert_array_equal(bias, np.zeros(2, np.float32))
    with pytest.raises(ShapeMismatch, match="no bias"):
        write_head(model, head, weight, bias + 1)


@pytest.mark.parametrize(
    "head",
    [
        pytest.param(replace(GEMM, node="Gemm_0"), id="other-node"),
        pytest.param(replace(GEMM, weight="w1"), id="other-weight"),
        pytest.param(replace(GEMM, bias="b1"), id="other-bias"),
        pytest.param(replace(GEMM, n_features=5), id="n-features"),
        pytest.param(replace(GEMM, transposed=False), id="layout"),
        pytest.param(replace(GEMM, feature="x"), id="feature"),
        pytest.param(replace(GEMM, kind="matmul_add"), id="kind"),
    ],
)
def test_a_head_that_does_not_describe_the_model_is_refused(head: Head) -> None:
    model = models.gemm_classifier()
    for call in (
        lambda: read_head(model, head),
        lambda: prepare_model(model, head),
        lambda: write_head(model, head, np.zeros((head.n_features, 3)), np.zeros(3)),
    ):
        with pytest.raises(ShapeMismatch):
            call()


def test_head_forward_refuses_features_of_the_wrong_width() -> None:
    weight, bias = read_head(models.gemm_classifier(), GEMM)
    with pytest.raises(ShapeMismatch):
        head_forward(GEMM, weight, bias, np.zeros((2, 5), np.float32))


@pytest.mark.parametrize("call", [find_head, head_unsupported_reason], ids=lambda f: f.__name__)
def test_head_detection_refuses_bytes_that_are_not_a_model(call: Callable[[bytes], object]) -> None:
    with pytest.raises(UnsafeModel):
        call(b"\x08\xff\xff")
