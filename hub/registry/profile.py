"""What registration learns from a model and its data, before anything is written.

:func:`analyze` checks the model (:func:`protocol.modelcheck.inspect_model`: hostile
models are refused: external data, custom operators...), finds its trainable head
(:func:`protocol.heads.find_head`, or the node the operator names) and rewrites the
graph to output the head's input (:func:`~protocol.heads.prepare_model`); no head means
the model still serves with retraining off, and :attr:`Analysis.head_reason` says why.
The scores are the first float output (or the one the named head produces).

The operator uploads reference rows (what the model should see in the field) and
optionally validation rows with labels. From them, and the model run on onnxruntime's
CPU provider, this module computes:

- per input feature, quantile bin edges (``DEFAULT_BINS`` bins) and the reference
  proportion in each bin (:class:`~protocol.manifest.FeatureProfile`);
- the prediction distribution on the reference rows: class proportions from the argmax
  of the scores for classification, quantile bins of the first output column for
  regression (:class:`~protocol.manifest.PredictionProfile`);
- validation metrics: accuracy (``y`` holds class indices ``0..C-1``, the scores'
  columns) or mean squared error;
- smoke inputs (``SMOKE_ROWS`` reference rows spread over the set) and the latency
  budget the device's health check applies to them.

**Binning rule** (the device's sketches must count the same way): bin ``i`` is
``[edges[i], edges[i+1])``, except the last, which includes its upper edge. Reference
values always fall inside ``[edges[0], edges[-1]]`` (the edges are the 0 and 1
quantiles); a device counts values outside that range as underflow and overflow.
Edges are strictly increasing: tied quantiles are merged, so a feature with many equal
values gets fewer bins, and a constant feature ``v`` gets the one bin ``[v, v⁺]``
(``v⁺`` the next float64 after ``v``).

**Latency budget rule**: ``max(50 ms, 20 × p95)`` where p95 is measured on the hub, on
one thread, over 20 runs of the smoke batch after 3 warm-up runs. Edge CPUs are often
an order of magnitude slower than the hub's; the factor 20 leaves room for that and for
a busy device, while still catching a model that is pathologically slow.

Data arrives as ``.npz`` and is read by :mod:`hub.registry.datasets` (never unpickled,
sizes checked before numpy allocates anything).

What this module does not do: write anything, or define what makes a model unsafe
(:mod:`protocol.modelcheck` does; this module only applies it).
"""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
import onnxruntime as ort

from hub.drift.performance import choose_calibration
from hub.errors import InvalidRequest
from hub.registry.datasets import Dataset, load_dataset
from protocol import heads
from protocol.errors import Malformed
from protocol.manifest import (
    FeatureProfile,
    Head,
    PredictionProfile,
    Profile,
    ProfileCalibration,
    TensorSpec,
)
from protocol.modelcheck import MAX_MODEL_BYTES, ModelInfo, inspect_model
from protocol.tensors import encode_tensors

Task = Literal["classification", "regression"]

DEFAULT_BINS = 10
SMOKE_ROWS = 8
BATCH_ROWS = 4096
LATENCY_FLOOR_MS = 50.0
LATENCY_FACTOR = 20.0
WARMUP_RUNS = 3
TIMED_RUNS = 20
_FLOAT_DTYPES = {"float32": np.float32, "float64": np.float64, "float16": np.float16}


# ---------------------------------------------------------------- bins and proportions


def quantile_edges(values: np.ndarray, bins: int = DEFAULT_BINS) -> tuple[float, ...]:
    """Strictly increasing quantile edges of ``values`` (finite, non-empty); see the module
    docstring for ties and constants."""
    quantiles = np.quantile(values.astype(np.float64), np.linspace(0.0, 1.0, bins + 1))
    edges = np.unique(quantiles)
    if edges.size == 1:
        edges = np.array([edges[0], np.nextafter(edges[0], np.inf)])
    return tuple(float(e) for e in edges)


def bin_proportions(edges: tuple[float, ...], values: np.ndarray) -> tuple[float, ...]:
    """Share of ``values`` in each bin; out-of-range values fold into the end bins."""
    index = np.searchsorted(np.asarray(edges), values.astype(np.float64), side="right") - 1
    counts = np.bincount(np.clip(index, 0, len(edges) - 2), minlength=len(edges) - 1)
    return tuple(float(c) / len(values) for c in counts)


