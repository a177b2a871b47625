"""Model packages for tests, built the way the hub registers them, from any ONNX model.

:func:`build_package` finds the trainable head (:func:`protocol.heads.find_head`),
exposes its input (:func:`~protocol.heads.prepare_model`), describes the graph with
:func:`protocol.modelcheck.inspect_model`, adds smoke inputs (a :mod:`protocol.tensors`
container) and encodes the package (:func:`protocol.package.encode_package`)::

    built = build_package(models.gemm_classifier(), name="iris", version=2)
    entry = built.entry(release_counter=5)         # for a release list
    decode_package(built.data).manifest == built.manifest

Hostile models (tests/models.py) are refused by ``inspect_model``; pass
``checked=False`` to describe them from the graph alone, so a test can ship them in a
well-formed package and watch the device refuse them. :func:`with_manifest` repackages
the same files under an edited manifest (a latency budget of 0). Two models fail at the
device on purpose: :func:`nan_model` (NaN on every input: its health check fails) and
:func:`sqrt_model` (healthy on positive smoke inputs, NaN on negative ones: it fails in
the watch window). Deterministic: the same arguments give the same bytes.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass

import numpy as np
from onnx import TensorProto, helper

from protocol import heads, modelcheck
from protocol.manifest import ModelManifest, TensorSpec
from protocol.messages import ModelRef
from protocol.metadata import Compat, ReleaseEntry
from protocol.package import decode_package, encode_package, file_entry
from protocol.tensors import encode_tensors
from tests.models import build, value_info

SMOKE_ROWS = 8
SEED = 0


@dataclass(frozen=True)
class Built:
    """A package's bytes with the parts a test wants to look at."""

    data: bytes
    manifest: ModelManifest
    model: bytes
    smoke: dict[str, np.ndarray]

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @property
    def ref(self) -> ModelRef:
        return ModelRef(self.manifest.name, self.manifest.version, self.sha256)

    @property
    def compat(self) -> Compat:
        return Compat(opset=self.manifest.opset, io_signature=self.manifest.io_signature())

    def entry(self, release_counter: int) -> ReleaseEntry:
        """The release entry pinning this package."""
        return ReleaseEntry(
            self.manifest.name,
            self.manifest.version,
            release_counter,
            self.sha256,
            len(self.data),
            self.compat,
        )


def build_package(
    model: bytes,
    *,
    name: str = "iris",
    version: int = 1,
    smoke: dict[str, np.ndarray] | None = None,
    latency_budget_ms: float = 250.0,
    checked: bool = True,
    with_smoke: bool = True,
) -> Built:
    """Package ``model`` as version ``version`` of ``name``; the scores are its first float
    output (what ``find_head`` walks back from).

    ``smoke`` defaults to :data:`SMOKE_ROWS` seeded normal rows per input (fixed
    dimensions as declared, other dynamic ones 1). ``checked=False`` skips
    ``inspect_model`` (for hostile models); ``with_smoke=False`` leaves ``smoke.eft`` out.
    """
    head = heads.find_head(model) if checked else None
    prepared = heads.prepare_model(model, head) if head is not None else model
    inputs, outputs, opset = _describe(prepared, checked)
    scores = next((o.name for o in outputs if o.dtype.startswith("float")), outputs[0].name)
    smoke = smoke if smoke is not None else _smoke(inputs)
    files = {"model.onnx": prepared}
    if with_smoke:
        files["smoke.eft"] = encode_tensors(smoke)
    manifest = ModelManifest(
        name=name,
        version=version,
        opset=opset,
        inputs=inputs,
        outputs=outputs,
        scores=scores,
        files=tuple(file_entry(n, data) for n, data in files.items()),
        head=head,
        latency_budget_ms=latency_budget_ms,
    )
    return Built(encode_package(manifest, files), manifest, prepared, smoke)


def with_manifest(built: Built, **changes: object) -> Built:
    """The same files under a manifest with ``changes`` (e.g. ``latency_budget_ms=0.0``)."""
    files = decode_package(built.data).files
    manifest = dataclasses.replace(built.manifest, **changes)  # type: ignore[arg-type]
    return Built(encode_package(manifest, files), manifest, built.model, built.smoke)


def _describe(
    model: bytes, checked: bool
) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...], int]:
    if checked:
        info = modelcheck.inspect_model(model)
        return info.inputs, info.outputs, info.opset
    proto = modelcheck.parse_model(model)
    graph = proto.graph
    initialized = {t.name for t in graph.initializer}
    opset = next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    return (
        tuple(modelcheck.tensor_spec(v) for v in graph.input if v.name not in initialized),
        tuple(modelcheck.tensor_spec(v) for v in graph.output),
        int(opset),
    )


def _smoke(inputs: tuple[TensorSpec, ...]) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(SEED)
    out = {}
    for spec in inputs:
        shape = tuple(
            (SMOKE_ROWS if axis == 0 else 1) if d is None else d
            for axis, d in enumerate(spec.shape)
        )
        out[spec.name] = rng.normal(size=shape).astype(np.float32)
    return out


def nan_model(n_features: int = 4) -> bytes:
    """x[N, F] -> sqrt(-|x| - 1): a valid graph whose every output is NaN (health check)."""
    one = helper.make_tensor("one", TensorProto.FLOAT, [], [1.0])
    nodes = [
        helper.make_node("Abs", ["x"], ["a"]),
        helper.make_node("Neg", ["a"], ["n"]),
        helper.make_node("Sub", ["n", "one"], ["m"]),
        helper.make_node("Sqrt", ["m"], ["y"]),
    ]
    return build(
        nodes, [value_info("x", None, n_features)], [value_info("y", None, n_features)], [one]
    )


def sqrt_model(n_features: int = 4) -> bytes:
    """x[N, F] -> sqrt(x): finite on the positive smoke inputs, NaN on negative inputs."""
    node = helper.make_node("Sqrt", ["x"], ["y"])
    return build([node], [value_info("x", None, n_features)], [value_info("y", None, n_features)])
