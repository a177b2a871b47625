"""Small, deterministic ONNX models for tests: no downloads, a fixed seed, milliseconds each.

Factories return ONNX bytes, or an :class:`Exported` (bytes plus the fitted scikit-learn
estimator and its data) for skl2onnx exports. They are cached: treat results as
read-only. Hand-built models use opset :data:`OPSET` and IR version :data:`IR_VERSION`.

Good models (a supported trainable head unless noted):

- :func:`gemm_classifier`: Gemm -> Relu -> Gemm(transB=1) -> Softmax, unnamed nodes.
- :func:`matmul_add_regressor`: MatMul+Add -> Tanh -> MatMul+Add, identity head.
- :func:`mlp_classifier`, :func:`mlp_regressor`, :func:`logistic_regression`,
  :func:`linear_regression`: skl2onnx exports (``zipmap=False``).
- :func:`bias_free_classifier`: MatMul -> Softmax, a head without a bias.
- :func:`local_function_model`: calls a model-local function (no head; safe body).
- :func:`sgd_classifier`, :func:`decision_tree`, :func:`argmax_model`,
  :func:`shared_weight_model`: valid models with no supported head.

Hostile models (threat-model T5, B22): :func:`external_initializer`,
:func:`external_constant_in_if`, :func:`custom_domain_node`, :func:`evil_function`,
:func:`opset_model` (outside the range), :func:`huge_initializer`, :func:`unchecked_model`;
:func:`add_model` and :func:`external` help build more.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

SEED = 0
OPSET = 21
IR_VERSION = 10


@dataclass(frozen=True)
class Exported:
    """An skl2onnx export with the estimator it came from and the data it was fitted on."""

    model: bytes
    estimator: Any
    x: np.ndarray


def build(
    nodes: list[onnx.NodeProto],
    inputs: list[onnx.ValueInfoProto],
    outputs: list[onnx.ValueInfoProto],
    initializers: Sequence[onnx.TensorProto] = (),
    *,
    opsets: dict[str, int] | None = None,
    functions: Sequence[onnx.FunctionProto] = (),
) -> bytes:
    """Serialise a one-graph model (default: opset :data:`OPSET` only), unchecked."""
    imports = [helper.make_opsetid(d, v) for d, v in (opsets or {"": OPSET}).items()]
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(initializers))
    model = helper.make_model(
        graph, opset_imports=imports, ir_version=IR_VERSION, functions=list(functions)
    )
    return serialize(model)


def serialize(model: onnx.ModelProto) -> bytes:
    """``model.SerializeToString()``, typed."""
    data: bytes = model.SerializeToString()
    return data


def value_info(
    name: str, *shape: int | None, dtype: int = TensorProto.FLOAT
) -> onnx.ValueInfoProto:
    """A tensor value info; ``None`` is a dynamic dimension."""
    return helper.make_tensor_value_info(name, dtype, list(shape))


def _rng() -> np.random.Generator:
    return np.random.default_rng(SEED)


@cache
def gemm_classifier(n_features: int = 4, hidden: int = 6, n_classes: int = 3) -> bytes:
    """Hand-built x[N,F] -> Gemm -> Relu -> Gemm(transB=1) -> Softmax "probabilities"."""
    rng = _rng()
    inits = [
        numpy_helper.from_array(rng.normal(size=(n_features, hidden)).astype(np.float32), "w1"),
        numpy_helper.from_array(rng.normal(size=hidden).astype(np.float32), "b1"),
        numpy_helper.from_array(rng.normal(size=(n_classes, hidden)).astype(np.float32), "w2"),
        numpy_helper.from_array(rng.normal(size=n_classes).astype(np.float32), "b2"),
    ]
    nodes = [
        helper.make_node("Gemm", ["x", "w1", "b1"], ["h"]),
        helper.make_node("Relu", ["h"], ["hidden"]),
        helper.make_node("Gemm", ["hidden", "w2", "b2"], ["logits"], transB=1),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=-1),
    ]
    return build(
        nodes,
        [value_info("x", None, n_features)],
        [value_info("probabilities", None, n_classes)],
        inits,
    )


@cache
def matmul_add_regressor(
    n_features: int = 3, hidden: int = 5, n_outputs: int = 2, dtype: type = np.float32
) -> bytes:
    """Hand-built x -> MatMul+Add -> Tanh -> MatMul+Add "prediction" (identity head)."""
    rng = _rng()
    onnx_type = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    inits = [
        numpy_helper.from_array(rng.normal(size=(n_features, hidden)).astype(dtype), "w1"),
        numpy_helper.from_array(rng.normal(size=hidden).astype(dtype), "b1"),
        numpy_helper.from_array(rng.normal(size=(hidden, n_outputs)).astype(dtype), "w2"),
        numpy_helper.from_array(rng.normal(size=(1, n_outputs)).astype(dtype), "b2"),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["m1"], name="hidden_matmul"),
        helper.make_node("Add", ["m1", "b1"], ["a1"], name="hidden_add"),
        helper.make_node("Tanh", ["a1"], ["features"], name="tanh"),
        helper.make_node("MatMul", ["features", "w2"], ["m2"], name="head_matmul"),
        helper.make_node("Add", ["b2", "m2"], ["prediction"], name="head_add"),
    ]
    return build(
        nodes,
        [value_info("x", None, n_features, dtype=onnx_type)],
        [value_info("prediction", None, n_outputs, dtype=onnx_type)],
        inits,
    )


@cache
def bias_free_classifier(n_features: int = 3, n_classes: int = 2) -> bytes:
    """x -> MatMul (no bias) -> Softmax "probabilities": a head whose bias is None."""
    weight = numpy_helper.from_array(
        _rng().normal(size=(n_features, n_classes)).astype(np.float32), "w"
    )
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["logits"], name="head"),
        helper.make_node("Softmax", ["logits"], ["probabilities"], name="softmax"),
    ]
    return build(
        nodes,
        [value_info("x", None, n_features)],
        [value_info("probabilities", None, n_classes)],
        [weight],
    )


def _data(n_features: int = 4, rows: int = 80) -> np.ndarray:
    data: np.ndarray = _rng().normal(size=(rows, n_features)).astype(np.float32)
    return data


def _export(estimator: Any, x: np.ndarray, y: np.ndarray) -> Exported:
    from skl2onnx import to_onnx
    from sklearn.exceptions import ConvergenceWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        estimator.fit(x, y)
    options = {id(estimator): {"zipmap": False}} if hasattr(estimator, "classes_") else None
    model = to_onnx(estimator, x[:1], options=options, target_opset=OPSET)
    x.setflags(write=False)  # cached: shared by every test that asks
    return Exported(serialize(model), estimator, x)


def _labels(x: np.ndarray, n_classes: int) -> np.ndarray:
    if n_classes == 2:
        return (x[:, 0] + 0.5 * x[:, 1] > 0).astype(np.int64)
    return (x[:, 0] > 0).astype(np.int64) + (x[:, 1] > 0.5).astype(np.int64)


def _targets(x: np.ndarray, n_targets: int = 1) -> np.ndarray:
    y: np.ndarray = x @ np.array([[1.0, -0.5], [-2.0, 1.0], [0.5, 0.0], [0.0, 2.0]]) + [0.3, -0.1]
    return y[:, 0] if n_targets == 1 else y[:, :n_targets]


@cache
def mlp_classifier(binary: bool = False) -> Exported:
    """skl2onnx MLPClassifier (one hidden layer of 5); binary ends Sigmoid -> [1-p, p]."""
    from sklearn.neural_network import MLPClassifier

    x = _data()
    estimator = MLPClassifier(hidden_layer_sizes=(5,), max_iter=200, random_state=SEED)
    return _export(estimator, x, _labels(x, 2 if binary else 3))


@cache
def mlp_regressor() -> Exported:
    """skl2onnx MLPRegressor: its head's output goes through a Reshape to [-1, 1]."""
    from sklearn.neural_network import MLPRegressor

    x = _data()
    estimator = MLPRegressor(hidden_layer_sizes=(5,), max_iter=200, random_state=SEED)
    return _export(estimator, x, _targets(x))