def feature_profiles(data: Dataset, bins: int = DEFAULT_BINS) -> tuple[FeatureProfile, ...]:
    """One :class:`FeatureProfile` per column of ``data.x``."""
    profiles = []
    for name, column in zip(data.feature_names, data.x.T, strict=True):
        edges = quantile_edges(column, bins)
        profiles.append(FeatureProfile(name, edges, bin_proportions(edges, column)))
    return tuple(profiles)


def class_scores(scores: np.ndarray) -> np.ndarray:
    """Scores as ``[rows, classes]``; a single probability column becomes ``[1 - p, p]``."""
    scores = scores.reshape(scores.shape[0], -1)
    return np.hstack([1.0 - scores, scores]) if scores.shape[1] == 1 else scores


def prediction_profile(
    scores: np.ndarray, task: Task, bins: int = DEFAULT_BINS
) -> PredictionProfile:
    """Class proportions (classification) or first-column bins (regression)."""
    if task == "classification":
        per_class = class_scores(scores)
        counts = np.bincount(per_class.argmax(axis=1), minlength=per_class.shape[1])
        return PredictionProfile("classes", tuple(float(c) / len(per_class) for c in counts))
    first = scores.reshape(scores.shape[0], -1)[:, 0]
    edges = quantile_edges(first, bins)
    return PredictionProfile("bins", bin_proportions(edges, first), edges)


def infer_task(scores: np.ndarray) -> Task:
    """For a model without a recognised head: classification when the scores have two or
    more columns of probabilities that sum to 1 per row, regression otherwise."""
    rows = scores.reshape(scores.shape[0], -1)
    probabilities = (
        rows.shape[1] >= 2
        and bool(np.all((rows >= 0.0) & (rows <= 1.0)))
        and bool(np.allclose(rows.sum(axis=1), 1.0, atol=1e-3))
    )
    return "classification" if probabilities else "regression"


def metrics(scores: np.ndarray, y: np.ndarray, task: Task) -> dict[str, float]:
    """Validation metrics: ``accuracy`` or ``mse``, plus the number of ``rows``.

    Raises:
        InvalidRequest: classification labels that are not class indices of the scores,
            or regression targets whose shape differs from the predictions'.
    """
    if task == "classification":
        per_class = class_scores(scores)
        labels = y.reshape(-1)
        if y.ndim != 1 or np.any(labels != np.round(labels)) or labels.min() < 0:
            raise InvalidRequest("validation y must be class indices 0..C-1 (one per row)")
        if labels.max() >= per_class.shape[1]:
            raise InvalidRequest(
                f"validation y names class {int(labels.max())}; the model scores "
                f"{per_class.shape[1]} classes"
            )
        accuracy = float(np.mean(per_class.argmax(axis=1) == labels.astype(np.int64)))
        return {"accuracy": accuracy, "rows": float(len(labels))}
    predictions = scores.reshape(scores.shape[0], -1).astype(np.float64)
    targets = y.reshape(y.shape[0], -1)
    if targets.shape != predictions.shape:
        raise InvalidRequest(
            f"validation y of shape {y.shape} does not match predictions {predictions.shape}"
        )
    return {"mse": float(np.mean((predictions - targets) ** 2)), "rows": float(len(targets))}


def smoke_rows(x: np.ndarray, count: int = SMOKE_ROWS) -> np.ndarray:
    """``count`` rows spread evenly over ``x`` (all of them when there are fewer)."""
    index = np.unique(np.linspace(0, x.shape[0] - 1, min(count, x.shape[0])).astype(np.int64))
    return np.ascontiguousarray(x[index])


def latency_budget_ms(p95_ms: float) -> float:
    """The health check's budget for the smoke batch (module docstring's rule), 0.1 ms up."""
    return math.ceil(max(LATENCY_FLOOR_MS, LATENCY_FACTOR * p95_ms) * 10) / 10


def build_profile(
    data: Dataset, scores: np.ndarray, task: Task, bins: int = DEFAULT_BINS
) -> Profile:
    """The manifest's drift reference from the reference rows and the model's scores on them."""
    return Profile(
        features=feature_profiles(data, bins),
        predictions=prediction_profile(scores, task, bins),
        rows=int(data.x.shape[0]),
    )


