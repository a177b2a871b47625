"""The model manifest: what a model package holds and how a device may use it.

A model package (:mod:`protocol.package`) is one artifact: this manifest plus the files
it lists (``model.onnx`` and ``smoke.eft``, the smoke inputs as a tensor container).
The release entry's sha256 covers the whole package, so the manifest (files, trainable
head, drift reference profile) is covered by the release key's signature.

The manifest says:

- ``inputs``/``outputs``: the ONNX graph's signature; ``io_signature()`` is the
  compatibility id a release entry carries and a runtime compares with its session;
- ``scores``: the output holding class probabilities (or the regression value), which
  sketches and health checks read;
- ``head``: the trainable final layer and the tensor that feeds it (``None``: the model
  still serves, retraining is off and the device says why);
- ``profile``: the drift reference (bin edges and proportions per feature and for the
  predictions) that device sketches count against;
- ``latency_budget_ms``: the health check's per-batch budget on the smoke inputs.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from protocol.errors import Malformed
from protocol.schema import check_name, check_range, check_sha256

MAX_FILES = 8
MAX_DIM = 2**31
DType = Literal["float32", "float64", "float16", "int64", "int32", "int8", "uint8", "bool"]


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output; ``None`` in ``shape`` is a dynamic dimension."""

    name: str
    dtype: DType
    shape: tuple[int | None, ...]

    def __post_init__(self) -> None:
        if not 0 < len(self.name) <= 256:
            raise Malformed("tensor name must be 1-256 characters")
        if len(self.shape) > 8:
            raise Malformed("more than 8 dimensions")
        for dim in self.shape:
            if dim is not None:
                check_range(dim, "dimension", 0, MAX_DIM)

    def signature(self) -> str:
        dims = ",".join("?" if d is None else str(d) for d in self.shape)
        return f"{self.name}:{self.dtype}[{dims}]"


@dataclass(frozen=True)
class FileEntry:
    """A file in the package, pinned by hash and length. Names are fixed, never paths."""

    name: Literal["model.onnx", "smoke.eft"]
    sha256: str
    length: int

    def __post_init__(self) -> None:
        check_sha256(self.sha256, "file sha256")
        check_range(self.length, "file length", 0)


HeadKind = Literal["gemm", "matmul_add", "linear_classifier", "linear_regressor"]
Activation = Literal["softmax", "sigmoid", "identity"]


@dataclass(frozen=True)
class Head:
    """The trainable final layer.

    ``weight`` and ``bias`` name initializers (for ``gemm``/``matmul_add``); for the
    ``ai.onnx.ml`` linear operators they are the attribute names ``"coefficients"`` and
    ``"intercepts"`` of the node named by ``node``. A binary classifier has
    ``n_outputs = 1``: the single logit is class 1's. Weights are handled as ``(n_features,
    n_outputs)`` whatever their layout in the graph; ``transposed`` records that the graph
    stores them as ``(n_outputs, n_features)`` (Gemm ``transB=1``, ai.onnx.ml
    coefficients). ``feature`` is the graph output that exposes the head's input, added
    at registration when the graph did not already output it.
    """

    kind: HeadKind
    node: str
    weight: str
    bias: str | None
    feature: str
    activation: Activation
    task: Literal["classification", "regression"]
    n_features: int
    n_outputs: int
    transposed: bool = False

    def __post_init__(self) -> None:
        for name in (self.node, self.weight, self.feature, self.bias or "x"):
            if not 0 < len(name) <= 256:
                raise Malformed("head names must be 1-256 characters")
        check_range(self.n_features, "n_features", 1, 1 << 20)
        check_range(self.n_outputs, "n_outputs", 1, 1 << 16)


@dataclass(frozen=True)
class FeatureProfile:
    """Reference distribution of one input feature: quantile bin edges and the reference
    proportion in each of the ``len(edges) - 1`` bins."""

    name: str
    edges: tuple[float, ...]
    proportions: tuple[float, ...]

    def __post_init__(self) -> None:
        _check_bins(self.edges, self.proportions, len(self.edges) - 1)


@dataclass(frozen=True)
class PredictionProfile:
    """Reference distribution of predictions: class proportions, or bins for regression."""

    kind: Literal["classes", "bins"]
    proportions: tuple[float, ...]
    edges: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        if self.kind == "bins":
            _check_bins(self.edges, self.proportions, len(self.edges) - 1)
        elif self.edges:
            raise Malformed("class predictions have no edges")


def _check_bins(edges: tuple[float, ...], proportions: tuple[float, ...], bins: int) -> None:
    if not 2 <= len(edges) <= 1025:
        raise Malformed("a profile needs 2 to 1025 bin edges")
    if any(b <= a for a, b in itertools.pairwise(edges)):
        raise Malformed("bin edges must be strictly increasing")
    if len(proportions) != bins:
        raise Malformed(f"{len(proportions)} proportions for {bins} bins")
    for p in proportions:
        check_range(p, "proportion", 0.0, 1.0)