@cache
def logistic_regression(binary: bool = False) -> Exported:
    """skl2onnx LogisticRegression: LinearClassifier (binary: two antisymmetric rows)."""
    from sklearn.linear_model import LogisticRegression

    x = _data()
    return _export(LogisticRegression(), x, _labels(x, 2 if binary else 3))


@cache
def linear_regression(n_targets: int = 1) -> Exported:
    """skl2onnx LinearRegression: a LinearRegressor with ``targets = n_targets``."""
    from sklearn.linear_model import LinearRegression

    x = _data()
    return _export(LinearRegression(), x, _targets(x, n_targets))


@cache
def sgd_classifier() -> Exported:
    """skl2onnx SGDClassifier(log_loss): MatMul+Add, then one-vs-rest normalisation."""
    from sklearn.linear_model import SGDClassifier

    x = _data()
    return _export(SGDClassifier(loss="log_loss", random_state=SEED), x, _labels(x, 3))


@cache
def decision_tree() -> Exported:
    """skl2onnx DecisionTreeClassifier: a TreeEnsembleClassifier, nothing to retrain."""
    from sklearn.tree import DecisionTreeClassifier

    x = _data()
    return _export(DecisionTreeClassifier(max_depth=3, random_state=SEED), x, _labels(x, 3))


