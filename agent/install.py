"""The install pipeline: an accepted release entry in, a watched and committed model out.

The model manager (agent/updater.py) decides *what* to install (the trust cycle); this
module installs it, one :mod:`agent.slot_table` step at a time, each persisted by
:class:`~agent.slots.Slots` before the next begins:

    download by chunks (agent/download.py; a package already stored, such as the previous
    version, is reused) -> :func:`~agent.download.check_package` (hash and length before
    any parse, hostile ONNX, compatibility, the active model's inputs) -> stored by hash
    in the standby slot -> a runtime and its health check -> atomic swap -> the **watch
    window** (:class:`~agent.runtime.WatchPolicy`, counted in predicted rows): an error
    rate above the limit rolls back to the previous slot by itself; otherwise it commits.

Every end of an install (committed, adopted unchanged, refused, failed, rolled back) is
logged with its reason (``install of iris v2 refused: incompatible: ...``), counted by
outcome (:attr:`Installer.installs`, the ``/metrics`` installs counter) and kept as the
outcome the next state report carries (``StateReport.install``): that is how a refusal
reason reaches the operator.

Not thread-safe: the model manager serialises every call with its lock; only
:attr:`Installer.runtime` is read without it (one reference read per inference).
"""

from __future__ import annotations

import logging
import shutil
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from agent import slot_table as table
from agent.download import Download, DownloadPolicy, check_package, check_release
from agent.errors import AgentError, ModelUnhealthy, SlowRetrieval
from agent.runtime import ModelRuntime, WatchPolicy
from agent.slot_table import ref_of
from agent.slots import Slots
from edgefleet.clock import Clock
from protocol.errors import ProtocolError
from protocol.frame import Message
from protocol.messages import MAX_REASON, Chunk, InstallOutcome, ModelRef
from protocol.metadata import ReleaseEntry
from protocol.package import ModelPackage, decode_package

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class UpdaterConfig:
    """Install policy (units in the names). ``None``: protocol.modelcheck's defaults."""

    health_runs: int = 5  # timed runs of the smoke batch; their median meets the budget
    tick_s: float = 1.0  # the scheduler job: download timeouts, the watch deadline
    threads: int = 1  # onnxruntime intra-op threads
    max_package_bytes: int = 512 * 1024 * 1024  # larger releases are refused before download
    min_free_bytes: int = 64 * 1024 * 1024  # disk the device keeps free beside a download
    allowed_domains: frozenset[str] | None = None
    opset_range: tuple[int, int] | None = None
    download: DownloadPolicy = field(default_factory=DownloadPolicy)
    watch: WatchPolicy = field(default_factory=WatchPolicy)

    def opsets(self) -> tuple[int, int]:
        """The opset range a package must stay within (modelcheck's default if unset)."""
        if self.opset_range is not None:
            return self.opset_range
        from protocol.modelcheck import OPSET_RANGE  # onnx: imported only to install

        return OPSET_RANGE


