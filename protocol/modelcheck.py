"""Refuse hostile or incompatible ONNX models before any runtime sees them (threat-model T5, B22).

An ONNX file is data that a runtime turns into code paths: it can point at files outside
itself (external data, the CVE-2022-25882 class: onnx issues 3991 and 7717), call
operators that only a custom library provides, or declare tensors far larger than the
bytes it carries. :func:`inspect_model` reads the model from bytes only, walks every
graph (the main graph, If/Loop/Scan bodies at any depth, model-local function bodies)
and refuses, in this order:

1. more than ``max_bytes`` bytes (:class:`Oversize`), before parsing;
2. bytes that do not parse as a ``ModelProto`` (:class:`UnsafeModel`);
3. ``training_info`` (graphs an inference runtime never needs);
4. any tensor (initializer, sparse initializer, node attribute, function default) whose
   data lives outside the model: ``data_location = EXTERNAL`` or ``external_data``
   entries, whatever the path says; nothing here ever resolves such a path;
5. tensors declaring more elements than the model's bytes could hold, negative
   dimensions, and sparse tensors whose dense form exceeds ``max_bytes`` elements;
6. nodes and opset imports in a domain outside ``allowed_domains``; a node calling a
   function defined in the model itself is allowed, since its body is checked too;
7. a default-domain opset outside ``opset_range``, or an ``ai.onnx.ml`` opset above
   :data:`ML_OPSET_MAX` (:class:`Incompatible`);
8. whatever ``onnx.checker.check_model(..., full_check=True)`` refuses: the structural
   checks plus strict shape inference, so a graph whose types do not line up is refused
   here, with a reason, rather than by the runtime on the device;
9. graph inputs or outputs that a :class:`TensorSpec` cannot describe (sequences, maps,
   strings, unknown rank: :class:`Incompatible`).

The default opset ceiling, 28, is what onnxruntime 1.32 supports: it loads models up to
opset 28 ("Current official support for domain ai.onnx is till opset 28") and refuses
29, and its CPU provider registers a kernel for the newest schema of every operator it
implements up to 28 (checked with ``get_all_opkernel_def``). For ``ai.onnx.ml`` it
stops at 5. A fleet pinned to an older runtime passes a lower ``opset_range`` (e.g.
onnxruntime 1.17 stops at opset 20).

What this module does not do: run the model. Operators that allocate from runtime
values (``ConstantOfShape``, ``Expand``) and latency are the health check's job, in
the agent, with the smoke inputs (threat-model B23).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import onnx
from google.protobuf.message import DecodeError

from protocol.errors import Incompatible, Oversize, ProtocolError, UnsafeModel
from protocol.manifest import DType, ModelManifest, TensorSpec

DEFAULT_DOMAINS = frozenset({"", "ai.onnx", "ai.onnx.ml"})
OPSET_RANGE = (7, 28)
"""Default-domain opsets onnxruntime 1.32 runs (see the module docstring)."""
ML_OPSET_MAX = 5
MAX_MODEL_BYTES = 256 * 1024 * 1024
_ELEMENTS_PER_BYTE = 4
"""The densest element type (2-bit integers) packs four elements in a byte."""

_DTYPES: dict[int, DType] = {
    onnx.TensorProto.FLOAT: "float32",
    onnx.TensorProto.DOUBLE: "float64",
    onnx.TensorProto.FLOAT16: "float16",
    onnx.TensorProto.INT64: "int64",
    onnx.TensorProto.INT32: "int32",
    onnx.TensorProto.INT8: "int8",
    onnx.TensorProto.UINT8: "uint8",
    onnx.TensorProto.BOOL: "bool",
}


@dataclass(frozen=True)
class ModelInfo:
    """What :func:`inspect_model` learned about a model it accepted.

    ``inputs`` leaves out initializers that old exporters also list as graph inputs.
    ``parameters`` counts every learned number the main graph stores: initializer
    elements (stored values for sparse ones), tensor attributes (``Constant``) and float
    list attributes (the ``coefficients`` of ``ai.onnx.ml`` operators, which keep their
    weights on the node rather than in initializers).
    """

    opset: int
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    initializers: int
    parameters: int


def parse_model(model: bytes, *, max_bytes: int = MAX_MODEL_BYTES) -> onnx.ModelProto:
    """Parse ONNX bytes without touching anything else (external data is never loaded).

    Raises:
        Oversize: more than ``max_bytes`` bytes.
        UnsafeModel: the bytes are not a ``ModelProto`` with a graph.
    """
    if len(model) > max_bytes:
        raise Oversize(f"model of {len(model)} bytes exceeds {max_bytes}")
    proto = onnx.ModelProto()
    try:
        proto.ParseFromString(model)
    except (DecodeError, RuntimeError, ValueError) as e:
        raise UnsafeModel(f"not an ONNX model: {str(e)[:120]}") from e
    if not proto.HasField("graph"):
        raise UnsafeModel("not an ONNX model: no graph")
    return proto


def inspect_model(
    model: bytes,
    *,
    allowed_domains: frozenset[str] = DEFAULT_DOMAINS,
    opset_range: tuple[int, int] = OPSET_RANGE,
    max_bytes: int = MAX_MODEL_BYTES,
) -> ModelInfo:
    """Check ``model`` against every rule in the module docstring; describe it if it passes.

    Raises:
        Oversize: more than ``max_bytes`` bytes.
        UnsafeModel: unparsable, training graphs, external data, impossible tensor
            sizes, a node or opset import outside ``allowed_domains``, or refused by
            ``onnx.checker``.
        Incompatible: an opset outside ``opset_range`` (or ``ai.onnx.ml`` above
            :data:`ML_OPSET_MAX`), or graph I/O a ``TensorSpec`` cannot describe.
    """
    proto = parse_model(model, max_bytes=max_bytes)
    if len(proto.training_info):
        raise UnsafeModel("training_info is not allowed in an inference model")
    for where, tensor in _tensors(proto):
        _check_tensor(where, tensor, len(model))
    for where, sparse in _sparse_tensors(proto):
        dense = _elements(where, sparse.dims)
        if dense > max_bytes:
            raise UnsafeModel(f"{where}: sparse tensor of {dense} elements when dense")
    _check_domains(proto, allowed_domains)
    opset = _check_opsets(proto, opset_range)
    try:
        onnx.checker.check_model(model, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        raise UnsafeModel(f"onnx.checker refuses the model: {str(e)[:300]}") from e
    graph = proto.graph
    initialized = {t.name for t in graph.initializer} | {
        s.values.name for s in graph.sparse_initializer
    }
    return ModelInfo(
        opset=opset,
        inputs=tuple(tensor_spec(v) for v in graph.input if v.name not in initialized),
        outputs=tuple(tensor_spec(v) for v in graph.output),
        initializers=len(graph.initializer) + len(graph.sparse_initializer),
        parameters=_parameters(graph),
    )


def check_io(manifest: ModelManifest, info: ModelInfo) -> None:
    """Refuse a model that is not the one its manifest describes.

    The manifest's ``io_signature`` is the compatibility id the release carries and the
    runtime compares with its session, so the model must match it exactly: same names,
    dtypes and shapes, in the same order, and the same default-domain opset.

    Raises:
        Incompatible: an input, an output or the opset differs from the manifest's.
    """
    if manifest.opset != info.opset:
        raise Incompatible(f"model opset {info.opset} differs from the manifest's {manifest.opset}")
    for what, declared, actual in (
        ("inputs", manifest.inputs, info.inputs),
        ("outputs", manifest.outputs, info.outputs),
    ):
        if declared != actual:
            want = ",".join(s.signature() for s in declared)
            got = ",".join(s.signature() for s in actual)
            raise Incompatible(f"model {what} {got[:200]} differ from the manifest's {want[:200]}")


def tensor_spec(value: onnx.ValueInfoProto) -> TensorSpec:
    """The :class:`TensorSpec` of a graph input or output.

    Raises:
        Incompatible: not a tensor of a dtype the manifest knows, or of unknown rank.
    """
    kind = value.type.WhichOneof("value")
    if kind != "tensor_type":
        raise Incompatible(f"graph I/O {value.name[:60]!r} is a {kind}, not a tensor")
    tensor = value.type.tensor_type
    dtype = _DTYPES.get(tensor.elem_type)
    if dtype is None:
        name = onnx.TensorProto.DataType.Name(tensor.elem_type)
        raise Incompatible(f"graph I/O {value.name[:60]!r} has unsupported dtype {name}")
    if not tensor.HasField("shape"):
        raise Incompatible(f"graph I/O {value.name[:60]!r} has no declared rank")
    shape = tuple(d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim)
    try:
        return TensorSpec(name=value.name, dtype=dtype, shape=shape)
    except ProtocolError as e:
        raise Incompatible(f"graph I/O {value.name[:60]!r}: {e}") from e


def _parameters(graph: onnx.GraphProto) -> int:
    count = sum(math.prod(t.dims) for t in graph.initializer)
    count += sum(math.prod(s.values.dims) for s in graph.sparse_initializer)
    for node in graph.node:
        for attribute in node.attribute:
            tensors = [*attribute.tensors, *([attribute.t] if attribute.HasField("t") else [])]
            count += len(attribute.floats) + sum(math.prod(t.dims) for t in tensors)
    return int(count)


def _graphs(proto: onnx.ModelProto) -> Iterator[tuple[str, onnx.GraphProto]]:
    """Every graph in the model: the main one and all subgraphs, at any depth."""
    stack = [("graph", proto.graph)]
    for function in proto.functions:
        for attribute in _function_attributes(function):
            stack.extend((f"function {function.name}", g) for g in _subgraphs(attribute))
    while stack:
        where, graph = stack.pop()
        yield where, graph
        for node in graph.node:
            for attribute in node.attribute:
                stack.extend((f"{where}/{node.op_type}", g) for g in _subgraphs(attribute))


def _function_attributes(function: onnx.FunctionProto) -> Iterator[onnx.AttributeProto]:
    yield from function.attribute_proto
    for node in function.node:
        yield from node.attribute


def _subgraphs(attribute: onnx.AttributeProto) -> Iterator[onnx.GraphProto]:
    # Every field is read whatever ``attribute.type`` claims: a runtime might too.
    if attribute.HasField("g"):
        yield attribute.g
    yield from attribute.graphs


def _attribute_tensors(attribute: onnx.AttributeProto) -> Iterator[onnx.TensorProto]:
    if attribute.HasField("t"):
        yield attribute.t
    yield from attribute.tensors
    for sparse in _attribute_sparse(attribute):
        yield sparse.values
        yield sparse.indices


def _attribute_sparse(attribute: onnx.AttributeProto) -> Iterator[onnx.SparseTensorProto]:
    if attribute.HasField("sparse_tensor"):
        yield attribute.sparse_tensor
    yield from attribute.sparse_tensors


def _nodes(proto: onnx.ModelProto) -> Iterator[tuple[str, onnx.NodeProto]]:
    """Every node: in every graph and in every model-local function body."""
    for where, graph in _graphs(proto):
        for node in graph.node:
            yield where, node
    for function in proto.functions:
        for node in function.node:
            yield f"function {function.name}", node


def _attributes(proto: onnx.ModelProto) -> Iterator[tuple[str, onnx.AttributeProto]]:
    for where, node in _nodes(proto):
        for attribute in node.attribute:
            yield f"{where}/{node.op_type} {node.name[:40]!r}", attribute
    for function in proto.functions:
        for attribute in function.attribute_proto:
            yield f"function {function.name}", attribute


def _tensors(proto: onnx.ModelProto) -> Iterator[tuple[str, onnx.TensorProto]]:
    for where, graph in _graphs(proto):
        for tensor in graph.initializer:
            yield f"{where}/initializer {tensor.name[:60]!r}", tensor
        for sparse in graph.sparse_initializer:
            yield f"{where}/sparse initializer {sparse.values.name[:60]!r}", sparse.values
            yield f"{where}/sparse initializer {sparse.values.name[:60]!r}", sparse.indices
    for where, attribute in _attributes(proto):
        for tensor in _attribute_tensors(attribute):
            yield f"{where}.{attribute.name}", tensor


def _sparse_tensors(proto: onnx.ModelProto) -> Iterator[tuple[str, onnx.SparseTensorProto]]:
    for where, graph in _graphs(proto):
        for sparse in graph.sparse_initializer:
            yield f"{where}/sparse initializer {sparse.values.name[:60]!r}", sparse
    for where, attribute in _attributes(proto):
        for sparse in _attribute_sparse(attribute):
            yield f"{where}.{attribute.name}", sparse


def _check_tensor(where: str, tensor: onnx.TensorProto, model_bytes: int) -> None:
    if tensor.data_location == onnx.TensorProto.EXTERNAL or len(tensor.external_data):
        location = next((e.value for e in tensor.external_data if e.key == "location"), "")
        raise UnsafeModel(f"{where} refers to external data {location[:80]!r}")
    declared = _elements(where, tensor.dims)
    if declared > _ELEMENTS_PER_BYTE * model_bytes:
        raise UnsafeModel(f"{where} declares {declared} elements in a {model_bytes}-byte model")


def _elements(where: str, dims: Iterable[int]) -> int:
    sizes = list(dims)
    if any(d < 0 for d in sizes):
        raise UnsafeModel(f"{where} has a negative dimension")
    return int(math.prod(sizes))


def _check_domains(proto: onnx.ModelProto, allowed: frozenset[str]) -> None:
    local = {(f.domain, f.name) for f in proto.functions}
    for where, node in _nodes(proto):
        if node.domain not in allowed and (node.domain, node.op_type) not in local:
            raise UnsafeModel(
                f"{where}: node {node.op_type[:40]!r} in domain {node.domain[:60]!r} "
                f"is not allowed (allowed: {sorted(allowed)})"
            )
    local_domains = {domain for domain, _ in local}
    imports = list(proto.opset_import)
    for function in proto.functions:
        imports.extend(function.opset_import)
    for opset in imports:
        if opset.domain not in allowed and opset.domain not in local_domains:
            raise UnsafeModel(f"opset import of domain {opset.domain[:60]!r} is not allowed")


def _check_opsets(proto: onnx.ModelProto, opset_range: tuple[int, int]) -> int:
    low, high = opset_range
    default = {o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")}
    if len(default) != 1:
        raise Incompatible(f"model must import one default-domain opset, not {sorted(default)}")
    opset = int(default.pop())
    if not low <= opset <= high:
        raise Incompatible(f"opset {opset} is outside the supported range [{low}, {high}]")
    for o in proto.opset_import:
        if o.domain == "ai.onnx.ml" and not 1 <= o.version <= ML_OPSET_MAX:
            raise Incompatible(f"ai.onnx.ml opset {o.version} is outside [1, {ML_OPSET_MAX}]")
    return opset


__all__ = [
    "DEFAULT_DOMAINS",
    "MAX_MODEL_BYTES",
    "ML_OPSET_MAX",
    "OPSET_RANGE",
    "ModelInfo",
    "UnsafeModel",
    "check_io",
    "inspect_model",
    "parse_model",
    "tensor_spec",
]
