"""The learning loop: a learner and a sketch window for whichever model the manager serves.

The model manager (agent/updater.py) decides *which* version serves; this module keeps
the per-version learning state in step with it. Whenever the active version changes (an
install, a rollback, a restart) it retires the old state, flushing its sketch window to
the hub, and builds a :class:`~agent.learner.Learner` and a
:class:`~agent.sketches.SketchWindow` for the new one; a head the learner saved before a
restart is served again at once. A model without a supported head still serves and
sketches; its learner says why retraining is off. So does one whose learning state
cannot be opened (a corrupt ``feedback.db``): it serves and sketches without learning,
its status ``off: <why>``, until the active version changes or the agent restarts.

Per request: :meth:`LearningLoop.predict` runs the manager's model, then the learner
remembers the head features under fresh prediction ids (returned to the caller, which
names them in :meth:`LearningLoop.feedback`) and the window folds in the inputs, scores
and latency. Jobs (daemon scheduler): ``learning`` follows the active model and reports a
changed retrain status, ``retrain`` runs :meth:`Learner.maybe_retrain` under the hub's
latest :class:`~protocol.messages.DeviceConfig` and sends the delta once the manager
serves the better head, exact mode's statistics at once as they change nothing served
(``/status`` then says where the delta stands: queued until the hub acknowledges it),
``sketch-window`` sends the window's
:class:`~protocol.messages.DataDelta` when it saw any inference. On stop (a daemon stop
hook, before the ``offline`` report) the window is closed early and sent the same way,
so what was observed since the last window is queued before the agent disconnects.

**What the hub receives is what the device serves.** :meth:`ModelManager.serve` refuses
a retrained head while a fresh install is being watched; the head and its delta are then
held and offered again on the next retrain run, and the delta is sent only once the head
serves (a later retrain supersedes both: every delta is against the base version). After
a self-rollback the manager may serve the old version's *retrained* runtime again; its
learner is rebuilt on that version's released head (kept for the version replaced last),
never on the retrained one, so later deltas stay relative to what the hub released.

**The hub's config** comes with every ``desired`` frame; agent/hub_config.py keeps it
(and the job intervals it set) across restarts, and this loop reschedules the jobs.

Threads: requests, the scheduler and the downlink worker meet here. Following the active
model is a reference comparison; rebuilding and serving take one lock (which never waits
on training), and callbacks the manager makes while holding its own lock
(:meth:`annotate`) take none, so the two locks cannot deadlock. A prediction whose
model changed during the call is served but not learned from (its ids are then unknown
to feedback): one reference check before and after, as the manager swaps runtimes.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from agent.errors import InferenceFailed, InvalidInput, NotReady, RetrainingOff
from agent.feedback import FeedbackReport, prediction_ids
from agent.http_api import Prediction
from agent.hub_config import HubConfig
from agent.learner import MAX_STATUS, Learner, LearnerSettings, Retrain
from agent.runtime import ModelRuntime, batch_rows
from agent.sketches import SketchWindow
from agent.updater import AgentPort, ModelManager
from edgefleet.clock import Clock
from protocol.errors import EdgefleetError
from protocol.frame import Envelope, Message
from protocol.headparams import read_head
from protocol.messages import DeltaUpload, DesiredState, DeviceConfig, ModelRef, StateReport

logger = logging.getLogger(__name__)

DELIVERY = {
    "queued": "queued: waiting for the hub's acknowledgement",
    "committed": "acknowledged by the hub",
    "dropped": "dropped: the outbox overflowed before the hub acknowledged it",
}
"""``/status`` words for a delta's :meth:`agent.daemon.Agent.fate` (refusals as they come)."""
HeadParams = tuple[np.ndarray, np.ndarray]
"""A head's weight and bias, in :mod:`protocol.headparams`' layout."""


class LearningPort(AgentPort, Protocol):
    """What the learning loop needs of :class:`agent.daemon.Agent`."""

    def fate(self, seq: int, kind: str) -> str: ...

    def reschedule(self, name: str, interval_s: float) -> None: ...

    def add_stop_hook(self, name: str, hook: Callable[[int], None]) -> None: ...