class Installer:
    """The slots, the download in progress and the serving runtimes; see the module docstring.

    Args:
        root: the slots directory (``<state_dir>/models``).
        clock: "now" for a swap's watch start and a newer decision's early watch end.
        send: where fetch requests go (the daemon's transient send).
        changed: called after every step that may change the state report.
        starved_by: why the hub's frames do not reach the device, if they do not (the
            downlink guard's problem); a download that starves then fails with that
            reason rather than ``slow_retrieval``.

    Raises (constructor):
        StateCorrupt: ``slots.json`` cannot be read.
    """

    def __init__(
        self,
        root: Path,
        *,
        clock: Clock,
        send: Callable[[Message], None],
        changed: Callable[[], None],
        config: UpdaterConfig,
        starved_by: Callable[[], str | None] = lambda: None,
    ) -> None:
        self.slots = Slots(root)
        self._clock = clock
        self._send = send
        self._changed = changed
        self._config = config
        self._starved_by = starved_by
        active = self.slots.state.active
        self.runtime: ModelRuntime | None = self._load(active) if active is not None else None
        """The runtime serving now (``None``: no model yet)."""
        self.outcome: InstallOutcome | None = self.slots.state.outcome
        """The last install's outcome, as the state report carries it."""
        self.watching = False
        self.installs: Counter[str] = Counter()
        """Installs ended since start, by outcome (``installed``, ``refused``...)."""
        self._previous: ModelRuntime | None = None
        self._download: Download | None = None

    # ------------------------------------------------------------------ decisions

    def resume(self, now_ms: int) -> None:
        """Carry on after a restart: the download in progress, or the staged health check."""
        slot = self.slots.state
        if slot.state == "downloading" and slot.candidate is not None:
            self._download = Download(
                self.slots.downloads, slot.candidate, now_ms, self._config.download
            )
            self.pump(now_ms)
        elif slot.state == "staged" and slot.candidate is not None:
            self._resume_staged(slot.candidate, now_ms)

    def duplicate(self, assignment_version: int) -> str | None:
        """The ack detail when this assignment was handled already, else ``None`` (a
        ``failed`` install is retried)."""
        slot = self.slots.state
        if slot.assignment_version != assignment_version or slot.state in ("failed", "idle"):
            return None
        return slot.outcome.status if slot.outcome else slot.state

    def install(self, entry: ReleaseEntry, assignment_version: int, now_ms: int) -> str:
        """Start installing ``entry`` (accepted by the trust cycle); ``"unchanged"`` when it
        is what runs already."""
        slot = self.slots.state
        running = slot.active is not None and slot.active.sha256 == entry.sha256
        if slot.state == "watching" and not running:  # a newer decision ends the watch now
            self.watch(now_ms, final=True)
            slot = self.slots.state
            running = slot.active is not None and slot.active.sha256 == entry.sha256
        if running:
            if slot.state != "watching":
                self._drop_download()
                self._end(table.Adopt(entry, assignment_version))
            return "unchanged"
        self._begin(entry, assignment_version, now_ms)
        return ""

    def withdraw(self) -> None:
        """The hub wants no particular model: abandon a download in progress."""
        if self.slots.state.state == "downloading":
            self._drop_download()
            self._end(table.Fail("withdrawn: the desired state names no model"))

    def refused(self, outcome: InstallOutcome) -> None:
        """An assignment the trust cycle refused: its outcome is the one to report."""
        self.outcome = outcome
        self.installs["refused"] += 1

    def serve(self, runtime: ModelRuntime) -> bool:
        """Serve ``runtime`` (a retrained head) if it is the active version and no watch runs."""
        current = self.runtime
        if current is None or runtime.ref != current.ref or self.watching:
            return False
        self.runtime = runtime
        return True

    # ------------------------------------------------------------------ over time

    def take_chunk(self, chunk: Chunk, now_ms: int) -> str:
        """Take one chunk of the download in progress; the verdict (``unexpected`` for a
        chunk of no download in progress)."""
        download = self._download
        if download is None or chunk.sha256 != download.entry.sha256:
            return "unexpected"
        verdict = download.receive(chunk, now_ms)
        self.pump(now_ms)
        return verdict

    def tick(self, now_ms: int) -> None:
        """Download speed and stalls, and the watch deadline."""
        download = self._download
        if download is not None:
            try:
                download.check_speed(now_ms)
            except SlowRetrieval as e:
                self._drop_download()
                self._end(table.Fail(self._starved_by() or _reason(e)))
            else:
                self.pump(now_ms)
        self.watch(now_ms)

    def pump(self, now_ms: int) -> None:
        """Send the fetch requests due; verify the package once every byte is in."""
        download = self._download
        data = download.pump(now_ms, self._send) if download is not None else None
        if download is None or data is None:
            return
        self._download = None
        self.slots.apply(table.Downloaded())
        self._verify(download.entry, data, download, now_ms)

    def watch(self, now_ms: int, *, final: bool = False) -> None:
        """Judge the watch window in progress: commit, roll back, or keep watching."""
        slot, runtime = self.slots.state, self.runtime
        if slot.state != "watching" or runtime is None or slot.watch_started_ms is None:
            return
        rows, errors = runtime.counters()
        elapsed = now_ms - slot.watch_started_ms
        verdict = self._config.watch.verdict(rows, errors, elapsed, final=final)
        if verdict is None:
            return
        self.watching = False
        if verdict == "commit":
            self._previous = None
            self._end(table.Commit())
            return
        previous, self._previous = self._previous, None
        if previous is None and slot.previous is not None:
            previous = self._load(slot.previous)
        self.runtime = previous
        self._end(table.Rollback(f"error_rate: {errors} of {rows} predicted rows failed"))

    # ------------------------------------------------------------------ the pipeline

    def _begin(self, entry: ReleaseEntry, assignment_version: int, now_ms: int) -> None:
        if self._download is not None and self._download.entry.sha256 != entry.sha256:
            self._drop_download()
        self.slots.apply(table.Assign(entry, assignment_version))
        self.outcome = self.slots.state.outcome
        try:
            check_release(
                entry,
                opset_range=self._config.opsets(),
                max_bytes=self._config.max_package_bytes,
            )
        except ProtocolError as e:
            self._end(table.Refuse(_reason(e)))
            return
        if self.slots.package_path(entry.sha256).exists():
            self.slots.apply(table.Downloaded())
            self._verify(entry, self.slots.read(entry.sha256), None, now_ms)
            return
        if self._download is None:
            short = _short_of_space(self.slots.downloads, entry.length, self._config.min_free_bytes)
            if short is not None:
                self._end(table.Refuse(short))
                return
            self._download = Download(self.slots.downloads, entry, now_ms, self._config.download)
        self._changed()
        self.pump(now_ms)

    def _verify(
        self, entry: ReleaseEntry, data: bytes, download: Download | None, now_ms: int
    ) -> None:
        try:
            package = check_package(
                entry,
                data,
                allowed_domains=self._config.allowed_domains,
                opset_range=self._config.opsets(),
                inputs=self.runtime.manifest.inputs if self.runtime is not None else None,
            )
        except Exception as e:  # a parser fault must not wedge the slots: refuse, fail closed
            if download is not None:
                download.discard()
            if not isinstance(e, ProtocolError):
                logger.exception("package checks failed unexpectedly")
            reason = _reason(e) if isinstance(e, ProtocolError) else f"unsafe_model: {e}"
            self._end(table.Refuse(reason))
            return
        if download is not None:
            self.slots.store(entry.sha256, download.part)
            download.discard()
        self.slots.apply(table.Verified())
        self._check_and_swap(entry, package, now_ms)

    def _check_and_swap(self, entry: ReleaseEntry, package: ModelPackage, now_ms: int) -> None:
        self.slots.apply(table.Check())
        try:
            runtime = ModelRuntime.from_package(
                package, ref_of(entry), threads=self._config.threads
            )
            runtime.health_check(runs=self._config.health_runs)
        except ModelUnhealthy as e:
            self._end(table.Unhealthy(_reason(e)))
            return
        self.slots.apply(table.Swap(now_ms))
        self._previous, self.runtime = self.runtime, runtime
        self.watching = True
        self.outcome = self.slots.state.outcome
        logger.info("now serving %s v%d (watching)", entry.name, entry.version)
        self._changed()

    def _resume_staged(self, entry: ReleaseEntry, now_ms: int) -> None:
        try:
            package = decode_package(self.slots.read(entry.sha256))
        except (OSError, ProtocolError) as e:
            self.slots.apply(table.Check())
            self._end(table.Unhealthy(f"model_unhealthy: the staged package is unreadable: {e}"))
            return
        self._check_and_swap(entry, package, now_ms)

    # ------------------------------------------------------------------ helpers

    def _end(self, event: table.Event) -> None:
        self.slots.apply(event)
        self.slots.collect_garbage()
        outcome = self.outcome = self.slots.state.outcome
        if outcome is not None:
            self.installs[outcome.status] += 1
            _log_end(outcome)
        self._changed()

    def _drop_download(self) -> None:
        if self._download is not None:
            self._download.discard()
            self._download = None

    def _load(self, ref: ModelRef) -> ModelRuntime | None:
        try:
            package = decode_package(self.slots.read(ref.sha256))
            return ModelRuntime.from_package(package, ref, threads=self._config.threads)
        except (OSError, ProtocolError, AgentError) as e:
            logger.error("cannot load %s v%d: %s", ref.name, ref.version, e)
            return None


def _log_end(outcome: InstallOutcome) -> None:
    model = f"{outcome.model.name} v{outcome.model.version}"
    if outcome.status in ("installed", "unchanged"):
        logger.info("install of %s ended: %s", model, outcome.status)
    else:
        logger.warning(
            "install of %s %s: %s", model, outcome.status.replace("_", " "), outcome.reason
        )


def _short_of_space(where: Path, length: int, headroom: int) -> str | None:
    """Why a download of ``length`` bytes would not fit with ``headroom`` left free, or None.

    Checked before the first byte (threat-model T4): a full disk otherwise shows up as a
    failed write midway, after the broker carried most of the package for nothing, and
    leaves the device with no room for its own outbox and logs.
    """
    free = shutil.disk_usage(where).free
    if free - length >= headroom:
        return None
    return f"no_space: {length} bytes to download and {headroom} to keep free; {free} free"


def _reason(error: Exception) -> str:
    code = getattr(error, "reason", "error")
    return f"{code}: {error}"[:MAX_REASON]


__all__ = ["Installer", "UpdaterConfig"]
