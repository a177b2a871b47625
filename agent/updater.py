"""The model manager: a desired state in, a verified model installed, swapped and watched.

One update **cycle** per ``desired`` frame, at one ``now`` (the system clock lifted to
the trusted time floor, THREATS T3c, T15):

1. the release list the desired state carries updates the trusted one (older or equal
   ones are normal: an assignment may rest on an older list, docs/decisions.md);
2. no fresh heartbeat: refused as ``freeze_suspected``; nothing installs, the active
   model keeps serving, and the desired state waits for the next trusted document;
3. :func:`protocol.trust.verify_assignment` (signature, device binding, high-water mark,
   expiry, release list, rollback floor); the new high-water mark is persisted;
4. the model already active: ``unchanged``, nothing downloaded; the same assignment seen
   again: ``duplicate`` (a ``failed`` one is retried);
5. otherwise the install (agent/slots.py states): download by chunks (agent/download.py;
   a package already stored, such as the previous version, is reused) ->
   :func:`~agent.download.check_package` (hash and length before any parse, hostile ONNX,
   compatibility, the active model's inputs) -> stored by hash in the standby slot ->
   a runtime and its health check -> atomic swap -> the **watch window**
   (:class:`~agent.runtime.WatchPolicy`): an error rate (exceptions, NaN/Inf scores)
   above the limit rolls back to the previous slot by itself; otherwise it commits.

Every frame gets a :class:`~protocol.messages.DeviceAck` (accepted, refused or duplicate,
with the reason), and every outcome a :class:`~protocol.messages.StateReport` (active and
previous models, the install outcome with its reason, trust versions, the flags
``freeze_suspected`` and ``clock_suspect``). A refusal is a value, never a crash: the
active model keeps serving and, for a refused document, neither the trusted state nor
the slots change. Reasons start with the error's code (``hash_mismatch: ...``).

**Crashes** (kill -9 anywhere): the slots recover as agent/slots.py describes (a
download resumes, a candidate caught mid-check or mid-watch is rolled back, the active
package is hashed and replaced by the previous one if damaged), and a desired state
that was waiting for trust (a freeze, a newer release list) is kept in
``models/pending.json`` and retried, because the downlink guard will not hand the same
frame over twice.

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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

import numpy.typing as npt

from agent import slots
from agent.download import Download, DownloadPolicy, check_package, check_release
from agent.errors import AgentError, InferenceFailed, ModelUnhealthy, NotReady, SlowRetrieval
from agent.runtime import ModelOutput, ModelRuntime, WatchPolicy
from agent.slots import Slots, ref_of
from agent.stats import InferenceStats
from agent.trust_store import TrustStore
from edgefleet.clock import Clock
from edgefleet.files import write_atomic
from protocol import canonical, metadata, schema
from protocol.errors import EdgefleetError, MixAndMatch, ProtocolError
from protocol.errors import Rollback as RollbackError
from protocol.frame import Envelope, Message
from protocol.messages import (
    MAX_REASON,
    Chunk,
    DesiredState,
    DeviceAck,
    InstallOutcome,
    ModelRef,
    StateReport,
)
from protocol.metadata import Assignment, ReleaseEntry
from protocol.package import ModelPackage, decode_package
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

    @property
    def stats(self) -> InferenceStats: ...


@dataclass(frozen=True)
class UpdaterConfig:
    """Install policy (units in the names). ``None``: protocol.modelcheck's defaults."""

    health_runs: int = 5  # timed runs of the smoke batch; their median meets the budget
    tick_s: float = 1.0  # the scheduler job: download timeouts, the watch deadline
    threads: int = 1  # onnxruntime intra-op threads
    max_package_bytes: int = 512 * 1024 * 1024  # larger releases are refused before download
    allowed_domains: frozenset[str] | None = None
    opset_range: tuple[int, int] | None = None
    download: DownloadPolicy = field(default_factory=DownloadPolicy)
    watch: WatchPolicy = field(default_factory=WatchPolicy)


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
        self._config = config or UpdaterConfig()
        self._lock = threading.RLock()
        self._slots = Slots(state_dir / MODELS_DIR)
        self._pending_path = state_dir / MODELS_DIR / PENDING_FILE
        active = self._slots.state.active
        self._runtime = self._load(active) if active is not None else None
        self._previous: ModelRuntime | None = None
        self._watching = False
        self._download: Download | None = None
        self._outcome = self._slots.state.outcome
        self._pending = self._load_pending()
        self._reported: StateReport | None = None
        self._stats: InferenceStats | None = None
        self.counters: Counter[str] = Counter()

    # ------------------------------------------------------------------ wiring

    def attach(self, agent: AgentPort) -> None:
        """Register the handlers, the tick job and the state source with the daemon; resume."""
        agent.register_downlink("desired", self.on_desired)
        agent.register_downlink("chunk", self.on_chunk)
        agent.register_fleet("root", self.on_root)
        agent.register_fleet("release", self.on_release)
        agent.register_fleet("heartbeat", self.on_heartbeat)
        agent.add_job("models", self.tick, interval_s=self._config.tick_s)
        agent.set_state_source(self.state_report)
        self._stats = agent.stats
        self.resume()

    def resume(self) -> None:
        """Carry on after a restart: the download, the staged check, the waiting desired state."""
        with self._lock:
            now = self._clock.now_ms()
            slot = self._slots.state
            if slot.state == "downloading" and slot.candidate is not None:
                self._download = Download(
                    self._slots.downloads, slot.candidate, now, self._config.download
                )
                self._pump(now)
            elif slot.state == "staged" and slot.candidate is not None:
                self._resume_staged(slot.candidate, now)
            if self._pending is not None:
                self._cycle(self._pending, self._trust.now(now))
            self._report(force=True)

    # ------------------------------------------------------------------ serving

    @property
    def runtime(self) -> ModelRuntime | None:
        """The runtime serving now (``None``: no model yet)."""
        return self._runtime

    def predict(self, inputs: npt.ArrayLike | Mapping[str, npt.ArrayLike]) -> ModelOutput:
        """Run the active model; record it in the daemon's stats (telemetry) once attached,
        and during a watch window count it toward the verdict.

        Raises:
            NotReady: no model is active.
            InvalidInput, InferenceFailed: see :meth:`ModelRuntime.predict`.
        """
        runtime = self._runtime
        if runtime is None:
            raise NotReady("no model is active yet")
        started = time.perf_counter()
        try:
            output = runtime.predict(inputs)
        except InferenceFailed:
            self._record(started, ok=False)
            raise
        finally:
            if self._watching:
                with self._lock:
                    self._watch(self._clock.now_ms())
        self._record(started, ok=True)
        return output

    def serve(self, runtime: ModelRuntime) -> bool:
        """Serve ``runtime`` (a retrained head) if it is the active version and no watch runs."""
        with self._lock:
            current = self._runtime
            if current is None or runtime.ref != current.ref or self._watching:
                return False
            self._runtime = runtime
            return True

    def state_report(self) -> StateReport:
        """The reported half of the device twin, as of now.

        Lock-free (reference reads only), so the daemon's last will and telemetry never
        wait for an install in progress.
        """
        runtime, slot = self._runtime, self._slots.state
        return StateReport(
            active=runtime.ref if runtime is not None else None,
            previous=slot.previous,
            install=self._outcome,
            trust=self._trust.versions(),
            flags=self._trust.flags(self._trust.now(self._clock.now_ms())),
        )

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
            status, reason = self._cycle(desired, self._trust.now(self._clock.now_ms()))
            ack = DeviceAck(
                ref_seq=seq, ref_kind="desired", status=status, reason=reason[:MAX_REASON]
            )
            self._send(ack)
            self._report(force=True)
            return ack

    def handle_chunk(self, chunk: Chunk) -> None:
        """Take one chunk of the download in progress (others are ignored)."""
        with self._lock:
            download = self._download
            if download is None or chunk.sha256 != download.entry.sha256:
                self.counters["chunk.unexpected"] += 1
                return
            now = self._clock.now_ms()
            self.counters[f"chunk.{download.receive(chunk, now)}"] += 1
            self._pump(now)

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
            download = self._download
            if download is not None:
                try:
                    download.check_speed(now_ms)
                except SlowRetrieval as e:
                    self._drop_download()
                    self._end(slots.Fail(_reason(e)))
                else:
                    self._pump(now_ms)
            self._watch(now_ms)
            self._report()

    # ------------------------------------------------------------------ the cycle

    def _cycle(
        self, desired: DesiredState, now: int
    ) -> tuple[Literal["accepted", "refused", "duplicate"], str]:
        if desired.assignment is None:  # the hub wants no particular model: keep this one
            self._set_pending(None)
            if self._slots.state.state == "downloading":
                self._drop_download()
                self._end(slots.Fail("withdrawn: the desired state names no model"))
            return "accepted", "no assignment"
        release_error = None
        if desired.release_list is not None:
            try:
                self._trust.update_release_list(desired.release_list, now)
            except ProtocolError as e:  # an older list is normal: assignments may rest on one
                release_error = None if isinstance(e, RollbackError) else e
        if self._trust.freeze_suspected(now):
            return self._refuse(desired, "freeze_suspected", "no unexpired heartbeat is trusted")
        try:
            verdict = self._trust.verify_assignment(desired.assignment, now, self._device_id)
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
        self._outcome = InstallOutcome(claimed.version, ref_of(claimed.entry), "refused", reason)
        return "refused", reason

    def _act(self, verdict: AssignmentVerdict) -> tuple[Literal["accepted", "duplicate"], str]:
        entry, version = verdict.assignment.entry, verdict.assignment.version
        slot = self._slots.state
        seen = verdict.status == "unchanged" and slot.assignment_version == version
        if seen and slot.state not in ("failed", "idle"):  # a failed install is retried
            return "duplicate", slot.outcome.status if slot.outcome else slot.state
        if verdict.status == "new":
            self._trust.accept(verdict)
        running = slot.active is not None and slot.active.sha256 == entry.sha256
        if slot.state == "watching" and not running:  # a newer decision ends the watch now
            self._watch(self._clock.now_ms(), final=True)
            slot = self._slots.state
            running = slot.active is not None and slot.active.sha256 == entry.sha256
        if running:
            if slot.state != "watching":
                self._drop_download()
                self._end(slots.Adopt(entry, version))
            return "accepted", "unchanged"
        self._begin(entry, version)
        return "accepted", ""

    def _begin(self, entry: ReleaseEntry, version: int) -> None:
        now = self._clock.now_ms()
        if self._download is not None and self._download.entry.sha256 != entry.sha256:
            self._drop_download()
        self._slots.apply(slots.Assign(entry, version))
        self._outcome = self._slots.state.outcome
        try:
            check_release(
                entry, opset_range=self._opset_range(), max_bytes=self._config.max_package_bytes
            )
        except ProtocolError as e:
            self._end(slots.Refuse(_reason(e)))
            return
        if self._slots.package_path(entry.sha256).exists():
            self._slots.apply(slots.Downloaded())
            self._verify(entry, self._slots.read(entry.sha256), None, now)
            return
        if self._download is None:
            self._download = Download(self._slots.downloads, entry, now, self._config.download)
        self._report()
        self._pump(now)

    def _pump(self, now: int) -> None:
        download = self._download
        if download is None:
            return
        if not download.complete:
            for request in download.requests(now):
                self._send(request)
            return
        self._download = None
        self._slots.apply(slots.Downloaded())
        self._verify(download.entry, download.data(), download, now)

    def _verify(
        self, entry: ReleaseEntry, data: bytes, download: Download | None, now: int
    ) -> None:
        try:
            package = check_package(
                entry,
                data,
                allowed_domains=self._config.allowed_domains,
                opset_range=self._opset_range(),
                inputs=self._runtime.manifest.inputs if self._runtime is not None else None,
            )
        except Exception as e:  # a parser fault must not wedge the slots: refuse, fail closed
            if download is not None:
                download.discard()
            if not isinstance(e, ProtocolError):
                logger.exception("package checks failed unexpectedly")
            self._end(
                slots.Refuse(_reason(e) if isinstance(e, ProtocolError) else f"unsafe_model: {e}")
            )
            return
        if download is not None:
            self._slots.store(entry.sha256, download.part)
            download.discard()
        self._slots.apply(slots.Verified())
        self._check_and_swap(entry, package, now)

    def _check_and_swap(self, entry: ReleaseEntry, package: ModelPackage, now: int) -> None:
        self._slots.apply(slots.Check())
        try:
            runtime = ModelRuntime.from_package(
                package, ref_of(entry), threads=self._config.threads
            )
            runtime.health_check(runs=self._config.health_runs)
        except ModelUnhealthy as e:
            self._end(slots.Unhealthy(_reason(e)))
            return
        self._slots.apply(slots.Swap(now))
        self._previous, self._runtime = self._runtime, runtime
        self._watching = True
        self._outcome = self._slots.state.outcome
        logger.info("now serving %s v%d (watching)", entry.name, entry.version)
        self._report()

    def _resume_staged(self, entry: ReleaseEntry, now: int) -> None:
        try:
            package = decode_package(self._slots.read(entry.sha256))
        except (OSError, ProtocolError) as e:
            self._slots.apply(slots.Check())
            self._end(slots.Unhealthy(f"model_unhealthy: the staged package is unreadable: {e}"))
            return
        self._check_and_swap(entry, package, now)

    def _watch(self, now: int, *, final: bool = False) -> None:
        slot, runtime = self._slots.state, self._runtime
        if slot.state != "watching" or runtime is None or slot.watch_started_ms is None:
            return
        predictions, errors = runtime.counters()
        elapsed = now - slot.watch_started_ms
        verdict = self._config.watch.verdict(predictions, errors, elapsed, final=final)
        if verdict is None:
            return
        self._watching = False
        if verdict == "commit":
            self._previous = None
            self._end(slots.Commit())
            return
        previous, self._previous = self._previous, None
        if previous is None and slot.previous is not None:
            previous = self._load(slot.previous)
        self._runtime = previous
        self._end(slots.Rollback(f"error_rate: {errors} of {predictions} inferences failed"))

    # ------------------------------------------------------------------ helpers

    def _end(self, event: slots.Event) -> None:
        self._slots.apply(event)
        self._slots.collect_garbage()
        self._outcome = self._slots.state.outcome
        self._report()

    def _record(self, started: float, *, ok: bool) -> None:
        if self._stats is not None:
            self._stats.record((time.perf_counter() - started) * 1000, ok=ok)

    def _drop_download(self) -> None:
        if self._download is not None:
            self._download.discard()
            self._download = None

    def _fleet(self, changed: bool) -> None:
        if changed and self._pending is not None:
            self._cycle(self._pending, self._trust.now(self._clock.now_ms()))
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

    def _load(self, ref: ModelRef) -> ModelRuntime | None:
        try:
            package = decode_package(self._slots.read(ref.sha256))
            return ModelRuntime.from_package(package, ref, threads=self._config.threads)
        except (OSError, ProtocolError, AgentError) as e:
            logger.error("cannot load %s v%d: %s", ref.name, ref.version, e)
            return None

    def _opset_range(self) -> tuple[int, int]:
        if self._config.opset_range is not None:
            return self._config.opset_range
        from protocol.modelcheck import OPSET_RANGE

        return OPSET_RANGE

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


def _reason(error: Exception) -> str:
    code = getattr(error, "reason", "error")
    return f"{code}: {error}"[:MAX_REASON]
