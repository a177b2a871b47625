"""A synthetic classification task whose data shifts in a way the head alone can learn.

The demo runs it on simulated devices, and the agent's learning tests use it as the
acceptance task, so it lives here, in the one package allowed to feed both.

The base model is a small hand-built network, ``x[N, F] -> Gemm -> Relu -> Gemm(transB=1)
-> Softmax``, fitted (in closed form, no training loop) to distribution **A**: inputs
``x ~ N(0, I)`` and labels ``argmax(x @ P_A)``. Its hidden layer holds ``relu(z)`` and
``relu(-z)`` for ``z = x V + c`` (``V`` random, ``F x k``, ``k >= F``), so any linear
function of ``x`` is a linear function of the head's features (``z = relu(z) - relu(-z)``).

On distribution **B** the device sees shifted inputs (``x ~ N(shift, I)``, covariate
shift) labelled by another rule, ``argmax(x @ P_B)`` (concept shift, a rotation of
``P_A``). The base head gets B wrong often, and because B's rule is linear in ``x`` a
retrained head can get it right: the shift is learnable by the head alone, which is
what local retraining is for. Labels carry ``noise`` (a share of uniformly random
labels), so accuracy never quite reaches 1.

Everything is deterministic from the seed::

    task = ShiftedTask.build(seed=0)
    x, y = task.sample("B", 500, np.random.default_rng(1))
    task.model        # ONNX bytes, scores output "probabilities", head input "hidden"
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from onnx import TensorProto, helper, numpy_helper

OPSET = 17  # what onnxruntime on every supported platform runs
IR_VERSION = 8

Distribution = Literal["A", "B"]


@dataclass(frozen=True)
class ShiftedTask:
    """The base model and the two distributions (see the module docstring)."""

    model: bytes
    n_inputs: int
    n_classes: int
    rule_a: np.ndarray
    rule_b: np.ndarray
    shift: np.ndarray
    noise: float

    @classmethod
    def build(
        cls,
        *,
        seed: int = 0,
        n_inputs: int = 4,
        width: int = 8,
        n_classes: int = 3,
        angle: float = 1.2,
        shift: float = 0.75,
        noise: float = 0.05,
        scale: float = 4.0,
    ) -> ShiftedTask:
        """A task with ``2 * width`` head features; ``angle`` (radians) rotates A's rule
        into B's in the plane of the first two inputs; ``scale`` sets how confident the
        base model is."""
        rng = np.random.default_rng(seed)
        v = rng.normal(size=(n_inputs, width)) / np.sqrt(n_inputs)
        c = rng.normal(size=width) * 0.1
        rule_a = rng.normal(size=(n_inputs, n_classes))
        rotation = np.eye(n_inputs)
        cos, sin = np.cos(angle), np.sin(angle)
        rotation[:2, :2] = [[cos, -sin], [sin, cos]]
        rule_b = rotation @ rule_a
        model = classifier(v, c, rule_a, scale)
        shift_vector = np.full(n_inputs, shift)
        return cls(model, n_inputs, n_classes, rule_a, rule_b, shift_vector, noise)

    def sample(
        self, distribution: Distribution, rows: int, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        """``rows`` inputs (float32 ``[rows, n_inputs]``) and their labels (int64)."""
        x = rng.normal(size=(rows, self.n_inputs))
        rule = self.rule_a
        if distribution == "B":
            x += self.shift
            rule = self.rule_b
        y = np.argmax(x @ rule, axis=1)
        flip = rng.random(rows) < self.noise
        y[flip] = rng.integers(0, self.n_classes, size=int(flip.sum()))
        return x.astype(np.float32), y.astype(np.int64)


def classifier(v: np.ndarray, c: np.ndarray, rule: np.ndarray, scale: float) -> bytes:
    """The ONNX model ``x -> Gemm(v, c) -> Relu -> Gemm -> Softmax`` whose head is fitted in
    closed form so that its logits are ``scale * x @ rule`` (see the module docstring)."""
    m = np.linalg.pinv(v) @ rule * scale
    head = np.vstack([m, -m])  # (2 * width, classes)
    bias = -c @ m
    w1 = np.hstack([v, -v]).astype(np.float32)
    b1 = np.concatenate([c, -c]).astype(np.float32)
    inits = [
        numpy_helper.from_array(w1, "w1"),
        numpy_helper.from_array(b1, "b1"),
        numpy_helper.from_array(head.T.astype(np.float32), "head.weight"),
        numpy_helper.from_array(bias.astype(np.float32), "head.bias"),
    ]
    nodes = [
        helper.make_node("Gemm", ["x", "w1", "b1"], ["z"], name="hidden_gemm"),
        helper.make_node("Relu", ["z"], ["hidden"], name="relu"),
        helper.make_node(
            "Gemm", ["hidden", "head.weight", "head.bias"], ["logits"], transB=1, name="head"
        ),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=-1, name="softmax"),
    ]
    n_inputs, n_classes = v.shape[0], rule.shape[1]
    graph = helper.make_graph(
        nodes,
        "shifted_task",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, n_inputs])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [None, n_classes])],
        inits,
    )
    proto = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION
    )
    model: bytes = proto.SerializeToString()
    return model