@dataclass(frozen=True)
class ProfileCalibration:
    """A monotone map of a classifier's raw top-label confidence to a calibrated one,
    linear between knots and flat outside them (isotonic, fitted on the validation rows
    at registration): the agent bins predictions by it for label-free performance."""

    knots_x: tuple[float, ...]
    knots_y: tuple[float, ...]

    def __post_init__(self) -> None:
        if not 1 <= len(self.knots_x) <= 4096 or len(self.knots_y) != len(self.knots_x):
            raise Malformed("a calibration has 1 to 4096 knots, as many x as y")
        if any(b < a for a, b in itertools.pairwise(self.knots_x)):
            raise Malformed("calibration knots_x must be sorted")
        for v in (*self.knots_x, *self.knots_y):
            check_range(v, "calibration knot", 0.0, 1.0)


@dataclass(frozen=True)
class Profile:
    """The drift reference computed from the reference data at registration."""

    features: tuple[FeatureProfile, ...]
    predictions: PredictionProfile | None = None
    rows: int = 0
    calibration: ProfileCalibration | None = None
    confidence_bins: int = 10

    def __post_init__(self) -> None:
        check_range(self.confidence_bins, "confidence_bins", 1, 1024)


@dataclass(frozen=True)
class ModelManifest:
    """Everything a device needs to know about a package besides its bytes."""

    name: str
    version: int
    opset: int
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    scores: str
    files: tuple[FileEntry, ...]
    head: Head | None = None
    profile: Profile | None = None
    latency_budget_ms: float = 250.0
    classes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        check_name(self.name, "model name")
        check_range(self.version, "version", 1)
        check_range(self.opset, "opset", 1, 1000)
        check_range(self.latency_budget_ms, "latency_budget_ms", 0.0)
        if not self.inputs or not self.outputs:
            raise Malformed("a model needs inputs and outputs")
        if self.scores not in {o.name for o in self.outputs}:
            raise Malformed(f"scores output {self.scores[:60]!r} is not a graph output")
        names = [f.name for f in self.files]
        if len(names) > MAX_FILES or len(set(names)) != len(names):
            raise Malformed("package files must be distinct and at most 8")
        if "model.onnx" not in names:
            raise Malformed("a package must hold model.onnx")

    def io_signature(self) -> str:
        """Compatibility id: ``in:<specs>;out:<specs>``, compared with a runtime's session."""
        ins = ",".join(s.signature() for s in self.inputs)
        outs = ",".join(s.signature() for s in self.outputs)
        return f"in:{ins};out:{outs}"

    def file(self, name: str) -> FileEntry:
        """Raises Malformed when the package lists no such file."""
        for entry in self.files:
            if entry.name == name:
                return entry
        raise Malformed(f"package lists no {name}")


def inputs_differ(active: Sequence[TensorSpec], candidate: Sequence[TensorSpec]) -> str | None:
    """Why an application feeding ``active``'s inputs could not feed ``candidate``'s; None
    when it can. The device checks this before it installs a new version over a serving
    one, and the hub can check it before it assigns one.

    Shapes and dtypes decide, in order. Names decide only for a model with several inputs,
    which callers pass as a mapping by name; a single input is passed as one array and its
    name is never seen (``x`` and ``input`` are the same input). A dimension the active
    model fixes may become dynamic (the candidate accepts more); a dynamic one may not
    become fixed, nor a fixed one change.
    """
    if len(active) != len(candidate):
        return f"it takes {len(candidate)} inputs, the active model {len(active)}"
    if len(active) > 1:
        names, wanted = sorted(s.name for s in candidate), sorted(s.name for s in active)
        if names != wanted:
            return f"its input names {names[:8]} differ from the active model's {wanted[:8]}"
        by_name = {s.name: s for s in candidate}
        candidate = [by_name[s.name] for s in active]
    for old, new in zip(active, candidate, strict=True):
        which = f"input {old.name[:60]!r}" if len(active) > 1 else "its input"
        if old.dtype != new.dtype:
            return f"{which} is {new.dtype}, the active model's {old.dtype}"
        fits = len(old.shape) == len(new.shape) and all(
            n is None or n == o for o, n in zip(old.shape, new.shape, strict=True)
        )
        if not fits:
            return f"{which} has shape {_dims(new.shape)}, the active model's {_dims(old.shape)}"
    return None


def _dims(shape: tuple[int | None, ...]) -> str:
    return "[" + ",".join("?" if d is None else str(d) for d in shape) + "]"
