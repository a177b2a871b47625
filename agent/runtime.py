"""One onnxruntime session serving one model package: predict, health check, new heads.

:class:`ModelRuntime` wraps a package that :func:`agent.download.check_package` already
accepted (the model manager runs it first). The session is built from the model's bytes, on the CPU
execution provider only (an allowlist of one: no CUDA, TensorRT or other provider that
loads more native code), with no custom operator library, one intra-op thread by
default (small devices; more threads add latency jitter and memory for little gain on
models this size) and sequential execution.

**Inputs** are checked against the manifest's :class:`~protocol.manifest.TensorSpec`
before the session sees them: the rank and every fixed dimension must match, and the
dtype must be the spec's or convert to it without changing a value's meaning. Float to
float (``float64`` to ``float32`` is what JSON numbers become: rounding is accepted,
overflow to infinity is refused) and integer to float are allowed; float to integer only
for whole numbers in range; ``bool`` only from ``bool``. Anything else raises
:class:`~agent.errors.InvalidInput` (HTTP 422) naming the input and what was wrong.

**Errors during inference**: an onnxruntime failure, or a NaN/Inf in the scores, raises
:class:`~agent.errors.InferenceFailed`. :meth:`ModelRuntime.counters` counts *rows*
(:func:`batch_rows`: one per scores row, one per row of a batch that failed), not
requests, so a window of 200 predictions ends after 200 rows however the application
batches them. Invalid input is the caller's fault, not the model's, and is not counted
here (the daemon's stats count it as an error, agent/stats.py).

**Health check** (threat-model B23, :meth:`ModelRuntime.health_check`): the package's smoke
inputs (``smoke.eft``), one warm-up run, then the median of ``runs`` timed runs of the
whole smoke batch must be within ``latency_budget_ms``; every float output finite; every
output of the declared rank and fixed dimensions, the scores one row per smoke row; and
for a classifier head with a softmax or sigmoid, the scores within [0, 1].

**After a swap** the model manager watches the new runtime's :meth:`~ModelRuntime.counters`
and :class:`WatchPolicy` decides: commit, roll back, or keep watching.

**One session per identical model in a process.** Sessions are shared through a cache
keyed by the SHA-256 of the model bytes and the thread count (:func:`shared_session`):
a thousand simulated devices serving the same version hold one onnxruntime session, not
a thousand. That is safe because a session is immutable once built and its ``run`` is
thread-safe; the counters stay per runtime. A retrained head is other bytes, so another
session. The cache holds sessions weakly: the last runtime to let go frees its session.

What it does not do: decide which model to serve (agent/updater.py) or train heads
(agent/learner.py builds a new runtime with :meth:`ModelRuntime.with_head`).
"""

from __future__ import annotations

import hashlib
import math
import statistics
import threading
import time
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple, Self

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from agent.errors import InferenceFailed, InvalidInput, ModelUnhealthy
from protocol.errors import ProtocolError, ShapeMismatch
from protocol.manifest import DType, ModelManifest, TensorSpec
from protocol.messages import ModelRef
from protocol.package import ModelPackage
from protocol.tensors import decode_tensors

PROVIDERS = ("CPUExecutionProvider",)
SMOKE_FILE = "smoke.eft"
PROBABILITY_SLACK = 1e-5
_SMALL = 128
"""Up to this many elements a Python ``sum`` checks finiteness faster than numpy's ufuncs."""

_NP: dict[DType, np.dtype[Any]] = {
    "float32": np.dtype(np.float32),
    "float64": np.dtype(np.float64),
    "float16": np.dtype(np.float16),
    "int64": np.dtype(np.int64),
    "int32": np.dtype(np.int32),
    "int8": np.dtype(np.int8),
    "uint8": np.dtype(np.uint8),
    "bool": np.dtype(np.bool_),
}


class ModelOutput(NamedTuple):
    """One inference: the scores output, and the head's input when the manifest names a head.

    A NamedTuple rather than a frozen dataclass: as immutable, and a third of the cost on
    the hot path. Not ``Prediction``: that name is the local HTTP API's answer
    (``agent.http_api``), which the daemon builds from this.
    """

    scores: np.ndarray
    features: np.ndarray | None


@dataclass(frozen=True)
class HealthReport:
    """What a passed health check measured."""

    rows: int
    latency_ms: float
    budget_ms: float