@cache
def argmax_model(n_features: int = 4) -> bytes:
    """A single ArgMax over the input: only an int64 output."""
    node = helper.make_node("ArgMax", ["x"], ["label"], axis=1, keepdims=0)
    return build(
        [node],
        [value_info("x", None, n_features)],
        [value_info("label", None, dtype=TensorProto.INT64)],
    )


@cache
def shared_weight_model() -> bytes:
    """Two Gemms sharing one weight (tied layers): writing it would change the features."""
    w = numpy_helper.from_array(_rng().normal(size=(3, 3)).astype(np.float32), "w")
    nodes = [
        helper.make_node("Gemm", ["x", "w"], ["h"], name="first"),
        helper.make_node("Gemm", ["h", "w"], ["y"], name="second"),
    ]
    return build(nodes, [value_info("x", None, 3)], [value_info("y", None, 3)], [w])


def add_model(weight: onnx.TensorProto, *, opsets: dict[str, int] | None = None) -> bytes:
    """x[N,2] + ``weight`` -> y: a carrier for hostile initializers."""
    node = helper.make_node("Add", ["x", weight.name], ["y"])
    return build(
        [node], [value_info("x", None, 2)], [value_info("y", None, 2)], [weight], opsets=opsets
    )


def external(tensor: onnx.TensorProto, location: str) -> onnx.TensorProto:
    """``tensor`` rewritten to claim its data lives in the file ``location``."""
    tensor.ClearField("raw_data")
    tensor.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", "8")):
        tensor.external_data.add(key=key, value=value)
    return tensor


@cache
def external_initializer(location: str = "../../etc/passwd") -> bytes:
    """An initializer whose data is "at" ``location`` (CVE-2022-25882 class)."""
    weight = numpy_helper.from_array(np.zeros(2, np.float32), "w")
    return add_model(external(weight, location))


@cache
def external_constant_in_if(location: str = "../../etc/passwd") -> bytes:
    """An If whose then-branch holds a Constant with external data."""
    hidden = external(numpy_helper.from_array(np.zeros(2, np.float32), "c"), location)
    then = helper.make_graph(
        [helper.make_node("Constant", [], ["t"], value=hidden)], "then", [], [value_info("t", 2)]
    )
    other = helper.make_graph(
        [helper.make_node("Constant", [], ["e"], value_floats=[0.0, 0.0])],
        "else",
        [],
        [value_info("e", 2)],
    )
    node = helper.make_node("If", ["cond"], ["y"], then_branch=then, else_branch=other)
    return build(
        [node],
        [value_info("cond", dtype=TensorProto.BOOL)],
        [value_info("y", 2)],
        opsets={"": OPSET},
    )