MAX_KNOTS = 4096  # protocol.manifest.ProfileCalibration


def calibration(scores: np.ndarray, y: np.ndarray, seed: int) -> ProfileCalibration | None:
    """Top-label isotonic calibration of a classifier on its validation rows, kept only if
    it lowers the cross-validated calibration error (docs/drift.md, "Label-free
    performance"); the folds are drawn from ``seed`` (the model's digest), so registering
    the same upload twice gives the same profile."""
    choice = choose_calibration(class_scores(scores), y, np.random.default_rng(seed))
    found = choice.calibration
    if found is None or len(found.knots_x) > MAX_KNOTS:
        return None
    return ProfileCalibration(found.knots_x, found.knots_y)


# ---------------------------------------------------------------- the whole analysis


@dataclass(frozen=True)
class Analysis:
    """Everything registration needs besides a version number; nothing written yet.

    ``model`` is the prepared graph (the head's input exposed), ``info`` its
    description, ``smoke`` the smoke inputs as a :mod:`protocol.tensors` container.
    """

    model: bytes
    info: ModelInfo
    head: Head | None
    head_reason: str | None
    scores: str
    profile: Profile
    metrics: dict[str, float]
    latency_budget_ms: float
    smoke: bytes
    reference_rows: int
    validation_rows: int


def analyze(
    model: bytes,
    *,
    reference: bytes,
    validation: bytes | None = None,
    head: str | None = None,
    max_model_bytes: int = MAX_MODEL_BYTES,
) -> Analysis:
    """Check ``model``, find its head, profile it on the data (module docstring).

    Raises:
        Oversize: a model larger than ``max_model_bytes``.
        UnsafeModel, Incompatible: :func:`protocol.modelcheck.inspect_model` refuses it.
        ShapeMismatch: the head cannot be exposed as an output.
        InvalidRequest: unusable data, data that does not fit the model, a model that
            fails or outputs NaN on it, or no supported head at the node ``head`` names.
    """
    info = inspect_model(model, max_bytes=max_model_bytes)
    ref = load_dataset(reference, what="reference")
    val = load_dataset(validation, what="validation") if validation else None
    if val is not None:
        _check_validation(val, ref)
    found, scores, reason = _choose_head(model, info, head)
    prepared = heads.prepare_model(model, found) if found else model
    prepared_info = inspect_model(prepared, max_bytes=max_model_bytes)
    spec = _single_input(prepared_info, ref)
    runner = ModelRunner(prepared, spec)
    ref_scores = runner.run(ref.x, scores)
    task = found.task if found else infer_task(ref_scores)
    results: dict[str, float] = {}
    profile = build_profile(ref, ref_scores, task)
    if val is not None and val.y is not None:
        val_scores = runner.run(val.x, scores)
        results = metrics(val_scores, val.y, task)
        if task == "classification":
            seed = int(hashlib.sha256(model).hexdigest()[:8], 16)
            profile = replace(profile, calibration=calibration(val_scores, val.y, seed))
    smoke = smoke_rows(ref.x, runner.smoke_count)
    try:
        smoke_container = encode_tensors({spec.name: smoke})
    except Malformed as e:
        raise InvalidRequest(f"cannot store smoke inputs for {spec.name[:60]!r}: {e}") from e
    return Analysis(
        model=prepared,
        info=prepared_info,
        head=found,
        head_reason=reason,
        scores=scores,
        profile=profile,
        metrics=results,
        latency_budget_ms=latency_budget_ms(runner.latency_p95_ms(smoke, scores)),
        smoke=smoke_container,
        reference_rows=int(ref.x.shape[0]),
        validation_rows=int(val.x.shape[0]) if val else 0,
    )


def _check_validation(val: Dataset, ref: Dataset) -> None:
    """Validation rows must be scoreable like the reference rows: labelled, same width.

    A model with a dynamic feature axis would run on any width, and rows without ``y``
    would give no metric: both were accepted silently before.

    Raises:
        InvalidRequest: no ``y``, or another number of features than the reference.
    """
    if val.y is None:
        raise InvalidRequest(
            "validation data has no labels (array y): metrics need them; "
            "register without --validation for none"
        )
    if val.x.shape[1] != ref.x.shape[1]:
        raise InvalidRequest(
            f"validation data has {val.x.shape[1]} features; the reference has {ref.x.shape[1]}"
        )


