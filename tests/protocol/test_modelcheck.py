"""inspect_model refuses hostile or incompatible ONNX before any runtime sees it (T5, B22)."""

from __future__ import annotations

import builtins
import os
from collections.abc import Callable

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.capi.onnxruntime_pybind11_state import Fail

from protocol.errors import Incompatible, Oversize, ProtocolError, UnsafeModel
from protocol.manifest import ModelManifest, TensorSpec
from protocol.modelcheck import ML_OPSET_MAX, OPSET_RANGE, check_io, inspect_model
from protocol.package import file_entry
from tests import models

GOOD: list[object] = [
    pytest.param(models.gemm_classifier, id="gemm-classifier"),
    pytest.param(models.matmul_add_regressor, id="matmul-add-regressor"),
    pytest.param(lambda: models.mlp_classifier().model, id="skl2onnx-mlp-classifier"),
    pytest.param(lambda: models.mlp_classifier(binary=True).model, id="skl2onnx-mlp-binary"),
    pytest.param(lambda: models.mlp_regressor().model, id="skl2onnx-mlp-regressor"),
    pytest.param(lambda: models.logistic_regression().model, id="skl2onnx-logistic"),
    pytest.param(lambda: models.linear_regression().model, id="skl2onnx-linear-regression"),
    pytest.param(lambda: models.decision_tree().model, id="skl2onnx-decision-tree"),
    pytest.param(models.argmax_model, id="argmax"),
    pytest.param(models.local_function_model, id="local-function-with-safe-body"),
    pytest.param(lambda: models.opset_model(OPSET_RANGE[1], ML_OPSET_MAX), id="highest-opsets"),
]


def _sparse_external() -> bytes:
    values = numpy_helper.from_array(np.ones(1, np.float32), "w")
    models.external(values, "/etc/shadow")
    indices = numpy_helper.from_array(np.zeros(1, np.int64), "w_indices")
    sparse = helper.make_sparse_tensor(values, indices, [2])
    model = onnx.ModelProto.FromString(models.add_model(numpy_helper.from_array(np.ones(2), "b")))
    model.graph.sparse_initializer.append(sparse)
    model.graph.node[0].input[1] = "w"
    del model.graph.initializer[:]
    return models.serialize(model)


def _location_only() -> bytes:
    """EXTERNAL data location with no external_data entries at all."""
    model = onnx.ModelProto.FromString(models.add_model(numpy_helper.from_array(np.ones(2), "w")))
    model.graph.initializer[0].data_location = TensorProto.EXTERNAL
    return models.serialize(model)


def _training_info() -> bytes:
    model = onnx.ModelProto.FromString(models.opset_model(models.OPSET))
    model.training_info.add().algorithm.CopyFrom(model.graph)
    return models.serialize(model)


def _negative_dims() -> bytes:
    return models.add_model(
        TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[-2], raw_data=bytes(8))
    )


def _conflicting_opsets() -> bytes:
    model = onnx.ModelProto.FromString(models.opset_model(21))
    model.opset_import.add(domain="ai.onnx", version=13)
    return models.serialize(model)


def _sparse_bomb() -> bytes:
    values = numpy_helper.from_array(np.ones(1, np.float32), "w")
    indices = numpy_helper.from_array(np.zeros(1, np.int64), "w_indices")
    model = onnx.ModelProto.FromString(models.opset_model(21))
    model.graph.sparse_initializer.append(helper.make_sparse_tensor(values, indices, [1 << 40]))
    return models.serialize(model)


def _zipmap_output() -> bytes:
    """A sequence-of-maps output (skl2onnx's zipmap=True): no TensorSpec describes it."""
    zipmap = helper.make_node(
        "ZipMap", ["x"], ["probabilities"], domain="ai.onnx.ml", classlabels_int64s=[0, 1]
    )
    output = helper.make_value_info(
        "probabilities",
        helper.make_sequence_type_proto(
            helper.make_map_type_proto(
                TensorProto.INT64, helper.make_tensor_type_proto(TensorProto.FLOAT, [])
            )
        ),
    )
    return models.build(
        [zipmap], [models.value_info("x", None, 2)], [output], opsets={"": 21, "ai.onnx.ml": 1}
    )