@dataclass(frozen=True)
class WatchPolicy:
    """When a freshly swapped model has proven itself (units in the names).

    The watch ends after ``predictions`` predicted rows (not requests: 655 rows in 15
    requests are 655) or ``ms`` after the swap, whichever comes first; failed rows
    (exceptions, NaN/Inf scores) above ``max_error_rate`` of those run roll it back.
    """

    predictions: int = 200
    ms: int = 300_000
    max_error_rate: float = 0.05

    def verdict(
        self, predictions: int, errors: int, elapsed_ms: int, *, final: bool = False
    ) -> Literal["commit", "rollback"] | None:
        """Commit, roll back, or ``None`` to keep watching.

        ``final`` ends the watch now (a newer assignment arrived). A rate that can no
        longer come back under the limit rolls back at once.
        """
        if final or predictions >= self.predictions or elapsed_ms >= self.ms:
            return "rollback" if errors > self.max_error_rate * predictions else "commit"
        if errors > self.max_error_rate * self.predictions:
            return "rollback"
        return None


class ModelRuntime:
    """A session over one package's model; thread-safe (onnxruntime's ``run`` is).

    Raises (constructor):
        ModelUnhealthy: onnxruntime cannot load the model.
    """

    def __init__(
        self,
        manifest: ModelManifest,
        model_bytes: bytes,
        *,
        ref: ModelRef,
        smoke: bytes | None = None,
        threads: int = 1,
    ) -> None:
        self.manifest = manifest
        self.ref = ref
        self.model_bytes = model_bytes
        self._smoke = smoke
        self._threads = threads
        self._session = shared_session(model_bytes, threads)
        head = manifest.head
        outputs = {o.name for o in manifest.outputs}
        self._features = head.feature if head is not None and head.feature in outputs else None
        self._output_names = [manifest.scores, *([self._features] if self._features else [])]
        self._run = self._session.run
        self._inputs = {spec.name: _Input(spec) for spec in manifest.inputs}
        self._single = next(iter(self._inputs.values())) if len(self._inputs) == 1 else None
        self._lock = threading.Lock()
        self._predictions = 0
        self._errors = 0

    @classmethod
    def from_package(cls, package: ModelPackage, ref: ModelRef, *, threads: int = 1) -> Self:
        """A runtime for a decoded package (its model and smoke inputs).

        Raises:
            ModelUnhealthy: onnxruntime cannot load the model.
        """
        return cls(
            package.manifest,
            package.model,
            ref=ref,
            smoke=package.files.get(SMOKE_FILE),
            threads=threads,
        )

    # ------------------------------------------------------------------ serving

    def predict(self, inputs: npt.ArrayLike | Mapping[str, npt.ArrayLike]) -> ModelOutput:
        """Run the model on one batch.

        ``inputs`` is an array (or nested lists) for a model with one input, else a mapping
        by input name.

        Raises:
            InvalidInput: missing or unknown inputs, a wrong rank, fixed dimension or dtype.
            InferenceFailed: onnxruntime failed, or the scores hold NaN or Inf.
        """
        single = self._single
        if single is not None and type(inputs) is np.ndarray:
            feeds = {single.name: single.coerce(inputs)}  # the common case, one call shorter
        else:
            feeds = self._feeds(inputs)
        try:
            outputs = self._run(self._output_names, feeds, None)
        except Exception as e:  # onnxruntime's errors derive from Exception only
            self._count_failed(batch_rows(next(iter(feeds.values()))))
            raise InferenceFailed(f"onnxruntime failed: {str(e)[:200]}") from e
        scores = outputs[0]
        if scores.dtype.kind == "f" and not _finite(scores):
            self._count_failed(batch_rows(scores))
            raise InferenceFailed(f"the model's {self.manifest.scores[:60]!r} hold NaN or Inf")
        with self._lock:  # the rows of batch_rows(scores), inlined: this is the hot path
            self._predictions += len(scores) if scores.ndim else 1
        # tuple.__new__ skips the NamedTuple's Python-level __new__ (~0.1 us of ~10).
        return _new_output(ModelOutput, (scores, outputs[1] if self._features else None))

    def counters(self) -> tuple[int, int]:
        """Rows predicted and how many of them failed, since this runtime was built."""
        with self._lock:
            return self._predictions, self._errors

    def with_head(self, weight: np.ndarray, bias: np.ndarray) -> Self:
        """A new runtime for the same version, serving new head parameters.

        Raises:
            ShapeMismatch: no trainable head, or arrays that do not fit it.
            NonFinite: non-finite parameters.
            ModelUnhealthy: onnxruntime cannot load the rewritten model.
        """
        if self.manifest.head is None:
            raise ShapeMismatch(f"{self.ref.name} v{self.ref.version} has no trainable head")
        # Imported here: onnx costs the idle agent ~7 MB, and only retraining needs it.
        from protocol.headparams import write_head

        rewritten = write_head(self.model_bytes, self.manifest.head, weight, bias)
        return type(self)(
            self.manifest, rewritten, ref=self.ref, smoke=self._smoke, threads=self._threads
        )

    # ------------------------------------------------------------------ health

    def health_check(self, *, runs: int = 5, budget_ms: float | None = None) -> HealthReport:
        """Run the smoke inputs and check outputs and latency (module docstring).

        ``budget_ms`` defaults to the manifest's ``latency_budget_ms``.

        Raises:
            ModelUnhealthy: no or unusable smoke inputs, an output that is not finite, of
                the wrong shape or out of range, an inference failure, or the median
                latency over the budget.
        """
        budget = self.manifest.latency_budget_ms if budget_ms is None else budget_ms
        feeds, rows = self._smoke_feeds()
        names = [o.name for o in self.manifest.outputs]
        try:
            outputs = self._session.run(names, feeds)
            timings = []
            for _ in range(max(1, runs)):
                started = time.perf_counter()
                self._session.run(self._output_names, feeds)
                timings.append((time.perf_counter() - started) * 1000)
        except Exception as e:  # onnxruntime's errors derive from Exception only
            raise ModelUnhealthy(f"the smoke inputs fail: {str(e)[:200]}") from e
        for spec, value in zip(self.manifest.outputs, outputs, strict=True):
            self._check_output(spec, np.asarray(value), rows)
        latency = statistics.median(timings)
        if latency > budget:
            raise ModelUnhealthy(
                f"median latency {latency:.3f} ms over the budget {budget:.3f} ms ({rows} rows)"
            )
        return HealthReport(rows, latency, budget)

    def _smoke_feeds(self) -> tuple[dict[str, np.ndarray], int]:
        if self._smoke is None:
            raise ModelUnhealthy("the package carries no smoke inputs")
        try:
            tensors = decode_tensors(self._smoke)
        except ProtocolError as e:
            raise ModelUnhealthy(f"the smoke inputs do not decode: {e}") from e
        try:
            feeds = self._feeds(tensors)
        except InvalidInput as e:
            raise ModelUnhealthy(f"the smoke inputs do not fit the model: {e}") from e
        first = next(iter(feeds.values()))
        return feeds, int(first.shape[0]) if first.ndim else 1

    def _check_output(self, spec: TensorSpec, value: np.ndarray, rows: int) -> None:
        name = spec.name[:60]
        if value.ndim != len(spec.shape) or any(
            d is not None and d != n for d, n in zip(spec.shape, value.shape, strict=False)
        ):
            raise ModelUnhealthy(f"output {name!r} has shape {value.shape}, not {spec.signature()}")
        if value.dtype.kind == "f" and not _finite(value):
            raise ModelUnhealthy(f"output {name!r} holds NaN or Inf on the smoke inputs")
        if spec.name != self.manifest.scores:
            return
        first_input = self.manifest.inputs[0].shape
        batched = bool(spec.shape) and spec.shape[0] is None and first_input[:1] == (None,)
        if batched and value.shape[0] != rows:
            raise ModelUnhealthy(f"scores {name!r} have {value.shape[0]} rows for {rows} inputs")
        head = self.manifest.head
        probabilities = head is not None and head.task == "classification"
        if probabilities and head is not None and head.activation != "identity":
            low, high = (float(value.min()), float(value.max())) if value.size else (0.0, 1.0)
            if low < -PROBABILITY_SLACK or high > 1 + PROBABILITY_SLACK:
                raise ModelUnhealthy(f"probabilities {name!r} outside [0, 1]: {low}..{high}")

    # ------------------------------------------------------------------ inputs

    def _feeds(self, inputs: npt.ArrayLike | Mapping[str, npt.ArrayLike]) -> dict[str, np.ndarray]:
        single = self._single
        if single is not None and (type(inputs) is np.ndarray or not isinstance(inputs, Mapping)):
            return {single.name: single.coerce(inputs)}
        if not isinstance(inputs, Mapping):
            names = ", ".join(self._inputs)
            raise InvalidInput(f"the model takes several inputs: pass a mapping of {names}")
        if set(inputs) != set(self._inputs):
            want, got = sorted(self._inputs), sorted(map(str, inputs))
            raise InvalidInput(f"inputs {got[:8]} differ from the model's {want[:8]}")
        return {name: check.coerce(inputs[name]) for name, check in self._inputs.items()}

    def _count_failed(self, rows: int) -> None:
        with self._lock:
            self._predictions += rows
            self._errors += rows