class _NoLearning:
    """Stands in for a :class:`Learner` that could not be built: learns nothing, says why."""

    def __init__(self, status: str) -> None:
        self.status = status[:MAX_STATUS]

    def observe(self, ids: list[str], features: np.ndarray | None, now_ms: int) -> None:
        return None

    def feedback(self, labels: Mapping[str, object], now_ms: int) -> FeedbackReport:
        raise RetrainingOff(self.status)

    def info(self) -> dict[str, object]:
        return {"retrain": self.status}

    def maybe_retrain(
        self, runtime: ModelRuntime, config: DeviceConfig, now_ms: int
    ) -> Retrain[ModelRuntime]:
        return Retrain(None, None, self.status)

    def close(self) -> None:
        return None


@dataclass
class _Model:
    """The learning state of one active version.

    ``unserved``: a retrained runtime the manager refused to serve yet, with its delta.
    ``retrained``: the manager serves a head other than the released one.
    """

    base: ModelRuntime
    learner: Learner[ModelRuntime] | _NoLearning
    window: SketchWindow
    unserved: tuple[ModelRuntime, DeltaUpload | None] | None = None
    retrained: bool = False

    @property
    def ref(self) -> ModelRef:
        return self.base.ref


class LearningLoop:
    """Learner and sketch window for the active model; see the module docstring.

    Args:
        manager: the model manager whose active runtime is followed and served through.
        state_dir: the learner's files (feedback, saved heads) and the hub's config.
        clock: "now" for feedback, windows and retrain runs.
        send: the daemon's :meth:`~agent.daemon.Agent.send`.
    """

    def __init__(
        self,
        manager: ModelManager,
        state_dir: Path,
        *,
        clock: Clock,
        send: Callable[[Message], int],
        settings: LearnerSettings | None = None,
    ) -> None:
        self._manager = manager
        self._dir = state_dir
        self._clock = clock
        self._send = send
        self._settings = settings
        self._lock = threading.Lock()
        self._model: _Model | None = None
        self._released_heads: dict[ModelRef, HeadParams] = {}
        self._reported: str | None = None
        self._agent: LearningPort | None = None
        self._delta: tuple[int, ModelRef] | None = None  # the last delta's seq, its base
        self._hub = HubConfig(state_dir)

    def attach(
        self, agent: LearningPort, *, follow_s: float, retrain_interval_s: float, window_s: float
    ) -> None:
        """Register the ``desired`` handler, the jobs and the stop hook with the daemon,
        apply the intervals the hub set before a restart; follow the model."""
        agent.register_downlink("desired", self.on_desired)
        agent.add_job("learning", self.tick, interval_s=follow_s)
        agent.add_job("retrain", self.retrain, interval_s=retrain_interval_s)
        agent.add_job("sketch-window", self.close_window, interval_s=window_s)
        agent.add_stop_hook("sketch-window", self.close_window)
        for name, seconds in self._hub.intervals.items():
            agent.reschedule(name, seconds)
        self._agent = agent
        self.follow()

    # ------------------------------------------------------------------ requests

    def predict(self, inputs: Any) -> Prediction:
        """Serve ``inputs`` (an array, nested lists, or a mapping by input name) and learn
        from it; the ids name each output row for :meth:`feedback`.

        Raises:
            NotReady, InvalidInput, InferenceFailed: see :meth:`ModelManager.predict`.
        """
        model = self.follow()
        started = time.perf_counter()
        try:
            output = self._manager.predict(inputs)
        except (InferenceFailed, InvalidInput) as e:
            if model is not None:
                latency = _since(started) if isinstance(e, InferenceFailed) else math.nan
                model.window.observe(None, None, latency, rows=batch_rows(inputs), error=True)
            raise
        latency = _since(started)
        scores = output.scores
        ids = prediction_ids(len(scores) if scores.ndim else 1)
        runtime = self._manager.runtime
        if model is not None and runtime is not None and runtime.ref == model.ref:
            model.learner.observe(ids, output.features, self._clock.now_ms())
            rows = None if isinstance(inputs, Mapping) else inputs
            model.window.observe(rows, scores, latency, rows=len(ids), ids=ids)
        return Prediction(ids, scores.tolist())

    def feedback(self, labels: Mapping[str, Any]) -> dict[str, list[str]]:
        """Label earlier predictions by id: ``{"accepted": [...], "unknown": [...]}``.

        Raises:
            NotReady: no model is active.
            RetrainingOff: the model has no trainable head.
            InvalidLabel: a label the model cannot take; nothing is stored.
        """
        model = self.follow()
        if model is None:
            raise NotReady("no model is active yet")
        report = model.learner.feedback(labels, self._clock.now_ms())
        model.window.label({i: labels[i] for i in report.accepted})
        return {"accepted": list(report.accepted), "unknown": list(report.unknown)}

    def info(self) -> dict[str, object]:
        """For the local ``/status``: the retrain status, the feedback counts, and where the
        last delta stands (``queued`` until the hub acknowledges it, never "sent")."""
        model = self.follow()
        out: dict[str, object] = {"retrain": self.retrain_status(None)}
        if model is not None:
            out = {**model.learner.info(), "retrain": self.retrain_status(model.ref)}
        delta, agent = self._delta, self._agent
        if delta is not None and agent is not None:
            seq, base = delta
            fate = agent.fate(seq, "delta")
            out["delta"] = {"seq": seq, "base": base.version, "delivery": DELIVERY.get(fate, fate)}
        return out

    # ------------------------------------------------------------------ state reports

    def retrain_status(self, active: ModelRef | None) -> str:
        """``StateReport.retrain`` for a report naming ``active``. Lock-free."""
        model = self._model
        if active is None:
            return "off: no model is active"
        if model is None or model.ref != active:
            return f"waiting: learning starts for {active.name} v{active.version}"
        if model.unserved is not None:
            held = "waiting: the retrained head serves once the install's watch ends"
            return f"{held} ({model.learner.status})"[:MAX_STATUS]
        return model.learner.status

    def state_report(self) -> StateReport:
        """The manager's report with the retrain status (the daemon's state source)."""
        report = self._manager.state_report()
        return dataclasses.replace(report, retrain=self.retrain_status(report.active))

    def annotate(self, message: Message) -> Message:
        """``message`` about to be sent; a state report gets the retrain status. Lock-free:
        the manager calls it holding its own lock."""
        if not isinstance(message, StateReport):
            return message
        self._reported = self.retrain_status(message.active)
        return dataclasses.replace(message, retrain=self._reported)

    # ------------------------------------------------------------------ jobs

    def tick(self, now_ms: int) -> None:
        """The ``learning`` job: follow the active model; report a changed retrain status."""
        self.follow()
        self._report_status()

    def retrain(self, now_ms: int) -> None:
        """The ``retrain`` job: retrain on new feedback, serve the better head, send its delta."""
        model = self.follow()
        runtime = self._manager.runtime
        if model is None or runtime is None or runtime.ref != model.ref:
            return
        outcome = model.learner.maybe_retrain(runtime, self._hub.config, now_ms)
        delta: DeltaUpload | None
        with self._lock:
            if outcome.runtime is not None:
                model.unserved = (outcome.runtime, outcome.delta)
            if outcome.runtime is None and outcome.delta is not None:
                delta = outcome.delta  # exact mode's statistics: nothing new to serve first
            else:
                delta = self._serve_unserved(model) if self._model is model else None
        if delta is not None:
            self._delta = (self._send(delta), delta.base)
        self._report_status()

    def close_window(self, now_ms: int) -> None:
        """The ``sketch-window`` job and stop hook: send the window closing now, if it saw
        any inference."""
        model = self.follow()
        if model is not None:
            self._send_window(model, now_ms)

    def on_desired(self, envelope: Envelope) -> None:
        """Downlink handler for ``desired``: keep the hub's config (persisted when changed)
        and apply the job intervals it changed."""
        if not isinstance(envelope.message, DesiredState):
            return
        config = envelope.message.config
        if config == self._hub.config:
            return
        changed = self._hub.changed_intervals(config)
        if self._agent is not None:  # rescheduled, then persisted (agent/hub_config.py)
            for name, seconds in changed.items():
                self._agent.reschedule(name, seconds)
        self._hub.keep(config, changed)

    @property
    def hub_config(self) -> DeviceConfig:
        """The hub's config, as last received (persisted)."""
        return self._hub.config

    @property
    def intervals(self) -> dict[str, float]:
        """The job intervals the hub set (job name -> seconds)."""
        return self._hub.intervals

    # ------------------------------------------------------------------ following the model

    def follow(self) -> _Model | None:
        """The learning state of the version serving now, rebuilt when it changed."""
        model, runtime = self._model, self._manager.runtime
        if _ref(runtime) == (model.ref if model is not None else None):
            return model
        with self._lock:
            old, runtime = self._model, self._manager.runtime
            if _ref(runtime) == (old.ref if old is not None else None):
                return old
            kept, self._model = self._released_heads, None
            self._released_heads = self._released_head_of(old) if old is not None else {}
            if old is not None:
                old.learner.close()
            self._model = None if runtime is None else self._build(runtime, kept.get(runtime.ref))
            new = self._model
        if old is not None:
            self._send_window(old, self._clock.now_ms())
        return new

    def close(self) -> None:
        """Close the learner's files (after the daemon stopped)."""
        with self._lock:
            if self._model is not None:
                self._model.learner.close()
            self._model = None

    def _build(self, runtime: ModelRuntime, released: HeadParams | None) -> _Model:
        base = runtime if released is None else _with_head(runtime, released)
        learner, restored = self._learner(base)
        window = SketchWindow(base.manifest, self._clock.now_ms(), model=base.ref)
        model = _Model(base, learner, window)
        if restored is not runtime:  # a head saved before a restart, or the released head
            model.unserved = (restored, None)
            self._serve_unserved(model)
        ref = base.ref
        logger.info("learning for %s v%d: %s", ref.name, ref.version, learner.status)
        return model

    def _learner(
        self, base: ModelRuntime
    ) -> tuple[Learner[ModelRuntime] | _NoLearning, ModelRuntime]:
        """The learner for ``base`` and the runtime it says to serve; without learning when
        its state cannot be opened (predictions must not depend on it)."""
        learner: Learner[ModelRuntime] | None = None
        try:
            learner = Learner(base, state_dir=self._dir, settings=self._settings)
            return learner, learner.serving()
        except Exception as e:
            if learner is not None:
                learner.close()
            ref = base.ref
            logger.exception(
                "learning for %s v%d is off: its state cannot be opened", ref.name, ref.version
            )
            return _NoLearning(f"off: the learning state cannot be opened: {e}"), base

    @staticmethod
    def _released_head_of(model: _Model) -> dict[ModelRef, HeadParams]:
        """The released head of a version whose retrained head serves, for a self-rollback
        to bring back (the manager restores the runtime it replaced, head and all)."""
        head = model.base.manifest.head
        if not model.retrained or head is None:
            return {}
        return {model.ref: read_head(model.base.model_bytes, head)}

    def _serve_unserved(self, model: _Model) -> DeltaUpload | None:
        """Offer the held runtime to the manager; its delta when it now serves (lock held)."""
        if model.unserved is None:
            return None
        runtime, delta = model.unserved
        if not self._manager.serve(runtime):
            logger.info("%s: retrained head held until the manager can serve it", model.ref.name)
            return None
        model.unserved = None
        model.retrained = runtime is not model.base
        return delta

    def _send_window(self, model: _Model, now_ms: int) -> None:
        data = model.window.flush(now_ms)
        if data.inference_count:
            self._send(data)

    def _report_status(self) -> None:
        report = self.state_report()
        if report.retrain != self._reported:
            self._send(self.annotate(report))


def _with_head(runtime: ModelRuntime, head: HeadParams) -> ModelRuntime:
    try:
        return runtime.with_head(*head)
    except EdgefleetError as e:
        logger.warning("cannot restore the released head of %s: %s", runtime.ref.name, e)
        return runtime


def _ref(runtime: ModelRuntime | None) -> ModelRef | None:
    return runtime.ref if runtime is not None else None


def _since(started: float) -> float:
    return (time.perf_counter() - started) * 1000


__all__ = ["DELIVERY", "LearningLoop", "LearningPort"]
