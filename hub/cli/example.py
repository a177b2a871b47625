"""``edgefleet model example``: a small model with its reference and validation data.

So that docs/cli.md's walkthrough runs on a fresh machine with nothing downloaded: the
model is built with the ``onnx`` helper API and numpy (four float features, a hidden
Gemm + Relu layer, a final Gemm head and a Softmax over three classes), the rows are
drawn from a seeded generator, and the labels are the model's own answers with one in
ten changed (so validation accuracy is about 0.9, not a suspicious 1.0). Another
``--seed`` gives other weights with the same inputs and outputs: a second, compatible
version of the same model.

Files written in DIR: ``model.onnx``, ``reference.npz`` (``X``) and ``validation.npz``
(``X`` and ``y``), as ``edgefleet model register`` reads them.
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import numpy as np

from hub.cli.common import Subcommands, add_command

FEATURES = 4
HIDDEN = 8
CLASSES = 3
OPSET = 17
IR_VERSION = 8  # what onnxruntime 1.17 and later load
REFERENCE_ROWS = 2000
VALIDATION_ROWS = 500
NOISE = 0.1

EPILOG = """\
Writes DIR/model.onnx (4 features -> 3 classes, softmax scores, a Gemm head the
agents retrain), DIR/reference.npz and DIR/validation.npz. Nothing is downloaded.

examples:
  edgefleet model example --out example/
  edgefleet model register example/model.onnx --name demo \\
      --reference example/reference.npz --validation example/validation.npz
  edgefleet model example --out example-v2/ --seed 2     other weights, same inputs
"""


def add_example_command(commands: Subcommands) -> None:
    parser = add_command(
        commands, "model example", "write a small example model and its data", EPILOG, _run
    )
    parser.add_argument("--out", type=Path, required=True, metavar="DIR", help="where to write")
    parser.add_argument("--seed", type=int, default=1, help="weights and rows (default 1)")


def _run(args: argparse.Namespace) -> int:
    files = example(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (args.out / name).write_bytes(data)
    print(f"wrote {', '.join(str(args.out / name) for name in files)}")
    return 0


def example(seed: int = 1) -> dict[str, bytes]:
    """The three files, by name; the same ``seed`` gives the same bytes."""
    rng = np.random.default_rng(seed)
    w1 = rng.normal(size=(FEATURES, HIDDEN)).astype(np.float32)
    b1 = rng.normal(scale=0.1, size=HIDDEN).astype(np.float32)
    w2 = rng.normal(size=(CLASSES, HIDDEN)).astype(np.float32)
    b2 = np.zeros(CLASSES, np.float32)
    model = _model(w1, b1, w2, b2)
    data = np.random.default_rng(seed + 1000)
    reference = data.normal(size=(REFERENCE_ROWS, FEATURES)).astype(np.float32)
    validation = data.normal(size=(VALIDATION_ROWS, FEATURES)).astype(np.float32)
    labels = (np.maximum(validation @ w1 + b1, 0) @ w2.T + b2).argmax(axis=1)
    flip = data.random(VALIDATION_ROWS) < NOISE
    labels[flip] = (labels[flip] + 1) % CLASSES
    return {
        "model.onnx": model,
        "reference.npz": _npz(reference),
        "validation.npz": _npz(validation, labels.astype(np.int64)),
    }


def _model(w1: np.ndarray, b1: np.ndarray, w2: np.ndarray, b2: np.ndarray) -> bytes:
    import onnx  # onnx pulls ml_dtypes (about 1 s): only for `model example`
    from onnx import TensorProto, helper, numpy_helper

    nodes = [
        helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], name="hidden"),
        helper.make_node("Relu", ["h"], ["features"], name="relu"),
        helper.make_node("Gemm", ["features", "w2", "b2"], ["logits"], name="head", transB=1),
        helper.make_node("Softmax", ["logits"], ["probabilities"], name="softmax", axis=-1),
    ]
    graph = helper.make_graph(
        nodes,
        "edgefleet-example",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, FEATURES])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [None, CLASSES])],
        [
            numpy_helper.from_array(w1, "w1"),
            numpy_helper.from_array(b1, "b1"),
            numpy_helper.from_array(w2, "w2"),
            numpy_helper.from_array(b2, "b2"),
        ],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION
    )
    onnx.checker.check_model(model)
    data: bytes = model.SerializeToString()
    return data


def _npz(x: np.ndarray, y: np.ndarray | None = None) -> bytes:
    buffer = io.BytesIO()
    if y is None:
        np.savez(buffer, X=x)
    else:
        np.savez(buffer, X=x, y=y)
    return buffer.getvalue()