_SESSIONS: weakref.WeakValueDictionary[tuple[str, int], ort.InferenceSession] = (
    weakref.WeakValueDictionary()
)
_SESSIONS_LOCK = threading.Lock()


def shared_session(model_bytes: bytes, threads: int) -> ort.InferenceSession:
    """The process's session for these exact model bytes and thread count, built once
    (module docstring).

    Raises:
        ModelUnhealthy: onnxruntime cannot load the model.
    """
    key = (hashlib.sha256(model_bytes).hexdigest(), threads)
    with _SESSIONS_LOCK:  # two devices installing one version at once build it once
        session = _SESSIONS.get(key)
        if session is None:
            options = ort.SessionOptions()
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
            options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
            options.log_severity_level = 3
            try:
                session = ort.InferenceSession(model_bytes, options, providers=list(PROVIDERS))
            except Exception as e:  # onnxruntime's errors derive from Exception only
                raise ModelUnhealthy(f"onnxruntime cannot load the model: {str(e)[:200]}") from e
            _SESSIONS[key] = session
        return session


class _Input:
    """One graph input's checks, precomputed: predict's fast path is a few comparisons."""

    def __init__(self, spec: TensorSpec) -> None:
        self.spec = spec
        self.name = spec.name
        self.dtype = _NP[spec.dtype]
        self.rank = len(spec.shape)
        self.fixed = tuple((axis, d) for axis, d in enumerate(spec.shape) if d is not None)

    def coerce(self, value: Any) -> np.ndarray:
        """``value`` as an array of the spec's dtype and shape (module docstring), or refuse.

        Raises:
            InvalidInput: naming the input and what does not fit.
        """
        array = value if type(value) is np.ndarray else _as_array(self.spec, value)
        shape = array.shape
        if len(shape) != self.rank:
            raise InvalidInput(
                f"input {self.name[:60]!r} has {len(shape)} dimensions, "
                f"{self.spec.signature()} has {self.rank}"
            )
        for axis, want in self.fixed:
            if shape[axis] != want:
                raise InvalidInput(
                    f"input {self.name[:60]!r} has {shape[axis]} at axis {axis}, "
                    f"{self.spec.signature()} needs {want}"
                )
        if array.dtype == self.dtype:
            return array
        return _cast(self.spec, array, self.dtype)


