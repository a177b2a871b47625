"""The model manager: a desired state in, a trusted decision out, handed to the installer.

One update **cycle** per ``desired`` frame, at one ``now_ms`` (the system clock lifted to
the trusted time floor, threat-model T3c, T15):

1. the release list the desired state carries updates the trusted one (older or equal
   ones are normal: an assignment may rest on an older list, docs/decisions.md);
2. no fresh heartbeat: refused as ``freeze_suspected``; nothing installs, the active
   model keeps serving, and the desired state waits for the next trusted document;
3. :func:`protocol.trust.verify_assignment` (signature, device binding, high-water mark,
   expiry, release list, rollback floor); the new high-water mark is persisted;
4. the model already active: ``unchanged``, nothing downloaded; the same assignment seen
   again: ``duplicate`` (a ``failed`` one is retried);
5. otherwise the install (agent/install.py: download, package checks, standby slot,
   health check, swap, the watch window that commits or rolls back by itself);
6. the shadow: ``desired.shadow`` verified against its own high-water mark
   (:func:`protocol.trust.verify_shadow`) starts or keeps the shadow run
   (agent/shadow.py) on ``config.shadow_sample`` of the requests; none, or one that does
   not verify, stops it. The shadow never changes what is served.

Every frame gets a :class:`~protocol.messages.DeviceAck` (accepted, refused or duplicate,
with the reason), and every outcome a :class:`~protocol.messages.StateReport` (active and
previous models, the install outcome with its reason in ``install.reason``, trust
versions, the flags ``freeze_suspected`` and ``clock_suspect``). A refusal is a value,
never a crash: the active model keeps serving and, for a refused document, neither the
trusted state nor the slots change. Reasons start with the error's code
(``hash_mismatch: ...``) and are logged at WARNING.

**Crashes** (kill -9 anywhere): the slots recover as agent/slot_table.py describes, and a
desired state that was waiting for trust (a freeze, a newer release list) is kept in
``models/pending.json`` and retried, because the downlink guard will not hand the same
frame over twice.

**Stats.** :meth:`ModelManager.predict` records every request in the daemon's
:class:`~agent.stats.InferenceStats` by rows, invalid inputs as errors (agent/stats.py).

Threads: the downlink worker (frames, fleet documents), the scheduler (:meth:`tick`) and
request threads (:meth:`predict`) meet here; one lock serialises all but the inference
itself, which reads the active runtime once per call.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Literal, Protocol

import numpy.typing as npt

from agent.errors import InferenceFailed, InvalidInput, NotReady
from agent.install import Installer, UpdaterConfig
from agent.metrics import Family, MetricSource
from agent.runtime import ModelOutput, ModelRuntime, batch_rows
from agent.shadow import SHADOW_DIR, ShadowRunner
from agent.slot_table import ref_of
from agent.stats import InferenceStats, Outcome
from agent.trust_store import TrustStore
from edgefleet.clock import Clock
from edgefleet.files import write_atomic
from protocol import canonical, metadata, schema
from protocol.documents import SignedDocument
from protocol.errors import EdgefleetError, MixAndMatch, ProtocolError
from protocol.errors import Rollback as RollbackError
from protocol.frame import Envelope, Message
from protocol.messages import (
    MAX_REASON,
    Chunk,
    DesiredState,
    DeviceAck,
    InstallOutcome,
    ShadowReport,
    StateReport,
)
from protocol.metadata import Assignment
from protocol.trust import AssignmentVerdict

logger = logging.getLogger(__name__)

MODELS_DIR = "models"
PENDING_FILE = "pending.json"
RETRYABLE = frozenset({"freeze_suspected", "mix_and_match"})
"""Refusals a newer heartbeat or release list cures: the desired state waits for them."""


class AgentPort(Protocol):
    """What the manager needs of :class:`agent.daemon.Agent`."""

    def send(self, message: Message) -> int: ...

    def register_downlink(self, kind: str, handler: Callable[[Envelope], None]) -> None: ...

    def register_fleet(self, kind: str, handler: Callable[[bytes], None]) -> None: ...

    def add_job(self, name: str, job: Callable[[int], None], *, interval_s: float) -> None: ...

    def set_state_source(self, source: Callable[[], StateReport]) -> None: ...

    def add_metrics(self, source: MetricSource) -> None: ...

    @property
    def stats(self) -> InferenceStats: ...


class ModelManager:
    """The device's model lifecycle; see the module docstring.

    Raises (constructor):
        StateCorrupt: ``models/slots.json`` cannot be read.
    """

    def __init__(
        self,
        state_dir: Path,
        trust_store: TrustStore,
        *,
        device_id: str,
        clock: Clock,
        send: Callable[[Message], int],
        config: UpdaterConfig | None = None,
    ) -> None:
        self._trust = trust_store
        self._device_id = device_id
        self._clock = clock
        self._send_message = send
        self._lock = threading.RLock()
        self._reported: StateReport | None = None
        self._config = config or UpdaterConfig()
        self._installer = Installer(
            state_dir / MODELS_DIR,
            clock=clock,
            send=self._send,
            changed=self._report,
            config=self._config,
            starved_by=trust_store.downlink_problem,
        )
        self.shadow = ShadowRunner(
            state_dir / MODELS_DIR / SHADOW_DIR, send=self._send, config=self._config
        )
        self._pending_path = state_dir / MODELS_DIR / PENDING_FILE
        self._pending = self._load_pending()
        self._stats: InferenceStats | None = None
        self.counters: Counter[str] = Counter()
        self._shadow_refused: InstallOutcome | None = None
        """The last shadow assignment refused by the trust rules, for the state report."""

    # ------------------------------------------------------------------ wiring

    def attach(self, agent: AgentPort) -> None:
        """Register the handlers, the tick job, the state source and the install metrics
        with the daemon; resume."""
        agent.register_downlink("desired", self.on_desired)
        agent.register_downlink("chunk", self.on_chunk)
        agent.register_fleet("root", self.on_root)
        agent.register_fleet("release", self.on_release)
        agent.register_fleet("heartbeat", self.on_heartbeat)
        agent.add_job("models", self.tick, interval_s=self._config.tick_s)
        agent.add_job("shadow", self.shadow.tick, interval_s=self._config.tick_s)
        agent.set_state_source(self.state_report)
        agent.add_metrics(self.metrics)
        self._stats = agent.stats
        self.resume()

    def resume(self) -> None:
        """Carry on after a restart: the download, the staged check, the waiting desired state."""
        with self._lock:
            now_ms = self._clock.now_ms()
            self._installer.resume(now_ms)
            runtime = self._installer.runtime
            inputs = runtime.manifest.inputs if runtime is not None else None
            self.shadow.resume(inputs, now_ms)
            if self._pending is not None:
                self._cycle(self._pending, self._trust.now_ms(now_ms))
            self._report(force=True)

    # ------------------------------------------------------------------ serving

    @property
    def runtime(self) -> ModelRuntime | None:
        """The runtime serving now (``None``: no model yet)."""
        return self._installer.runtime

    def predict(self, inputs: npt.ArrayLike | Mapping[str, npt.ArrayLike]) -> ModelOutput:
        """Run the active model; record it in the daemon's stats (telemetry) once attached,
        and during a watch window count it toward the verdict.

        Raises:
            NotReady: no model is active.
            InvalidInput, InferenceFailed: see :meth:`ModelRuntime.predict`.
        """
        installer = self._installer
        runtime = installer.runtime
        if runtime is None:
            raise NotReady("no model is active yet")
        started = time.perf_counter()
        try:
            output = runtime.predict(inputs)
        except InvalidInput:
            self._record(started, batch_rows(inputs), "invalid")
            raise
        except InferenceFailed:
            self._record(started, batch_rows(inputs), "failed")
            raise
        finally:
            if installer.watching:
                with self._lock:
                    installer.watch(self._clock.now_ms())
        scores = output.scores
        self._record(started, len(scores) if scores.ndim else 1, "ok")
        self.shadow.offer(inputs, scores)
        return output

    def shadow_report(self) -> ShadowReport | None:
        """What the shadow did since the last data window (None: no shadow, or no input)."""
        return self.shadow.report()

    def serve(self, runtime: ModelRuntime) -> bool:
        """Serve ``runtime`` (a retrained head) if it is the active version and no watch runs."""
        with self._lock:
            return self._installer.serve(runtime)

    def state_report(self) -> StateReport:
        """The reported half of the device twin, as of now.

        Lock-free (reference reads only), so the daemon's last will and telemetry never
        wait for an install in progress.
        """
        installer = self._installer
        runtime = installer.runtime
        return StateReport(
            active=runtime.ref if runtime is not None else None,
            previous=installer.slots.state.previous,
            install=installer.outcome,
            trust=self._trust.versions(),
            flags=self._trust.flags(self._trust.now_ms(self._clock.now_ms())),
            shadow=self._shadow_refused or self.shadow.outcome,
        )

    def metrics(self) -> list[Family]:
        """For ``/metrics``: installs ended since start by outcome, chunks by verdict, the
        shadow run's rows by outcome."""
        installs = Family("installs", "Model installs ended since start, by outcome.")
        for outcome, count in sorted(self._installer.installs.items()):
            installs.add(count, outcome=outcome)
        chunks = Family("download_chunks", "Download chunks received, by verdict.")
        for key, count in sorted(self.counters.items()):
            if key.startswith("chunk."):
                chunks.add(count, verdict=key.removeprefix("chunk."))
        return [installs, chunks, *self.shadow.metrics()]

    # ------------------------------------------------------------------ downlink

    def on_desired(self, envelope: Envelope) -> None:
        """Downlink handler for ``desired``."""
        if isinstance(envelope.message, DesiredState):
            self.handle_desired(envelope.message, envelope.header.seq)

    def on_chunk(self, envelope: Envelope) -> None:
        """Downlink handler for ``chunk``."""
        if isinstance(envelope.message, Chunk):
            self.handle_chunk(envelope.message)

    def handle_desired(self, desired: DesiredState, seq: int) -> DeviceAck:
        """Run one update cycle for a desired state; acknowledge and report it."""
        with self._lock:
            status, reason = self._cycle(desired, self._trust.now_ms(self._clock.now_ms()))
            ack = DeviceAck(
                ref_seq=seq, ref_kind="desired", status=status, reason=reason[:MAX_REASON]
            )
            self._send(ack)
            self._report(force=True)
            return ack

    def handle_chunk(self, chunk: Chunk) -> None:
        """Take one chunk of the download in progress (others are ignored)."""
        with self._lock:
            now_ms = self._clock.now_ms()
            verdict = self._installer.take_chunk(chunk, now_ms)
            if verdict == "unexpected":
                verdict = self.shadow.take_chunk(chunk, now_ms)
            self.counters[f"chunk.{verdict}"] += 1

    # ------------------------------------------------------------------ fleet and time

    def on_root(self, payload: bytes) -> None:
        """Fleet handler for ``root`` (the root chain)."""
        with self._lock:
            self._fleet(self._trust.on_root(payload))

    def on_release(self, payload: bytes) -> None:
        """Fleet handler for ``release``."""
        with self._lock:
            self._fleet(self._trust.on_release(payload, self._clock.now_ms()))

    def on_heartbeat(self, payload: bytes) -> None:
        """Fleet handler for ``heartbeat``."""
        with self._lock:
            self._fleet(self._trust.on_heartbeat(payload, self._clock.now_ms()))

    def tick(self, now_ms: int) -> None:
        """The periodic job: download speed and stalls, the watch deadline, flag changes."""
        with self._lock:
            self._installer.tick(now_ms)
            self._report()

    # ------------------------------------------------------------------ the cycle

    def _cycle(
        self, desired: DesiredState, now_ms: int
    ) -> tuple[Literal["accepted", "refused", "duplicate"], str]:
        outcome = self._served(desired, now_ms)
        self._shadow_cycle(desired, now_ms)
        return outcome

    def _shadow_cycle(self, desired: DesiredState, now_ms: int) -> None:
        """Start, keep or stop the shadow run (module docstring, step 6)."""
        if desired.shadow is None:
            self.shadow.stop("the desired state names no shadow")
            self._shadow_refused = None
            return
        try:
            verdict = self._trust.verify_shadow(desired.shadow, now_ms, self._device_id)
        except ProtocolError as e:
            self.counters[f"refused.shadow.{e.reason}"] += 1
            logger.warning("shadow assignment refused: %s: %s", e.reason, e)
            self.shadow.stop(f"refused: {e.reason}")
            self._shadow_refused = _claimed(desired.shadow, f"{e.reason}: {e}")
            return
        self._shadow_refused = None
        if verdict.status == "new":
            self._trust.accept_shadow(verdict)
        runtime = self._installer.runtime
        self.shadow.start(
            verdict.assignment.entry,
            share=desired.config.shadow_sample,
            inputs=runtime.manifest.inputs if runtime is not None else None,
            now_ms=self._clock.now_ms(),
            assignment_version=verdict.assignment.version,
        )

    def _served(
        self, desired: DesiredState, now_ms: int
    ) -> tuple[Literal["accepted", "refused", "duplicate"], str]:
        if desired.assignment is None:  # the hub wants no particular model: keep this one
            self._set_pending(None)
            self._installer.withdraw()
            return "accepted", "no assignment"
        release_error = None
        if desired.release_list is not None:
            try:
                self._trust.update_release_list(desired.release_list, now_ms)
            except ProtocolError as e:  # an older list is normal: assignments may rest on one
                release_error = None if isinstance(e, RollbackError) else e
        if self._trust.freeze_suspected(now_ms):
            return self._refuse(desired, "freeze_suspected", "no unexpired heartbeat is trusted")
        try:
            verdict = self._trust.verify_assignment(desired.assignment, now_ms, self._device_id)
        except ProtocolError as e:
            error = release_error if isinstance(e, MixAndMatch) and release_error else e
            return self._refuse(desired, error.reason, str(error))
        self._set_pending(None)
        return self._act(verdict)

    def _refuse(
        self, desired: DesiredState, code: str, detail: str
    ) -> tuple[Literal["refused"], str]:
        """Refuse a desired state; it waits for newer trust documents when they may cure it."""
        reason = f"{code}: {detail}"[:MAX_REASON]
        self._set_pending(desired if code in RETRYABLE else None)
        self.counters[f"refused.{code}"] += 1
        logger.warning("assignment refused: %s", reason)
        assert desired.assignment is not None
        try:
            claimed = metadata.parse(Assignment, desired.assignment)
        except ProtocolError:
            return "refused", reason
        entry = claimed.entry
        self._installer.refused(InstallOutcome(claimed.version, ref_of(entry), "refused", reason))
        return "refused", reason

    def _act(self, verdict: AssignmentVerdict) -> tuple[Literal["accepted", "duplicate"], str]:
        entry, version = verdict.assignment.entry, verdict.assignment.version
        if verdict.status == "unchanged":
            seen = self._installer.duplicate(version)
            if seen is not None:
                return "duplicate", seen
        if verdict.status == "new":
            self._trust.accept(verdict)
        self.shadow.hand_over(entry.sha256, self._installer.slots)
        return "accepted", self._installer.install(entry, version, self._clock.now_ms())

    # ------------------------------------------------------------------ helpers

    def _record(self, started: float, rows: int, outcome: Outcome) -> None:
        if self._stats is not None:
            latency_ms = (time.perf_counter() - started) * 1000
            self._stats.record(latency_ms, rows=rows, outcome=outcome)

    def _fleet(self, changed: bool) -> None:
        if changed and self._pending is not None:
            self._cycle(self._pending, self._trust.now_ms(self._clock.now_ms()))
        self._report()

    def _report(self, *, force: bool = False) -> None:
        report = self.state_report()
        if force or report != self._reported:
            self._send(report)
            self._reported = report

    def _send(self, message: Message) -> None:
        try:
            self._send_message(message)
        except EdgefleetError as e:
            logger.warning("cannot send %s: %s", message.KIND, e)

    def _set_pending(self, desired: DesiredState | None) -> None:
        if desired == self._pending:
            return
        self._pending = desired
        if desired is None:
            self._pending_path.unlink(missing_ok=True)
        else:
            write_atomic(self._pending_path, canonical.dumps(schema.to_json(desired)))

    def _load_pending(self) -> DesiredState | None:
        try:
            return schema.from_json(DesiredState, canonical.loads(self._pending_path.read_bytes()))
        except FileNotFoundError:
            return None
        except ProtocolError as e:
            logger.warning("pending desired state unreadable, dropped: %s", e)
            return None


__all__ = ["MODELS_DIR", "PENDING_FILE", "AgentPort", "ModelManager", "UpdaterConfig"]


def _claimed(document: SignedDocument, reason: str) -> InstallOutcome | None:
    """A refused shadow assignment as an install outcome, naming what it claims to be
    (None when it does not even parse)."""
    try:
        claimed = metadata.parse(Assignment, document)
    except ProtocolError:
        return None
    return InstallOutcome(claimed.version, ref_of(claimed.entry), "refused", reason[:MAX_REASON])
