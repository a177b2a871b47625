"""Find, read and rewrite a model's trainable head: the last linear layer before its scores.

Devices retrain only the final layer (docs/agent-architecture.md), so the hub finds it
once at registration (:func:`find_head`, recorded in the manifest as a
:class:`~protocol.manifest.Head`) and rewrites the graph so it also outputs the head's
input (:func:`prepare_model`). A device then runs one session for both the scores and
the features it trains on, reads the head, trains it in numpy and serves the result
(:mod:`protocol.headparams`).

Supported graph shapes, walking back from the scores output (default: the first float
output) in the main graph:

- ``Gemm`` (``alpha = beta = 1``, ``transA = 0``; ``transB = 1`` is ``transposed``);
- ``MatMul`` then ``Add`` of a bias (either operand order), or ``MatMul`` alone;
- ``ai.onnx.ml`` ``LinearClassifier`` (``post_transform`` SOFTMAX -> softmax,
  LOGISTIC -> sigmoid, NONE -> identity) and ``LinearRegressor`` (NONE);

then optionally ``Softmax`` (on the last axis) or ``Sigmoid``, and any of ``Identity``,
a ``Reshape`` that keeps rows (to ``[-1, n_outputs]``), ``Normalizer`` L1 after a
softmax (a no-op there; skl2onnx adds it to LogisticRegression) and the binary
``Concat(1 - p, p)`` after a single sigmoid. Weights and biases must be float
initializers used by the head alone (no tied weights).

Binary classifiers are one logit: the single logit is class 1's (``n_outputs = 1``,
sigmoid), and the scores' second column is its probability. skl2onnx writes binary
MLPClassifier as ``Sigmoid`` then ``Concat(1 - p, p)``, and binary LogisticRegression
as a two-row LinearClassifier whose rows are ``[-w, w]`` with LOGISTIC: both are read
as that one logit and written back in their own layout.

Node names: unnamed (or duplicate) nodes of the main graph get stable names
(``<op_type>_<index>``); :func:`prepare_model` writes them into the graph, so
``find_head(prepare_model(m, h)) == h``. For the ``ai.onnx.ml`` kinds ``Head.weight``
and ``Head.bias`` are the attribute names ``"coefficients"`` and ``"intercepts"``.

Call :func:`protocol.modelcheck.inspect_model` first: this module parses untrusted
bytes safely but does not repeat its checks.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from protocol.errors import Malformed, ShapeMismatch
from protocol.manifest import Activation, Head
from protocol.modelcheck import parse_model

_ML = "ai.onnx.ml"
_FLOATS = frozenset({onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16})
_POST_TRANSFORMS: dict[str, Activation] = {
    "SOFTMAX": "softmax",
    "LOGISTIC": "sigmoid",
    "NONE": "identity",
}


class _NoHead(Exception):
    """Internal: why the model has no supported head."""


def find_head(model: bytes, scores: str | None = None) -> Head | None:
    """The trainable head producing ``scores`` (default: the first float output).

    Returns:
        The head, or ``None`` when the graph has none this module supports: the model
        still serves, retraining is off, and :func:`head_unsupported_reason` says why.

    Raises:
        Oversize, UnsafeModel: the bytes are not a model (see :func:`parse_model`).
    """
    found = _detect(parse_model(model), scores)
    return found if isinstance(found, Head) else None


def head_unsupported_reason(model: bytes, scores: str | None = None) -> str | None:
    """Why :func:`find_head` returns ``None`` (``None`` when it finds a head).

    Raises:
        Oversize, UnsafeModel: the bytes are not a model.
    """
    found = _detect(parse_model(model), scores)
    return None if isinstance(found, Head) else found


def prepare_model(model: bytes, head: Head) -> bytes:
    """``model`` with ``head.feature`` as a graph output and every main-graph node named.

    The agent runs this once per version, so one inference yields the scores and the
    features the head sees. Idempotent; the scores do not change.

    Raises:
        Oversize, UnsafeModel: the bytes are not a model.
        ShapeMismatch: ``head`` does not describe this model.
    """
    proto = parse_model(model)
    graph = proto.graph
    for node, name in zip(graph.node, _node_names(graph), strict=True):
        node.name = name
    locate(proto, head)
    if head.feature not in {o.name for o in graph.output}:
        graph.output.append(_feature_output(proto, head))
    return serialize(proto)


def serialize(proto: onnx.ModelProto) -> bytes:
    data: bytes = proto.SerializeToString()
    return data


def _node_names(graph: onnx.GraphProto) -> list[str]:
    """Each node's name, made non-empty and unique deterministically (by position)."""
    taken = {n.name for n in graph.node}
    seen: set[str] = set()
    names = []
    for index, node in enumerate(graph.node):
        name = node.name
        if not name or name in seen:
            name = base = f"{node.op_type}_{index}"
            k = 0
            while name in taken:
                k += 1
                name = f"{base}_{k}"
            taken.add(name)
        seen.add(name)
        names.append(name)
    return names