def _choose_head(
    model: bytes, info: ModelInfo, node: str | None
) -> tuple[Head | None, str, str | None]:
    """(head or None, scores output, why there is no head)."""
    outputs = [o.name for o in info.outputs if o.dtype in _FLOAT_DTYPES]
    if not outputs:
        raise InvalidRequest("the model has no float output to read scores from")
    if node is None:
        head = heads.find_head(model, outputs[0])
        reason = None if head else heads.head_unsupported_reason(model, outputs[0])
        return head, outputs[0], reason
    for output in outputs:
        head = heads.find_head(model, output)
        if head is not None and head.node == node:
            return head, output, None
    why = heads.head_unsupported_reason(model, outputs[0]) or "it is not the head of an output"
    raise InvalidRequest(f"no supported head at node {node[:60]!r}: {why}")


def _single_input(info: ModelInfo, data: Dataset) -> TensorSpec:
    if len(info.inputs) != 1:
        raise InvalidRequest(f"the model takes {len(info.inputs)} inputs; registration needs one")
    spec = info.inputs[0]
    width = spec.shape[1] if len(spec.shape) == 2 else None
    if width is not None and width != data.x.shape[1]:
        raise InvalidRequest(
            f"the data has {data.x.shape[1]} features; model input {spec.signature()} takes {width}"
        )
    return spec


# ---------------------------------------------------------------- running the model


class ModelRunner:
    """One onnxruntime CPU session over a model that :mod:`protocol.modelcheck` accepted.

    Feeds the single input ``spec`` with rows of float32 features, cast to the input's
    float dtype, in batches (of the input's fixed batch size, if it has one).

    Raises (constructor):
        InvalidRequest: onnxruntime cannot load the model.
    """

    def __init__(self, model: bytes, spec: TensorSpec) -> None:
        dtype = _FLOAT_DTYPES.get(spec.dtype)
        if dtype is None or len(spec.shape) != 2:
            raise InvalidRequest(
                f"model input {spec.signature()} is not a float [rows, features] tensor"
            )
        self.spec = spec
        self._dtype = dtype
        self._batch = spec.shape[0] or BATCH_ROWS
        self.smoke_count = spec.shape[0] or SMOKE_ROWS
        """Rows in one smoke batch: the input's fixed batch size, if it has one."""
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        try:
            self._session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime's errors derive from Exception only
            raise InvalidRequest(f"onnxruntime cannot load the model: {str(e)[:200]}") from e

    def run(self, x: np.ndarray, output: str) -> np.ndarray:
        """``output`` for every row of ``x`` (a fixed batch size drops the remainder).

        Raises:
            InvalidRequest: the model fails on the rows or outputs non-finite values.
        """
        if x.shape[0] < self._batch and self.spec.shape[0] is not None:
            raise InvalidRequest(f"the model takes batches of {self._batch} rows; got fewer")
        usable = x.shape[0] - x.shape[0] % self._batch if self.spec.shape[0] else x.shape[0]
        parts = [
            self._run(x[start : start + self._batch], output)
            for start in range(0, usable, self._batch)
        ]
        result = np.concatenate(parts) if len(parts) > 1 else parts[0]
        if not np.all(np.isfinite(result)):
            raise InvalidRequest(f"the model outputs NaN or infinity in {output!r}")
        return result

    def _run(self, rows: np.ndarray, output: str) -> np.ndarray:
        feeds = {self.spec.name: rows.astype(self._dtype)}
        try:
            (result,) = self._session.run([output], feeds)
        except Exception as e:  # onnxruntime's errors derive from Exception only
            raise InvalidRequest(f"the model fails on the data: {str(e)[:200]}") from e
        return np.asarray(result, dtype=np.float64)

    def latency_p95_ms(self, rows: np.ndarray, output: str) -> float:
        """p95 wall time of one run over ``rows``, after warm-up (module docstring)."""
        for _ in range(WARMUP_RUNS):
            self._run(rows, output)
        times = []
        for _ in range(TIMED_RUNS):
            start = time.perf_counter_ns()
            self._run(rows, output)
            times.append((time.perf_counter_ns() - start) / 1e6)
        times.sort()
        return times[max(0, math.ceil(0.95 * len(times)) - 1)]
