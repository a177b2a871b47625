"""Local retraining of one model version: feedback in, a better head served, a delta out.

One :class:`Learner` per active model version, built from the runtime of the version as
released (the *base*). It remembers the head features of each prediction, takes labels
(:mod:`agent.feedback`), and on the retrain job (:meth:`Learner.maybe_retrain`) trains
the head in numpy (:mod:`agent.trainer`) starting from the head it currently serves.
It keeps the result only if the holdout metric beats the current head's by
``min_gain``; then it serves it (``runtime.with_head``) and returns the delta for the
hub: ``trained - base`` per tensor, L2-clipped to the hub's ``delta_clip_norm`` and
encoded with :mod:`protocol.tensors`.

In a round (the hub's config names one) any strict gain on the holdout sends the delta,
unserved when it is below ``min_gain``: a round averages what its devices learned, and
as the fleet model improves most devices gain less than ``min_gain``; leaving them out
shrank 30-device rounds to a handful of deltas that failed validation, two points short
of the central head. A device with no gain at all still sends nothing: its delta would
only dilute what the others learned (a drift round whose undrifted cohort sent deltas
failed validation). The hub screens and validates the aggregate; the device keeps
serving its current head.

Clipping without lying. Training is projected onto the L2 ball of radius
``delta_clip_norm`` around the base head, so the clipped delta the hub receives,
applied to the base, is the head the device serves and the ``after`` it reports
(``clip_l2`` then only absorbs float32 rounding). Clipping only the delta instead
would report the metric of one head and send another.

The delta (:class:`~protocol.messages.DeltaUpload`):

- tensors named as the head's weight and bias (``Head.weight``/``Head.bias``: the
  initializer names, or ``coefficients``/``intercepts`` for ``ai.onnx.ml`` heads), in the
  canonical layout of :mod:`protocol.headparams`: weight ``(n_features, n_outputs)``,
  bias ``(n_outputs,)``; a head without a bias sends the weight only (threat-model B26: the
  hub checks these against the base model's head);
- ``before``: the *base* head's metric on the holdout rows (the delta moves the base),
  ``after``: the trained head's on the same rows; ``num_samples``: the training rows;
- encoding by size (:func:`delta_encoding`): up to 16,384 values ``f32`` (exact, at
  most 64 KiB), up to 65,536 ``f16`` (relative error 2^-11, at most 128 KiB), beyond
  that ``topk-f16`` with **error feedback** (:func:`protocol.sparsify.sparsify`): the
  32,768 largest entries of the delta plus what earlier deltas left unsent (the same share
  of each tensor, rounded up; sent exactly as float16, so at most 6 bytes per kept value,
  under 200 KiB), and the rest, f16 rounding included, kept as the *residual* for the next
  delta instead of being dropped for good: frames are capped at 256 KiB
  (:mod:`protocol.frame`). The residual is kept per model (``residual-<name>.eft``, written
  atomically), carried from version to version, and reset when the head's shape changes.

A non-finite result is never sent (B27): the status says ``failed`` and why.

Exact mode: when the hub's config says ``update_kind = "stats"`` (a round of a model in
exact mode), the retrain job trains nothing and sends, to that round, the sufficient
statistics of every labelled row's head features (:mod:`protocol.linearstats`) instead of
a delta; the hub solves for the whole fleet (docs/rounds.md, "Exact mode for linear heads").

The holdout is drawn afresh for each run, so rows the current head was trained on may
be held out the next time: that flatters the current head, which makes the keep policy
conservative, never lax. A job re-runs only when the labelled set or the hub's config
changed since the last attempt.

Persistence (under ``state_dir``): the labelled feedback (``feedback.db``, see
:mod:`agent.feedback`) and the served head (``head-<base sha256>.eft``, written
atomically), so a restart serves the retrained head again while the base version is
unchanged; a new base version deletes both.

Threads: observe and feedback come from request threads, the retrain job from the
scheduler; shared state is behind a lock and training runs outside it. The learner
never swaps the runtime itself: the caller assigns the returned one (one reference
assignment).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Generic, NamedTuple, Protocol, Self, TypeVar

import numpy as np
import numpy.typing as npt

from agent.errors import RetrainingOff
from agent.feedback import FeedbackBuffer, FeedbackLimits, FeedbackReport, LabelSpec
from agent.trainer import TrainResult, evaluate, improved, train_head
from edgefleet.files import write_atomic
from protocol.errors import EdgefleetError
from protocol.headparams import read_head
from protocol.heads import head_unsupported_reason
from protocol.linearstats import local_stats, targets, to_tensors
from protocol.manifest import Head, ModelManifest
from protocol.messages import DeltaUpload, DeviceConfig, ModelRef
from protocol.sparsify import sparsify, topk_fraction
from protocol.tensors import F16_OVERFLOW, Encoding, clip_l2, decode_tensors, encode_tensors

logger = logging.getLogger(__name__)

FEEDBACK_DB = "feedback.db"
MAX_STATUS = 500
Floats = npt.NDArray[np.float32]


class HeadRuntime(Protocol):
    """What the learner needs of :class:`agent.runtime.ModelRuntime`."""

    @property
    def manifest(self) -> ModelManifest: ...

    @property
    def ref(self) -> ModelRef: ...

    @property
    def model_bytes(self) -> bytes: ...

    def with_head(self, weight: np.ndarray, bias: np.ndarray) -> Self: ...


R = TypeVar("R", bound=HeadRuntime)


class Retrain(NamedTuple, Generic[R]):
    """One retrain job's outcome: a runtime to serve and a delta to send (or ``None``s),
    and the status line for the state report."""

    runtime: R | None
    delta: DeltaUpload | None
    status: str


@dataclass(frozen=True)
class LearnerSettings:
    """Training hyperparameters (see :func:`agent.trainer.train_head`), the keep policy,
    feedback bounds and the delta encoding thresholds (in tensor elements)."""

    epochs: int = 30
    batch_size: int = 32
    lr: float = 0.5
    momentum: float = 0.9
    l2: float = 1e-3
    holdout_fraction: float = 0.25
    min_gain: float = 0.01
    feedback: FeedbackLimits = field(default_factory=FeedbackLimits)
    f32_max_elements: int = 16_384
    f16_max_elements: int = 65_536
    topk_max_kept: int = 32_768
    seed: int | None = None


def delta_encoding(size: int, max_abs: float, settings: LearnerSettings) -> tuple[Encoding, float]:
    """The encoding (and top-k fraction) for a delta of ``size`` values (module docstring)."""
    if size <= settings.f32_max_elements:
        return "f32", 1.0
    if size <= settings.f16_max_elements:
        return ("f16" if max_abs < F16_OVERFLOW else "i8"), 1.0
    return "topk-f16", min(1.0, settings.topk_max_kept / size)


class Learner(Generic[R]):
    """Feedback, retraining and deltas for the version ``base`` serves (as released).

    ``state_dir=None`` keeps nothing on disk. Call :meth:`serving` once for the runtime
    to serve (the restored head, if any), :meth:`close` when the version is replaced.
    """

    def __init__(
        self,
        base: R,
        *,
        state_dir: Path | None = None,
        settings: LearnerSettings | None = None,
    ) -> None:
        self.settings = settings or LearnerSettings()
        self.ref = base.ref
        self._base = base
        self._head = base.manifest.head
        self._lock = threading.Lock()
        self._rng = np.random.default_rng(self.settings.seed)
        self._dir = state_dir
        self._attempted: tuple[int, DeviceConfig] | None = None
        self._buffer: FeedbackBuffer | None = None
        self._residual: dict[str, Floats] | None = None  # top-k error feedback, in memory
        if self._head is None:
            self._status = f"off: {_no_head_reason(base)}"[:MAX_STATUS]
            return
        if state_dir is not None:
            state_dir.mkdir(parents=True, exist_ok=True)
        self._base_params = read_head(base.model_bytes, self._head)
        self._current = self._base_params
        self._buffer = FeedbackBuffer(
            LabelSpec.for_head(self._head, base.manifest.classes),
            self._head.n_features,
            model=self.ref.sha256,
            path=None if state_dir is None else state_dir / FEEDBACK_DB,
            limits=self.settings.feedback,
        )
        self._status = "waiting: no labelled feedback yet"

    # ------------------------------------------------------------------ lifecycle

    def serving(self) -> R:
        """The runtime to serve now: the base, or the base with the head saved for it.

        A saved head of another base version is deleted; one that cannot be read or
        served is deleted and the base is served.
        """
        if self._head is None or self._dir is None:
            return self._base
        for path in self._dir.glob("head-*.eft"):
            if path != self._head_path():
                path.unlink(missing_ok=True)
        saved = self._load_head()
        if saved is None:
            return self._base
        try:
            runtime = self._base.with_head(*saved)
        except EdgefleetError as e:
            logger.warning("saved head for %s cannot be served, dropped: %s", self.ref.name, e)
            self._head_path().unlink(missing_ok=True)
            return self._base
        with self._lock:
            self._current = saved
            self._status = "retrained: serving the head saved before the restart"
        return runtime

    def close(self) -> None:
        if self._buffer is not None:
            self._buffer.close()

    # ------------------------------------------------------------------ requests

    def observe(self, ids: Sequence[str], features: np.ndarray | None, now_ms: int) -> None:
        """Remember the head features of one predict call's rows, by prediction id.

        A model without a head (``features is None``) remembers nothing.

        Raises:
            ValueError: not one row of head features per id (a caller's bug).
        """
        if self._buffer is not None and features is not None:
            self._buffer.remember(ids, features, now_ms)

    def feedback(self, labels: Mapping[str, object], now_ms: int) -> FeedbackReport:
        """Attach labels to earlier predictions; unknown or expired ids are reported back.

        Raises:
            RetrainingOff: this model has no trainable head (409).
            InvalidLabel: a label the model cannot take; nothing is stored (422).
        """
        if self._buffer is None:
            raise RetrainingOff(self.status)
        return self._buffer.label(labels, now_ms)

    @property
    def status(self) -> str:
        """One line for ``StateReport.retrain``: ``off|waiting|retrained|unchanged|failed: …``."""
        with self._lock:
            return self._status

    def info(self) -> dict[str, object]:
        """For the local ``/status``: the status line and the feedback counts."""
        counts = self._buffer.counts() if self._buffer is not None else {}
        return {"retrain": self.status, **counts}

    # ------------------------------------------------------------------ the retrain job

    def maybe_retrain(self, runtime: R, config: DeviceConfig, now_ms: int) -> Retrain[R]:
        """Retrain if the hub allows it and there is new labelled feedback; see the module
        docstring for what is kept, served and sent. ``runtime`` is the one serving now.
        """
        if self._head is None or self._buffer is None:
            return Retrain(None, None, self.status)
        if not config.retrain:
            return self._finish(None, None, "off: retraining is disabled by the hub")
        if runtime.ref != self.ref:
            return self._finish(None, None, f"waiting: this learner is for {_name(self.ref)}")
        attempt = (self._buffer.generation, config)
        if attempt == self._attempted:
            return Retrain(None, None, self.status)
        features, labels = self._buffer.labelled()
        needed = max(config.retrain_min_samples, 2)
        if len(features) < needed:
            return self._finish(None, None, f"waiting: {len(features)} of {needed} labelled rows")
        self._attempted = attempt
        if config.update_kind == "stats":
            return self._statistics(self._head, config, features, labels)
        try:
            return self._retrain(runtime, self._head, config, features, labels, now_ms)
        except EdgefleetError as e:  # TrainingError, NonFinite, ModelUnhealthy...
            logger.warning("retraining %s failed: %s", _name(self.ref), e)
            return self._finish(None, None, f"failed: {e}")

    def _retrain(
        self,
        runtime: R,
        head: Head,
        config: DeviceConfig,
        features: Floats,
        labels: np.ndarray,
        now_ms: int,
    ) -> Retrain[R]:
        s = self.settings
        base_w, base_b = self._base_params
        with self._lock:
            current_w, current_b = self._current
        result = train_head(
            head,
            current_w,
            current_b,
            features,
            labels,
            rng=self._rng,
            epochs=s.epochs,
            batch_size=s.batch_size,
            lr=s.lr,
            momentum=s.momentum,
            l2=s.l2,
            holdout_fraction=s.holdout_fraction,
            anchor=(base_w, base_b),
            max_distance=config.delta_clip_norm,
        )
        summary = _summary(result)
        better = improved(result, s.min_gain)
        useful = better or (config.round_id is not None and improved(result, 0.0))
        if not useful:
            return self._finish(None, None, f"unchanged: the current head is as good ({summary})")
        names = {head.weight: 0} | ({head.bias: 1} if head.bias is not None else {})
        trained = (result.weight, result.bias)
        raw = {name: trained[i] - self._base_params[i] for name, i in names.items()}
        delta = clip_l2(raw, config.delta_clip_norm)
        weight = base_w + delta[head.weight]
        bias = base_b + delta[head.bias] if head.bias is not None else base_b
        holdout = result.holdout
        before = evaluate(head, base_w, base_b, features[holdout], labels[holdout])
        size = sum(d.size for d in delta.values())
        max_abs = max(float(np.abs(d).max(initial=0.0)) for d in delta.values())
        encoding, fraction = delta_encoding(size, max_abs, s)
        sent = delta
        if encoding == "topk-f16":
            k = min(size, s.topk_max_kept)
            sent, residual = sparsify(
                delta, self._load_residual(), k, max_norm=config.delta_clip_norm, values="f16"
            )
            self._save_residual(residual)
            fraction = topk_fraction(k, size)
        upload = DeltaUpload(
            base=self.ref,
            num_samples=result.n_train,
            metric=result.metric,
            before=before,
            after=result.after,
            clip_norm=config.delta_clip_norm,
            tensors=encode_tensors(sent, encoding=encoding, topk_fraction=fraction),
            round_id=config.round_id,
        )
        if not better:
            logger.info("sent %s's unserved delta to its round: %s", _name(self.ref), summary)
            return self._finish(
                None, upload, f"sent unserved to the round: {summary}, delta in {encoding}"
            )
        served = runtime.with_head(weight, bias)
        self._save_head(weight, bias)
        with self._lock:
            self._current = (weight, bias)
        logger.info("retrained %s at %d: %s", _name(self.ref), now_ms, summary)
        return self._finish(served, upload, f"retrained: {summary}, delta in {encoding}")

    def _statistics(
        self, head: Head, config: DeviceConfig, features: Floats, labels: np.ndarray
    ) -> Retrain[R]:
        """Exact mode: the labelled rows' sufficient statistics for the round, nothing
        trained or served here (the hub solves for the whole fleet at once)."""
        if config.round_id is None:
            return self._finish(None, None, "waiting: exact mode sends to a round; none is open")
        with self._lock:
            current_w, current_b = self._current
        stats = local_stats(features, targets(head, labels))
        score = evaluate(head, current_w, current_b, features, labels)
        upload = DeltaUpload(
            base=self.ref,
            num_samples=stats.count,
            metric="mse" if head.task == "regression" else "accuracy",
            before=score,
            after=score,
            clip_norm=0.0,
            tensors=encode_tensors(to_tensors(stats)),
            round_id=config.round_id,
        )
        return self._finish(None, upload, f"sent: statistics of {stats.count} rows")

    def _finish(self, runtime: R | None, delta: DeltaUpload | None, status: str) -> Retrain[R]:
        with self._lock:
            self._status = status[:MAX_STATUS]
            return Retrain(runtime, delta, self._status)

    # ------------------------------------------------------------------ the saved head

    def _head_path(self) -> Path:
        assert self._dir is not None
        return self._dir / f"head-{self.ref.sha256}.eft"

    def _save_head(self, weight: Floats, bias: Floats) -> None:
        """Write the served head atomically (:func:`edgefleet.files.write_atomic`)."""
        if self._dir is None:
            return
        data = encode_tensors({"bias": bias, "weight": weight}, encoding="f32")
        write_atomic(self._head_path(), data)

    def _residual_path(self) -> Path:
        assert self._dir is not None
        return self._dir / f"residual-{self.ref.name}.eft"

    def _load_residual(self) -> dict[str, Floats] | None:
        """What earlier top-k deltas left unsent; None (zeros) without one, or when it no
        longer fits the head (a new layout starts afresh)."""
        if self._dir is None or not self._residual_path().exists():
            return self._residual
        assert self._head is not None
        path, shapes = self._residual_path(), self._shapes()
        try:
            size = sum(int(np.prod(shape)) for shape in shapes.values())
            tensors = decode_tensors(path.read_bytes(), max_elements=size + 64)
        except (EdgefleetError, OSError) as e:
            logger.warning("residual %s is unreadable, dropped: %s", path.name, e)
            return None
        if {k: v.shape for k, v in tensors.items()} != shapes:
            return None
        return dict(tensors)

    def _save_residual(self, residual: dict[str, Floats]) -> None:
        self._residual = residual
        if self._dir is not None:
            write_atomic(self._residual_path(), encode_tensors(residual, encoding="f32"))

    def _shapes(self) -> dict[str, tuple[int, ...]]:
        head = self._head
        assert head is not None
        shapes: dict[str, tuple[int, ...]] = {head.weight: (head.n_features, head.n_outputs)}
        return shapes | ({head.bias: (head.n_outputs,)} if head.bias is not None else {})

    def _load_head(self) -> tuple[Floats, Floats] | None:
        assert self._head is not None
        path = self._head_path()
        if not path.exists():
            return None
        head = self._head
        try:
            tensors = decode_tensors(
                path.read_bytes(), max_elements=head.n_outputs * (head.n_features + 1)
            )
            weight, bias = tensors["weight"], tensors["bias"]
        except (EdgefleetError, KeyError, OSError) as e:
            logger.warning("saved head %s is unreadable, dropped: %s", path.name, e)
            path.unlink(missing_ok=True)
            return None
        if weight.shape != self._base_params[0].shape or bias.shape != self._base_params[1].shape:
            path.unlink(missing_ok=True)
            return None
        return weight, bias


def _no_head_reason(runtime: HeadRuntime) -> str:
    try:
        reason = head_unsupported_reason(runtime.model_bytes, runtime.manifest.scores)
    except EdgefleetError as e:
        reason = str(e)
    return reason or "the manifest names no trainable head"


def _name(ref: ModelRef) -> str:
    return f"{ref.name} v{ref.version}"


def _summary(result: TrainResult) -> str:
    return (
        f"holdout {result.metric} {result.before:.4g} -> {result.after:.4g} "
        f"on {result.n_holdout} rows, {result.n_train} trained"
    )


__all__ = ["HeadRuntime", "Learner", "LearnerSettings", "Retrain", "delta_encoding"]