def _op(node: onnx.NodeProto) -> tuple[str, str]:
    return ("" if node.domain == "ai.onnx" else node.domain, node.op_type)


def _attrs(node: onnx.NodeProto) -> dict[str, Any]:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


class _Graph:
    """Indexes over the main graph: who produces a tensor, how often each name is read."""

    def __init__(self, proto: onnx.ModelProto) -> None:
        graph = proto.graph
        nodes = list(graph.node)  # one wrapper per node, so identities below hold
        self.proto = proto
        self.nodes = dict(zip(_node_names(graph), nodes, strict=True))
        self.names = {id(node): name for name, node in self.nodes.items()}
        self.producer = {out: node for node in nodes for out in node.output}
        self.inits = {t.name: t for t in graph.initializer}
        self.inputs = {v.name for v in graph.input}
        self.uses = Counter(name for node in _every_node(graph) for name in node.input)
        self._types: dict[str, onnx.TypeProto] | None = None

    def source(self, tensor: str) -> onnx.NodeProto:
        node: onnx.NodeProto | None = self.producer.get(tensor)
        if node is None:
            raise _NoHead(f"{tensor[:60]!r} is a graph input or constant, not a layer's output")
        return node

    def parameter(self, name: str, what: str) -> onnx.TensorProto:
        tensor: onnx.TensorProto | None = self.inits.get(name)
        if tensor is None:
            raise _NoHead(f"the head's {what} {name[:60]!r} is computed, not an initializer")
        if name in self.inputs:
            raise _NoHead(f"the head's {what} {name[:60]!r} can be overridden as a graph input")
        if tensor.data_type not in _FLOATS:
            raise _NoHead(f"the head's {what} {name[:60]!r} is not a float tensor")
        if self.uses[name] != 1:
            raise _NoHead(f"the head's {what} {name[:60]!r} is shared with other nodes")
        return tensor

    def constant(self, name: str) -> np.ndarray | None:
        tensor = self.inits.get(name)
        return None if tensor is None or name in self.inputs else numpy_helper.to_array(tensor)

    def type_of(self, name: str) -> onnx.TypeProto | None:
        """The declared or inferred type of ``name`` (``None``: unknown)."""
        if self._types is None:
            graph = self.proto.graph
            values = [*graph.input, *graph.value_info, *graph.output]
            try:
                inferred = onnx.shape_inference.infer_shapes(self.proto).graph.value_info
            except (onnx.shape_inference.InferenceError, onnx.checker.ValidationError):
                inferred = []
            self._types = {v.name: v.type for v in [*inferred, *values]}
        return self._types.get(name)