HOSTILE: list[object] = [
    pytest.param(lambda: b"\x08\xff\xff", UnsafeModel, "not an ONNX model", id="not-protobuf"),
    pytest.param(lambda: b"", UnsafeModel, "no graph", id="empty-bytes"),
    pytest.param(
        models.external_initializer, UnsafeModel, "external", id="external-data-path-traversal"
    ),
    pytest.param(
        lambda: models.external_initializer("/etc/passwd"),
        UnsafeModel,
        "external",
        id="external-data-absolute-path",
    ),
    pytest.param(
        lambda: models.external_initializer("weights.bin"),
        UnsafeModel,
        "external",
        id="external-data-beside-the-model",
    ),
    pytest.param(_location_only, UnsafeModel, "external", id="external-location-without-entries"),
    pytest.param(_sparse_external, UnsafeModel, "external", id="external-sparse-initializer"),
    pytest.param(
        models.external_constant_in_if, UnsafeModel, "If/Constant", id="external-constant-in-if"
    ),
    pytest.param(models.custom_domain_node, UnsafeModel, "com.evil", id="custom-domain"),
    pytest.param(
        lambda: models.custom_domain_node(nested=True),
        UnsafeModel,
        "graph/If: .*com.evil",
        id="custom-domain-in-subgraph",
    ),
    pytest.param(
        lambda: models.custom_domain_node("com.microsoft"),
        UnsafeModel,
        "com.microsoft",
        id="contrib-ops-not-allowed-by-default",
    ),
    pytest.param(
        models.evil_function, UnsafeModel, "function Twice", id="custom-domain-in-local-function"
    ),
    pytest.param(lambda: models.opset_model(6), Incompatible, "opset 6", id="opset-below-range"),
    pytest.param(
        lambda: models.opset_model(29), Incompatible, "opset 29", id="opset-above-onnxruntime"
    ),
    pytest.param(
        lambda: models.opset_model(21, 6), Incompatible, "ai.onnx.ml", id="ml-opset-above-range"
    ),
    pytest.param(_conflicting_opsets, Incompatible, "one default", id="conflicting-opsets"),
    pytest.param(models.huge_initializer, UnsafeModel, "declares", id="huge-declared-dims"),
    pytest.param(_negative_dims, UnsafeModel, "negative", id="negative-dimension"),
    pytest.param(_sparse_bomb, UnsafeModel, "when dense", id="sparse-tensor-dense-bomb"),
    pytest.param(models.unchecked_model, UnsafeModel, "onnx.checker", id="onnx-checker-refuses"),
    pytest.param(_training_info, UnsafeModel, "training_info", id="training-graphs"),
    pytest.param(_zipmap_output, Incompatible, "sequence", id="non-tensor-output"),
]


@pytest.mark.parametrize("factory", GOOD)
def test_inspect_accepts_models_a_device_may_run(factory: Callable[[], bytes]) -> None:
    info = inspect_model(factory())
    assert info.inputs
    assert info.outputs
    assert OPSET_RANGE[0] <= info.opset <= OPSET_RANGE[1]


def test_inspect_describes_the_model_io_and_parameters() -> None:
    info = inspect_model(models.gemm_classifier(n_features=4, hidden=6, n_classes=3))
    assert info.opset == models.OPSET
    assert info.inputs == (TensorSpec("x", "float32", (None, 4)),)
    assert info.outputs == (TensorSpec("probabilities", "float32", (None, 3)),)
    assert (info.initializers, info.parameters) == (4, 4 * 6 + 6 + 3 * 6 + 3)


def test_inspect_counts_ml_operator_coefficients_as_parameters() -> None:
    info = inspect_model(models.logistic_regression().model)
    assert (info.initializers, info.parameters) == (0, 3 * 4 + 3)


@pytest.mark.parametrize(("factory", "error", "match"), HOSTILE)
def test_inspect_refuses_hostile_model(
    factory: Callable[[], bytes], error: type[ProtocolError], match: str
) -> None:
    with pytest.raises(error, match=match) as raised:
        inspect_model(factory())
    assert type(raised.value) is error


def test_inspect_refuses_an_oversize_model_before_parsing() -> None:
    model = models.gemm_classifier()
    with pytest.raises(Oversize):
        inspect_model(model, max_bytes=len(model) - 1)
    with pytest.raises(Oversize):
        inspect_model(b"\xff" * 100, max_bytes=99)  # not even parsed: would be UnsafeModel


