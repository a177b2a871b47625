"""Read, write and evaluate a trainable head's parameters (found by :mod:`protocol.heads`).

Weights are handled as float32 ``(n_features, n_outputs)`` and biases as
``(n_outputs,)`` whatever the graph's own layout (transposed Gemm, the flat
``coefficients`` of ``ai.onnx.ml`` operators, binary LogisticRegression's ``[-w, w]``);
:func:`write_head` stores them back in that layout and dtype. :func:`head_forward` is the
numpy twin of the head, which trainers differentiate and tests compare with onnxruntime.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from protocol.errors import NonFinite, ShapeMismatch
from protocol.heads import Target, locate, serialize
from protocol.manifest import Head
from protocol.modelcheck import parse_model


def read_head(model: bytes, head: Head) -> tuple[np.ndarray, np.ndarray]:
    """The head's weight as float32 ``(n_features, n_outputs)`` and bias ``(n_outputs,)``.

    A head without a bias reads as zeros.

    Raises:
        Oversize, UnsafeModel: the bytes are not a model.
        ShapeMismatch: ``head`` does not describe this model.
    """
    weight, bias, _ = locate(parse_model(model), head)
    table = _load(weight)
    rows = table.reshape(-1, head.n_features) if head.transposed else table.T
    b = np.zeros(len(rows)) if bias is None else _load(bias).reshape(-1)
    n = head.n_outputs
    return np.ascontiguousarray(rows[-n:].T, np.float32), b[-n:].astype(np.float32)


def write_head(model: bytes, head: Head, weight: np.ndarray, bias: np.ndarray) -> bytes:
    """``model`` with new head parameters, stored in the graph's own layout and dtype.

    Raises:
        Oversize, UnsafeModel: the bytes are not a model.
        ShapeMismatch: ``head`` does not describe this model, the arrays are not
            ``(n_features, n_outputs)`` and ``(n_outputs,)``, or a head without a bias
            gets a non-zero one.
        NonFinite: a NaN or infinite value, including after casting to the graph's dtype.
    """
    w, b = _checked(head, weight, bias)
    proto = parse_model(model)
    stored_weight, stored_bias, antisymmetric = locate(proto, head)
    if stored_bias is None and np.any(b):
        raise ShapeMismatch("the head has no bias to write")
    rows = np.concatenate([-w.T, w.T]) if antisymmetric else w.T
    _store(stored_weight, rows if head.transposed else rows.T)
    if stored_bias is not None:
        _store(stored_bias, np.concatenate([-b, b]) if antisymmetric else b)
    return serialize(proto)


def head_forward(
    head: Head, weight: np.ndarray, bias: np.ndarray, features: np.ndarray, *, activate: bool = True
) -> np.ndarray:
    """The head's output for ``features`` ``(batch, n_features)``, as float32.

    ``activate=False`` gives the logits (pre-activation), which trainers differentiate;
    otherwise the head's activation is applied (per row for softmax). For a binary head
    this is class 1's probability, the scores' second column.

    Raises:
        ShapeMismatch: arrays whose shapes do not fit ``head``.
        NonFinite: non-finite parameters.
    """
    w, b = _checked(head, weight, bias)
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] != head.n_features:
        raise ShapeMismatch(f"features {x.shape} do not fit a head of {head.n_features} inputs")
    logits = x @ w + b
    if activate and head.activation == "softmax":
        exp = np.exp(logits - logits.max(axis=1, keepdims=True))
        logits = exp / exp.sum(axis=1, keepdims=True)
    elif activate and head.activation == "sigmoid":
        logits = np.exp(-np.logaddexp(0.0, -logits))
    result: np.ndarray = logits.astype(np.float32)
    return result


def _checked(head: Head, weight: np.ndarray, bias: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    try:
        w, b = np.asarray(weight, dtype=np.float64), np.asarray(bias, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise ShapeMismatch(f"head parameters must be numeric arrays: {e}") from e
    if w.shape != (head.n_features, head.n_outputs) or b.shape != (head.n_outputs,):
        raise ShapeMismatch(
            f"weight {w.shape} and bias {b.shape} do not fit a head of "
            f"({head.n_features}, {head.n_outputs})"
        )
    if not (np.isfinite(w).all() and np.isfinite(b).all()):
        raise NonFinite("head parameters must be finite")
    return w, b


def _load(target: Target) -> np.ndarray:
    if isinstance(target, onnx.AttributeProto):
        return np.asarray(target.floats, np.float64)
    return numpy_helper.to_array(target).astype(np.float64)


def _store(target: Target, values: np.ndarray) -> None:
    """Replace a tensor's or float-list attribute's values, keeping its dtype and dims."""
    if isinstance(target, onnx.AttributeProto):
        dtype = np.dtype(np.float32)
    else:
        dtype = onnx.helper.tensor_dtype_to_np_dtype(target.data_type)
    with np.errstate(over="ignore"):  # overflow becomes inf, refused just below
        cast = values.astype(dtype)
    if not np.isfinite(cast).all():
        raise NonFinite(f"head parameters overflow {cast.dtype}")
    if isinstance(target, onnx.AttributeProto):
        del target.floats[:]
        target.floats.extend(cast.ravel().tolist())
    else:
        target.CopyFrom(numpy_helper.from_array(cast.reshape(tuple(target.dims)), target.name))