@cache
def custom_domain_node(domain: str = "com.evil", nested: bool = False) -> bytes:
    """A node in ``domain`` (``nested``: inside an If branch), e.g. a custom-op library's."""
    evil = helper.make_node("Evil", ["x"], ["e"], domain=domain)
    if not nested:
        return build(
            [evil],
            [value_info("x", None, 2)],
            [value_info("e", None, 2)],
            opsets={"": OPSET, domain: 1},
        )
    branch = helper.make_graph([evil], "then", [], [value_info("e", None, 2)])
    other = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["o"])], "else", [], [value_info("o", None, 2)]
    )
    node = helper.make_node("If", ["cond"], ["y"], then_branch=branch, else_branch=other)
    return build(
        [node],
        [value_info("x", None, 2), value_info("cond", dtype=TensorProto.BOOL)],
        [value_info("y", None, 2)],
        opsets={"": OPSET, domain: 1},
    )


@cache
def local_function_model(body_domain: str = "") -> bytes:
    """A node calling a model-local function ``local.fn::Twice`` whose body is in
    ``body_domain`` ("" is safe: Add; anything else: an ``Evil`` op there)."""
    op = "Add" if body_domain == "" else "Evil"
    body = helper.make_node(op, ["a", "a"], ["b"], domain=body_domain)
    imports = [helper.make_opsetid("", OPSET)]
    if body_domain:
        imports.append(helper.make_opsetid(body_domain, 1))
    function = helper.make_function("local.fn", "Twice", ["a"], ["b"], [body], imports)
    call = helper.make_node("Twice", ["x"], ["y"], domain="local.fn")
    opsets = {"": OPSET, "local.fn": 1} | ({body_domain: 1} if body_domain else {})
    return build(
        [call],
        [value_info("x", None, 2)],
        [value_info("y", None, 2)],
        opsets=opsets,
        functions=[function],
    )


def evil_function() -> bytes:
    """A model-local function whose body calls an op in ``com.evil``."""
    return local_function_model("com.evil")


@cache
def opset_model(opset: int, ml_opset: int | None = None) -> bytes:
    """A one-Relu model importing default opset ``opset`` (and ``ai.onnx.ml`` if given)."""
    opsets = {"": opset} | ({"ai.onnx.ml": ml_opset} if ml_opset is not None else {})
    node = helper.make_node("Relu", ["x"], ["y"])
    return build([node], [value_info("x", None, 2)], [value_info("y", None, 2)], opsets=opsets)


@cache
def huge_initializer(dims: tuple[int, ...] = (1 << 30,)) -> bytes:
    """An initializer declaring ``dims`` while holding 8 bytes (a memory bomb)."""
    weight = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=dims, raw_data=bytes(8))
    return add_model(weight)


@cache
def unchecked_model() -> bytes:
    """Passes every rule but onnx.checker: a node reads a tensor nothing produces."""
    node = helper.make_node("Add", ["x", "nowhere"], ["y"])
    return build([node], [value_info("x", None, 2)], [value_info("y", None, 2)])


def swap_classes(model: bytes, a: int = 0, b: int = 1, *, w: str = "w2", bias: str = "b2") -> bytes:
    """``model`` (a :func:`gemm_classifier`) with classes ``a`` and ``b`` swapped: its last
    layer's rows exchanged, so its outputs stay valid probabilities, only under the wrong
    labels (what a mislabelled export ships)."""
    proto = onnx.load_from_string(model)
    for init in proto.graph.initializer:
        if init.name in (w, bias):
            array = numpy_helper.to_array(init).copy()
            array[[a, b]] = array[[b, a]]
            init.CopyFrom(numpy_helper.from_array(array, init.name))
    return serialize(proto)


def nudged(model: bytes, scale: float = 1e-3, seed: int = 7) -> bytes:
    """``model`` with every float initializer moved by ``scale``-sized noise: a retrained
    version that agrees with it on nearly every row."""
    proto = onnx.load_from_string(model)
    rng = np.random.default_rng(seed)
    for init in proto.graph.initializer:
        array = numpy_helper.to_array(init)
        if array.dtype == np.float32:
            moved = array + rng.normal(scale=scale, size=array.shape).astype(np.float32)
            init.CopyFrom(numpy_helper.from_array(moved, init.name))
    return serialize(proto)