def test_inspect_names_the_traversal_path_without_following_it() -> None:
    with pytest.raises(UnsafeModel, match=r"\.\./\.\./etc/passwd"):
        inspect_model(models.external_initializer())


@pytest.mark.parametrize(
    ("factory", "error"),
    [
        pytest.param(models.external_initializer, UnsafeModel, id="traversal"),
        pytest.param(models.external_constant_in_if, UnsafeModel, id="constant-in-if"),
        pytest.param(models.gemm_classifier, None, id="good-model"),
        pytest.param(lambda: models.mlp_classifier().model, None, id="skl2onnx-model"),
    ],
)
def test_inspect_never_touches_the_filesystem(
    factory: Callable[[], bytes], error: type[Exception] | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = factory()

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"inspect_model touched the filesystem: {args[:1]}")

    for module, name in ((builtins, "open"), (os, "open"), (os, "stat"), (os, "listdir")):
        monkeypatch.setattr(module, name, refuse)
    if error is None:
        inspect_model(model)
    else:
        with pytest.raises(error):
            inspect_model(model)


def test_contrib_domain_passes_when_the_fleet_allows_it() -> None:
    # FusedMatMul is onnxruntime's; the checker does not know it, so only the policy decides.
    node = helper.make_node("FusedMatMul", ["x", "x"], ["y"], domain="com.microsoft")
    model = models.build(
        [node],
        [models.value_info("x", 2, 2)],
        [models.value_info("y", 2, 2)],
        opsets={"": models.OPSET, "com.microsoft": 1},
    )
    with pytest.raises(UnsafeModel):
        inspect_model(model)
    allowed = frozenset({"", "ai.onnx", "ai.onnx.ml", "com.microsoft"})
    assert inspect_model(model, allowed_domains=allowed).outputs[0].name == "y"


def test_a_narrower_opset_range_serves_older_runtimes() -> None:
    with pytest.raises(Incompatible, match="outside the supported range"):
        inspect_model(models.opset_model(21), opset_range=(7, 20))


@pytest.mark.parametrize("opset", [OPSET_RANGE[0], 13, OPSET_RANGE[1]])
def test_onnxruntime_runs_every_opset_in_the_default_range(opset: int) -> None:
    model = models.opset_model(opset)
    inspect_model(model)
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    (y,) = session.run(None, {"x": np.array([[-1.0, 2.0]], np.float32)})
    np.testing.assert_array_equal(y, [[0.0, 2.0]])


def test_onnxruntime_refuses_the_opset_above_the_range() -> None:
    with pytest.raises(Fail, match=f"till opset {OPSET_RANGE[1]}"):
        ort.InferenceSession(models.opset_model(OPSET_RANGE[1] + 1))


def _manifest(inputs: tuple[TensorSpec, ...], outputs: tuple[TensorSpec, ...], opset: int = 21):
    model = models.gemm_classifier()
    return ModelManifest(
        name="gemm",
        version=1,
        opset=opset,
        inputs=inputs,
        outputs=outputs,
        scores=outputs[0].name,
        files=(file_entry("model.onnx", model),),
    )


X = TensorSpec("x", "float32", (None, 4))
PROBS = TensorSpec("probabilities", "float32", (None, 3))


def test_check_io_accepts_the_model_its_manifest_describes() -> None:
    check_io(_manifest((X,), (PROBS,)), inspect_model(models.gemm_classifier()))


@pytest.mark.parametrize(
    "manifest",
    [
        pytest.param(_manifest((TensorSpec("input", "float32", (None, 4)),), (PROBS,)), id="name"),
        pytest.param(_manifest((TensorSpec("x", "float64", (None, 4)),), (PROBS,)), id="dtype"),
        pytest.param(_manifest((TensorSpec("x", "float32", (None, 5)),), (PROBS,)), id="shape"),
        pytest.param(_manifest((X,), (PROBS, PROBS)), id="extra-output"),
        pytest.param(_manifest((X,), (TensorSpec("probabilities", "float32", (1, 3)),)), id="dim"),
        pytest.param(_manifest((X,), (PROBS,), opset=17), id="opset"),
    ],
)
def test_check_io_refuses_a_model_that_differs_from_its_manifest(manifest: ModelManifest) -> None:
    with pytest.raises(Incompatible):
        check_io(manifest, inspect_model(models.gemm_classifier()))