def _every_node(graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    """The graph's nodes and those of its subgraphs, which may read outer-scope names."""
    nodes = list(graph.node)
    for node in graph.node:
        for attribute in node.attribute:
            subs = [*attribute.graphs, *([attribute.g] if attribute.HasField("g") else [])]
            for sub in subs:
                nodes.extend(_every_node(sub))
    return nodes


def _detect(proto: onnx.ModelProto, scores: str | None) -> Head | str:
    try:
        return _find(_Graph(proto), scores)
    except _NoHead as e:
        return str(e)
    except Malformed as e:  # Head's own checks, e.g. a name over 256 characters
        return f"the head cannot be described: {e}"


def _find(g: _Graph, scores: str | None) -> Head:
    """Walk back from the scores output to the head, through what may follow it."""
    outputs = g.proto.graph.output
    if scores is None:
        floats = [o.name for o in outputs if o.type.tensor_type.elem_type in _FLOATS]
        if not floats:
            raise _NoHead("the model has no float output to train against")
        scores = floats[0]
    elif scores not in {o.name for o in outputs}:
        raise _NoHead(f"{scores[:60]!r} is not a graph output")
    tensor, widths, tail = scores, list[int](), set[str]()
    while True:  # after the activation: pass-throughs, an L1 normaliser, binary [1 - p, p]
        node = g.source(tensor)
        if _passes_through(g, node, widths):
            tensor = node.input[0]
        elif _op(node) == (_ML, "Normalizer") and _attrs(node).get("norm") == b"L1":
            tail.add("normalizer")
            tensor = node.input[0]
        elif "binary" not in tail and (p := _binary_probability(g, node)) is not None:
            tail.add("binary")
            tensor = p
        else:
            break
    activation: Activation = "identity"
    if _op(node) == ("", "Softmax") and _attrs(node).get("axis", -1) in (-1, 1):
        activation = "softmax"
    elif _op(node) == ("", "Sigmoid"):
        activation = "sigmoid"
    if activation != "identity":
        tensor = node.input[0]
        node = g.source(tensor)
        while _passes_through(g, node, widths):
            tensor = node.input[0]
            node = g.source(tensor)
    head = _layer(g, node, tensor, activation)
    if "normalizer" in tail and head.activation != "softmax":
        raise _NoHead("an L1 Normalizer changes scores that are not a softmax")
    if "binary" in tail and (head.kind, head.activation, head.n_outputs) not in (
        ("gemm", "sigmoid", 1),
        ("matmul_add", "sigmoid", 1),
    ):
        raise _NoHead("[1 - p, p] is built from something other than one sigmoid")
    if any(w != head.n_outputs for w in widths):
        raise _NoHead(f"a Reshape between the head and {scores[:60]!r} mixes rows")
    return head


def _passes_through(g: _Graph, node: onnx.NodeProto, widths: list[int]) -> bool:
    """Identity, or a Reshape to ``[-1, k]`` (``[-1]``: k = 1), recording k in ``widths``."""
    if _op(node) == ("", "Identity"):
        return True
    shape = g.constant(node.input[1]) if _op(node) == ("", "Reshape") else None
    if shape is None or shape.ndim != 1 or not 1 <= len(shape) <= 2 or shape[0] != -1:
        return False
    widths.append(int(shape[1]) if len(shape) == 2 else 1)
    return True


def _binary_probability(g: _Graph, node: onnx.NodeProto) -> str | None:
    """``p`` when ``node`` is ``Concat([1 - p, p], axis=1)``, as skl2onnx writes it."""
    if _op(node) != ("", "Concat") or len(node.input) != 2:
        return None
    negative, p = node.input
    sub = g.producer.get(negative)
    if sub is None or _op(sub) != ("", "Sub") or sub.input[1] != p:
        return None
    one = g.constant(sub.input[0])
    axis_ok = _attrs(node).get("axis") in (1, -1)
    return p if axis_ok and one is not None and one.size == 1 and one.item() == 1.0 else None


def _layer(g: _Graph, node: onnx.NodeProto, tensor: str, activation: Activation) -> Head:
    """The Head for the linear layer ``node``, whose output ``tensor`` leads to the scores."""
    op = _op(node)
    if op in ((_ML, "LinearClassifier"), (_ML, "LinearRegressor")):
        if activation != "identity":
            raise _NoHead(f"an activation follows {node.op_type}'s own post_transform")
        if tensor != node.output[-1]:
            raise _NoHead(f"the scores come from {node.op_type}'s labels")
        return _linear(g, node)
    bias: str | None
    if op == ("", "Gemm"):
        attrs = _attrs(node)
        bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
        if (attrs.get("alpha", 1.0), attrs.get("transA", 0)) != (1.0, 0) or (
            bias and attrs.get("beta", 1.0) != 1.0
        ):
            raise _NoHead("a Gemm with alpha or beta other than 1, or transA, is not supported")
        matmul, transposed = node, attrs.get("transB", 0) == 1
    elif op == ("", "Add"):
        found = [
            (source, other)
            for name, other in zip(node.input, reversed(node.input), strict=True)
            if (source := g.producer.get(name)) is not None and _op(source) == ("", "MatMul")
        ]
        if not found:
            raise _NoHead("the scores come from an Add that does not follow a MatMul")
        (matmul, bias), transposed = found[0], False
    elif op == ("", "MatMul"):
        matmul, bias, transposed = node, None, False
    else:
        raise _NoHead(
            f"the scores come from {node.op_type} {g.names[id(node)][:60]!r}, not a Gemm, "
            "MatMul (+ Add), LinearClassifier or LinearRegressor"
        )
    weight = g.parameter(matmul.input[1], "weight")
    if len(weight.dims) != 2:
        raise _NoHead(f"the head's weight has {len(weight.dims)} dimensions, not 2")
    n_outputs, n_features = weight.dims if transposed else reversed(weight.dims)
    if bias is not None:
        dims = list(g.parameter(bias, "bias").dims)
        if len(dims) > 2 or np.prod(dims) != n_outputs or (dims and dims[-1] != n_outputs):
            raise _NoHead(f"the head's bias {dims} does not match its {n_outputs} outputs")
    feature = matmul.input[0]
    declared = g.type_of(feature)
    shape = declared.tensor_type.shape if declared is not None else None
    if feature in g.inits or (shape is not None and shape.dim and len(shape.dim) != 2):
        raise _NoHead(f"the head's input {feature[:60]!r} is not a (batch, features) tensor")
    return Head(
        kind="gemm" if op == ("", "Gemm") else "matmul_add",
        node=g.names[id(matmul)],
        weight=weight.name,
        bias=bias,
        feature=feature,
        activation=activation,
        task="regression" if activation == "identity" else "classification",
        n_features=int(n_features),
        n_outputs=int(n_outputs),
        transposed=transposed,
    )


def _linear(g: _Graph, node: onnx.NodeProto) -> Head:
    """A LinearClassifier or LinearRegressor head; its weights are node attributes."""
    attrs = _attrs(node)
    coefficients = np.asarray(attrs.get("coefficients", []), np.float32)
    intercepts = np.asarray(attrs.get("intercepts", []), np.float32)
    post = attrs.get("post_transform", b"NONE").decode()
    activation = _POST_TRANSFORMS.get(post)
    classifier = node.op_type == "LinearClassifier"
    labels = len(attrs.get("classlabels_ints", attrs.get("classlabels_strings", [])))
    rows = intercepts.size if classifier else int(attrs.get("targets", 1))
    if activation is None or (not classifier and activation != "identity"):
        raise _NoHead(f"{node.op_type} post_transform {post[:20]} is not supported")
    if rows < 1 or coefficients.size == 0 or coefficients.size % rows:
        raise _NoHead(f"{node.op_type} has {coefficients.size} coefficients for {rows} rows")
    if intercepts.size not in ((rows,) if classifier else (0, rows)):
        raise _NoHead(f"{node.op_type} has {intercepts.size} intercepts for {rows} rows")
    n_features, n_outputs = coefficients.size // rows, rows
    table = coefficients.reshape(rows, n_features)
    if classifier and rows == 1 and (labels != 2 or activation == "softmax"):
        raise _NoHead("a one-row LinearClassifier must be binary, with LOGISTIC or NONE")
    if classifier and rows > 1 and rows != labels:
        raise _NoHead(f"LinearClassifier has {rows} rows for {labels} classes")
    if (
        classifier
        and (rows, activation) == (2, "sigmoid")
        and np.array_equal(table[0], -table[1])
        and intercepts[0] == -intercepts[1]
    ):
        n_outputs = 1  # binary LogisticRegression: rows [-w, w], one logit
    return Head(
        kind="linear_classifier" if classifier else "linear_regressor",
        node=g.names[id(node)],
        weight="coefficients",
        bias="intercepts" if intercepts.size else None,
        feature=node.input[0],
        activation=activation,
        task="classification" if classifier else "regression",
        n_features=n_features,
        n_outputs=n_outputs,
        transposed=True,
    )


Target = onnx.TensorProto | onnx.AttributeProto


def locate(proto: onnx.ModelProto, head: Head) -> tuple[Target, Target | None, bool]:
    """The head's weight and bias in ``proto``, checked against every field of ``head``.

    The flag says the weight is the two-row ``[-w, w]`` layout of binary LogisticRegression.
    """
    g = _Graph(proto)
    node = g.nodes.get(head.node)
    expected = {
        "gemm": ("", "Gemm"),
        "matmul_add": ("", "MatMul"),
        "linear_classifier": (_ML, "LinearClassifier"),
        "linear_regressor": (_ML, "LinearRegressor"),
    }[head.kind]
    if node is None or _op(node) != expected or node.input[0] != head.feature:
        raise ShapeMismatch(f"the model has no {expected[1]} {head.node[:60]!r} on the feature")
    n, f = head.n_outputs, head.n_features
    if head.kind.startswith("linear"):
        attributes = {a.name: a for a in node.attribute}
        weight, bias = attributes.get(head.weight), attributes.get(head.bias or "")
        size = 0 if weight is None else len(weight.floats)
        rows = 2 if head.kind == "linear_classifier" and n == 1 and size == 2 * f else n
        if weight is None or size != rows * f:
            raise ShapeMismatch(f"{head.node[:60]!r} holds no ({n}, {f}) {head.weight}")
        if head.bias is not None and (bias is None or len(bias.floats) != rows):
            raise ShapeMismatch(f"{head.node[:60]!r} holds no {rows} {head.bias}")
        return weight, bias, rows == 2 * n
    weight, bias = g.inits.get(head.weight), g.inits.get(head.bias or "")
    transposed = _attrs(node).get("transB", 0) == 1
    if weight is None or node.input[1] != head.weight or transposed != head.transposed:
        raise ShapeMismatch(f"{head.node[:60]!r} does not read weight {head.weight[:60]!r}")
    if tuple(weight.dims) != ((n, f) if transposed else (f, n)):
        raise ShapeMismatch(f"weight {head.weight[:60]!r} is {list(weight.dims)}, not ({f}, {n})")
    adds = [a for a in g.nodes.values() if _op(a) == ("", "Add") and node.output[0] in a.input]
    readers = node.input[2:] if head.kind == "gemm" else [i for a in adds for i in a.input]
    if head.bias is not None and (
        bias is None or head.bias not in readers or np.prod(bias.dims) != n
    ):
        raise ShapeMismatch(f"{head.node[:60]!r} adds no bias {head.bias[:60]!r} of {n} values")
    return weight, bias, False


def _feature_output(proto: onnx.ModelProto, head: Head) -> onnx.ValueInfoProto:
    """A graph output for ``head.feature``, typed as declared or inferred when possible."""
    g = _Graph(proto)
    declared = g.type_of(head.feature)
    if declared is not None and declared.tensor_type.HasField("shape"):
        output = onnx.ValueInfoProto(name=head.feature)
        output.type.CopyFrom(declared)
        return output
    weight = g.inits.get(head.weight)
    dtype = weight.data_type if weight is not None else onnx.TensorProto.FLOAT
    return onnx.helper.make_tensor_value_info(head.feature, dtype, [None, head.n_features])


__all__ = ["Target", "find_head", "head_unsupported_reason", "locate", "prepare_model", "serialize"]
