"""The shadow run: a version the hub wants tried beside the served one, never served.

The model manager (agent/updater.py) verifies ``DesiredState.shadow`` (an assignment,
checked against its own high-water mark) and hands the entry here; this module fetches
the package (the same chunked download and the same package checks as an install,
including the served model's inputs), health-checks it and keeps a runtime for it, all
under ``<state_dir>/models/shadow/``, so the slots, and with them the previous version a
rollback needs, are never touched: **nothing here changes what is served**.

Per request, :meth:`ShadowRunner.offer` draws whether this request is in the sampled
share (``DeviceConfig.shadow_sample``) and, if so, queues the inputs with the served
model's classes: a deque append, so the served predict never waits for the shadow and
never fails because of it (a full queue drops the oldest request, counted). The
``shadow`` job (:meth:`ShadowRunner.tick`) runs the queued requests through the shadow
runtime and counts them (agent/shadow_tally.py); an error of the shadow is counted as
an error and a disagreement, never raised. :meth:`ShadowRunner.report` hands the counts
to the next data window (``DataDelta.shadow``).

The shadow is stopped, and its files deleted, when a desired state carries no shadow
(or one that does not verify), and replaced when it names another version. It survives
a restart: ``shadow.json`` names the entry, and the package (or the partial download)
is picked up again. A package the model manager is then asked to *install* is handed to
the slots instead of being fetched again (:meth:`ShadowRunner.hand_over`).

Threads: the downlink worker (start, stop, chunks), the scheduler (tick) and request
threads (offer) meet here; one lock guards the state, the shadow's inference runs
outside it on the runtime reference it read.
"""

from __future__ import annotations

import logging
import random
import shutil
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from agent.download import Download, check_package, check_release
from agent.errors import AgentError
from agent.install import UpdaterConfig
from agent.metrics import Family
from agent.runtime import ModelRuntime
from agent.shadow_tally import ShadowTally, classes
from agent.slot_table import ref_of
from agent.slots import Slots
from edgefleet.files import write_atomic
from protocol import canonical, schema
from protocol.errors import ProtocolError
from protocol.frame import Message
from protocol.manifest import ModelManifest, TensorSpec
from protocol.messages import MAX_REASON, Chunk, InstallOutcome, InstallStatus, ShadowReport
from protocol.metadata import ReleaseEntry

logger = logging.getLogger(__name__)

SHADOW_DIR = "shadow"
STATE_FILE = "shadow.json"
QUEUE = 64
"""Sampled requests waiting for the shadow job; beyond it the oldest is dropped."""
RETRY_MS = 30_000
"""How long after a failed download the shadow's download starts again."""


@dataclass(frozen=True)
class _Saved:
    """``shadow.json``: what runs as the shadow, on which share of the requests."""

    entry: ReleaseEntry
    share: float


def classifies(manifest: ModelManifest) -> bool:
    """Whether a model's scores are class scores (shadow runs compare classes): as its
    drift profile or its head says, else a float scores output of two or more columns."""
    profile = manifest.profile
    if profile is not None and profile.predictions is not None:
        return profile.predictions.kind == "classes"
    if manifest.head is not None:
        return manifest.head.task == "classification"
    scores = next((o for o in manifest.outputs if o.name == manifest.scores), None)
    if scores is None or not scores.dtype.startswith("float") or len(scores.shape) != 2:
        return False
    columns = scores.shape[1]
    return columns is not None and columns >= 2