def batch_rows(value: Any) -> int:
    """How many rows a batch holds: the first dimension of an array or the length of a
    list (the first input's, for a mapping by input name); 1 for a scalar or anything
    that is not a batch. What the stats count for a request, valid or not."""
    if isinstance(value, Mapping):
        return batch_rows(next(iter(value.values()))) if value else 1
    if isinstance(value, np.ndarray):
        return int(value.shape[0]) if value.ndim else 1
    if isinstance(value, list | tuple):
        return len(value)
    return 1


def _as_array(spec: TensorSpec, value: Any) -> np.ndarray:
    try:
        array = np.asarray(value)
    except (TypeError, ValueError) as e:
        raise InvalidInput(f"input {spec.name[:60]!r} is not a rectangular array") from e
    return array


def _cast(spec: TensorSpec, array: np.ndarray, target: np.dtype[Any]) -> np.ndarray:
    name, source = spec.name[:60], array.dtype
    refused = InvalidInput(f"input {name!r} is {source}, and the model takes {spec.dtype}")
    if target.kind == "f" and source.kind in "fiu":
        with np.errstate(over="ignore"):
            cast = array.astype(target)
        if source.kind == "f" and not np.array_equal(np.isinf(cast), np.isinf(array)):
            raise InvalidInput(f"input {name!r} holds values beyond {spec.dtype}'s range")
        return cast
    if target.kind in "iu" and source.kind in "fiu":
        if array.size and source.kind == "f" and not np.all(np.isfinite(array)):
            raise refused
        info = np.iinfo(target)
        low, high = (array.min(), array.max()) if array.size else (0, 0)
        if low < info.min or high > info.max or (source.kind == "f" and np.any(array % 1)):
            raise InvalidInput(f"input {name!r} holds values that are not whole {spec.dtype}s")
        return array.astype(target)
    raise refused


def _finite(array: npt.NDArray[Any]) -> bool:
    """Whether every element of a float array is finite.

    Small arrays (the scores of a few rows) by one Python ``sum``: it is NaN or infinite if
    any element is (NaN and infinity propagate, ``inf + -inf`` is NaN), so a finite sum
    proves every element finite. Finite values can overflow a sum, so a non-finite one
    falls back to the element-wise check: the answer is always exact. Right after
    onnxruntime ran, numpy's first ufunc call costs a few microseconds, which is the whole
    budget for one row; Python's ``sum`` over ``tolist()`` (float64, no warnings) is
    cheaper up to :data:`_SMALL` elements.
    """
    if array.size > _SMALL:
        return bool(np.isfinite(array).all())
    return math.isfinite(sum(array.ravel().tolist())) or bool(np.isfinite(array).all())


_new_output = tuple.__new__