class ShadowRunner:
    """The shadow model's files, download, runtime and counts; see the module docstring.

    Args:
        root: ``<state_dir>/models/shadow``.
        send: where fetch requests go (the daemon's transient send).
        config: the install policy (download, package checks, health check).
        rng: draws the sampled share (a seeded one in tests).
    """

    def __init__(
        self,
        root: Path,
        *,
        send: Callable[[Message], None],
        config: UpdaterConfig,
        rng: random.Random | None = None,
    ) -> None:
        self.root = root
        self._send = send
        self._config = config
        self._rng = rng or random.Random()
        self._lock = threading.Lock()
        self.entry: ReleaseEntry | None = None
        self.share = 0.0
        self.status = "off"
        """For ``/status``: off, downloading, running, or why it stopped."""
        self.dropped = 0
        self._inputs: tuple[TensorSpec, ...] | None = None
        self._download: Download | None = None
        self._runtime: ModelRuntime | None = None
        self._tally: ShadowTally | None = None
        self._queue: deque[tuple[Any, np.ndarray]] = deque(maxlen=QUEUE)
        self._retry_at_ms: int | None = None
        self.rows: Counter[str] = Counter()
        """Shadow rows since start, by outcome: agreed, disagreed, failed (``/metrics``)."""
        self.outcome: InstallOutcome | None = None
        """Why the shadow does not run, for the state report (None: it runs, downloads,
        or none is asked for)."""
        self._assignment_version = 0

    # ------------------------------------------------------------------ decisions

    def start(
        self,
        entry: ReleaseEntry,
        *,
        share: float,
        inputs: tuple[TensorSpec, ...] | None,
        now_ms: int,
        assignment_version: int = 0,
    ) -> None:
        """Run ``entry`` (of the shadow assignment ``assignment_version``) as the shadow
        on ``share`` of the requests (a no-op but for the share when it runs already).
        ``inputs``: the served model's, which the shadow must take as they are."""
        with self._lock:
            if entry == self.entry:
                if share != self.share:
                    self.share = share
                    self._save()
                return
            if self.entry is not None:
                self._clear()
            self.entry, self._inputs, self.share = entry, inputs, share
            self._assignment_version = assignment_version
            self.root.mkdir(parents=True, exist_ok=True)
            for stray in self.root.glob("*.pkg"):  # of a shadow stopped by a crash
                if stray.stem != entry.sha256:
                    stray.unlink()
            self._save()
            self._begin(now_ms)

    def stop(self, why: str) -> None:
        """Stop the shadow and delete its files (nothing happens when none runs)."""
        with self._lock:
            if self.entry is None:
                return
            logger.info("shadow %s v%d stopped: %s", self.entry.name, self.entry.version, why)
            self._clear()
            self.status = f"off: {why}"

    def resume(self, inputs: tuple[TensorSpec, ...] | None, now_ms: int) -> None:
        """After a restart: the shadow ``shadow.json`` names, if any, on its share."""
        try:
            saved = schema.from_json(_Saved, canonical.loads((self.root / STATE_FILE).read_bytes()))
        except FileNotFoundError:
            return
        except ProtocolError as e:
            logger.warning("shadow state unreadable, dropped: %s", e)
            shutil.rmtree(self.root, ignore_errors=True)
            return
        self.start(saved.entry, share=saved.share, inputs=inputs, now_ms=now_ms)

    def hand_over(self, sha256: str, slots: Slots) -> None:
        """Give the slots the shadow's verified package when ``sha256`` is to be installed,
        so the install does not fetch it again."""
        with self._lock:
            path = self.root / f"{sha256}.pkg"
            if not path.exists() or slots.package_path(sha256).exists():
                return
            slots.store(sha256, path)

    # ------------------------------------------------------------------ serving

    def offer(self, inputs: Any, served_scores: np.ndarray) -> None:
        """A served request: queue it for the shadow if it falls in the sampled share."""
        if self._runtime is None or self._rng.random() >= self.share:
            return
        if isinstance(inputs, Mapping):
            inputs = {k: np.array(v) for k, v in inputs.items()}
        else:
            inputs = np.array(inputs)
        if len(self._queue) == QUEUE:
            self.dropped += 1
        self._queue.append((inputs, classes(served_scores)))

    def tick(self, now_ms: int) -> None:
        """The ``shadow`` job: the download's pace (a download that failed starts again
        after :data:`RETRY_MS`: no hub decision retries a shadow), then the queued requests."""
        with self._lock:
            download = self._download
            if download is not None:
                try:
                    download.check_speed(now_ms)
                except AgentError as e:
                    download.discard()  # its deadline runs across resumes: start afresh
                    self._fail(f"{getattr(e, 'reason', 'error')}: {e}", "failed")
                    self._retry_at_ms = now_ms + RETRY_MS
                else:
                    self._pump(now_ms)
            elif self._retry_at_ms is not None and now_ms >= self._retry_at_ms:
                self._retry_at_ms = None
                self._begin(now_ms)
        self._drain()

    def take_chunk(self, chunk: Chunk, now_ms: int) -> str:
        """A chunk of the shadow's download; ``unexpected`` for any other."""
        with self._lock:
            download = self._download
            if download is None or chunk.sha256 != download.entry.sha256:
                return "unexpected"
            verdict = download.receive(chunk, now_ms)
            self._pump(now_ms)
            return verdict

    def report(self) -> ShadowReport | None:
        """What the shadow did since the last report (None: nothing); counting restarts."""
        self._drain()
        with self._lock:
            return self._tally.take() if self._tally is not None else None

    # ------------------------------------------------------------------ internals

    def _begin(self, now_ms: int) -> None:
        entry = self.entry
        assert entry is not None
        try:
            check_release(
                entry, opset_range=self._config.opsets(), max_bytes=self._config.max_package_bytes
            )
        except ProtocolError as e:
            self._fail(f"{e.reason}: {e}")
            return
        package = self.root / f"{entry.sha256}.pkg"
        if package.exists():
            self._load(package.read_bytes(), None)
            return
        downloads = self.root / "download"
        downloads.mkdir(exist_ok=True)
        self._download = Download(downloads, entry, now_ms, self._config.download)
        self.status = "downloading"
        self._pump(now_ms)

    def _pump(self, now_ms: int) -> None:
        download = self._download
        data = download.pump(now_ms, self._send) if download is not None else None
        if download is None or data is None:
            return
        self._download = None
        self._load(data, download)

    def _load(self, data: bytes, download: Download | None) -> None:
        entry = self.entry
        assert entry is not None
        try:
            package = check_package(
                entry,
                data,
                allowed_domains=self._config.allowed_domains,
                opset_range=self._config.opsets(),
                inputs=self._inputs,
            )
            runtime = ModelRuntime.from_package(
                package, ref_of(entry), threads=self._config.threads
            )
            runtime.health_check(runs=self._config.health_runs)
            if not classifies(package.manifest):
                raise AgentError("shadow runs compare classes; this model does not classify")
        except (ProtocolError, AgentError) as e:
            if download is not None:
                download.discard()
            self._fail(f"{getattr(e, 'reason', 'error')}: {e}")
            return
        if download is not None:
            download.part.replace(self.root / f"{entry.sha256}.pkg")
            download.discard()
        self._runtime, self._tally = runtime, ShadowTally(runtime.ref)
        self.status = "running"
        self.outcome = None
        logger.info("shadow %s v%d runs beside the served model", entry.name, entry.version)

    def _drain(self) -> None:
        runtime, tally = self._runtime, self._tally
        while runtime is not None and tally is not None:
            try:
                inputs, served = self._queue.popleft()
            except IndexError:  # empty (the window's report may drain it at the same time)
                return
            started = time.perf_counter()
            try:
                shadow = classes(runtime.predict(inputs).scores)
            except AgentError:  # InferenceFailed, InvalidInput: the shadow's, never served
                shadow = None
            latency_ms = (time.perf_counter() - started) * 1000
            if shadow is not None and len(shadow) != len(served):
                shadow = None
            with self._lock:
                if self._tally is tally:
                    tally.add(served, shadow, latency_ms)
                    self._count_rows(served, shadow)

    def metrics(self) -> list[Family]:
        """For ``/metrics``: shadow rows by outcome, dropped requests, whether one runs."""
        rows = Family("shadow_rows", "Rows the shadow model ran on, by outcome.")
        for outcome in ("agreed", "disagreed", "failed"):
            rows.add(self.rows[outcome], outcome=outcome)
        dropped = Family("shadow_dropped", "Sampled requests dropped by the shadow's full queue.")
        running = Family("shadow_running", "1 while a shadow model runs.", kind="gauge")
        return [rows, dropped.add(self.dropped), running.add(self._runtime is not None)]

    def _count_rows(self, served: np.ndarray, shadow: np.ndarray | None) -> None:
        failed = len(served) if shadow is None else int((shadow < 0).sum())
        agreed = 0 if shadow is None else int((shadow == served).sum())
        self.rows["agreed"] += agreed
        self.rows["failed"] += failed
        self.rows["disagreed"] += len(served) - agreed - failed

    def _save(self) -> None:
        assert self.entry is not None
        saved = _Saved(self.entry, self.share)
        write_atomic(self.root / STATE_FILE, canonical.dumps(schema.to_json(saved)))

    def _fail(self, why: str, status: InstallStatus = "refused") -> None:
        """The shadow cannot run: ``refused`` (its package will never do), or ``failed``
        (its download; :meth:`tick` starts it again)."""
        entry = self.entry
        assert entry is not None
        logger.warning("shadow %s v%d cannot run: %s", entry.name, entry.version, why)
        self._download = None
        self.status = f"failed: {why}"
        self.outcome = InstallOutcome(
            self._assignment_version, ref_of(entry), status, why[:MAX_REASON]
        )

    def _clear(self) -> None:
        if self._download is not None:
            self._download.discard()
        self.entry = self._inputs = self._download = self._runtime = self._tally = None
        self.share = 0.0
        self._retry_at_ms = None
        self.outcome = None
        self._assignment_version = 0
        self._queue.clear()
        shutil.rmtree(self.root, ignore_errors=True)
        self.status = "off"


__all__ = ["QUEUE", "RETRY_MS", "SHADOW_DIR", "ShadowRunner", "classifies"]
