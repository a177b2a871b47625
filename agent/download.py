"""Resumable chunked download of one package: ``up/fetch`` requests, ``down/chunk`` answers.

A pure core decides, from a :class:`Progress` value and ``now_ms``, what to ask for next
(:func:`plan`), what to make of a chunk (:func:`receive`) and whether to give up
(:func:`check_speed`); :class:`Download` is the thin shell that keeps the bytes in a
``.part`` file and the progress in a sidecar, so tests drive the core with plain values
and a fake clock.

Rules:

- **Window.** At most ``window`` requests in flight, ``chunk_bytes`` each, from the
  first byte not yet asked for. Only the next contiguous chunk is written; one at any
  other offset is discarded. When nothing in flight covers the next byte (a bad chunk
  was discarded, the hub cut a chunk short) every request is dropped and asked again
  from there: at most ``window - 1`` chunks are fetched twice.
- **Each chunk** must name the artifact being fetched and its signed length, fit inside
  that length (never one byte beyond it, threat-model T4), and hash to its ``chunk_sha256``;
  otherwise it is discarded and asked again. The whole file is checked against the
  release entry (length, then sha256) before anything parses it; the model manager
  does that with :func:`protocol.trust.check_artifact`.
- **Stalls.** No progress for ``stall_ms``: every request is asked again (the link
  dropped, the broker lost a message, the hub shed a request).
- **Slow retrieval** (T12). Past ``deadline_ms`` since the download started, or below
  ``min_bytes_per_s`` over this session once ``grace_ms`` have passed:
  :class:`~agent.errors.SlowRetrieval`, and the model manager abandons the download.
- **Resume.** Accepted bytes are written and fsynced before the sidecar records the new
  offset (atomically), so after a crash the ``.part`` file is cut back to the recorded
  offset and the download goes on from there; a session (for the throughput rule) starts
  anew, the deadline does not.

Fetch requests are transient (not outboxed): a lost one is asked again after a stall.

**Verification.** :func:`check_release` refuses a release this device cannot take before
any fetch; :func:`check_package` refuses the finished file before anything loads it:
hash and length, package layout, hostile ONNX, compatibility, the active model's inputs
(shapes and dtypes: :func:`protocol.manifest.inputs_differ`).
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

from agent.errors import SlowRetrieval
from edgefleet.files import write_atomic
from protocol import canonical, schema, trust
from protocol.errors import Incompatible, Malformed, Oversize, ProtocolError
from protocol.manifest import TensorSpec, inputs_differ
from protocol.messages import MAX_CHUNK_BYTES, Chunk, FetchRequest
from protocol.metadata import ReleaseEntry
from protocol.package import ModelPackage, decode_package
from protocol.schema import check_range

logger = logging.getLogger(__name__)

ChunkVerdict = Literal[
    "accepted", "other_artifact", "bad_length", "beyond_length", "bad_chunk_hash", "out_of_order"
]


@dataclass(frozen=True)
class DownloadPolicy:
    """How a download asks and when it gives up (units in the names)."""

    chunk_bytes: int = 64 * 1024  # per request; the hub may cut it shorter
    window: int = 4  # requests in flight
    stall_ms: int = 10_000  # no progress this long: ask again
    deadline_ms: int = 30 * 60_000  # the whole download, across restarts
    min_bytes_per_s: int = 2048  # slower than this over a session: slow retrieval
    grace_ms: int = 60_000  # before the throughput rule applies to a session

    def __post_init__(self) -> None:
        check_range(self.chunk_bytes, "chunk_bytes", 1, MAX_CHUNK_BYTES)
        check_range(self.window, "window", 1, 64)
        for name in ("stall_ms", "deadline_ms", "grace_ms"):
            check_range(getattr(self, name), name, 1)
        check_range(self.min_bytes_per_s, "min_bytes_per_s", 0)


@dataclass(frozen=True)
class Request:
    """A fetch in flight: ``length`` bytes from ``offset``, asked at ``sent_ms``."""

    offset: int
    length: int
    sent_ms: int


@dataclass(frozen=True)
class Progress:
    """Where one download stands. ``offset`` bytes are on disk; ``session_*`` count this run.

    Round-trip law (the persisted part): ``Progress.from_bytes(p.to_bytes(), now_ms)`` keeps
    ``sha256``, ``length``, ``offset`` and ``started_ms``.
    """

    sha256: str
    length: int
    offset: int
    started_ms: int
    session_ms: int
    session_bytes: int = 0
    last_progress_ms: int = 0
    outstanding: tuple[Request, ...] = ()

    @property
    def complete(self) -> bool:
        return self.offset == self.length

    def to_bytes(self) -> bytes:
        keep = {"sha256", "length", "offset", "started_ms"}
        return canonical.dumps({k: v for k, v in schema.to_json(self).items() if k in keep})

    @classmethod
    def from_bytes(cls, data: bytes, now_ms: int) -> Progress:
        """A resumed download: the persisted part, a new session starting at ``now_ms``.

        Raises:
            Malformed: not a persisted progress.
        """
        saved = schema.from_json(_Saved, canonical.loads(data), path="download")
        if saved.offset > saved.length:
            raise Malformed("download offset beyond its length")
        return cls(saved.sha256, saved.length, saved.offset, saved.started_ms, now_ms, 0, now_ms)


@dataclass(frozen=True)
class _Saved:
    sha256: str
    length: int
    offset: int
    started_ms: int


def start(entry: ReleaseEntry, now_ms: int) -> Progress:
    """A fresh download of ``entry``'s package."""
    return Progress(entry.sha256, entry.length, 0, now_ms, now_ms, 0, now_ms)


def plan(progress: Progress, now_ms: int, policy: DownloadPolicy) -> tuple[Progress, list[Request]]:
    """The requests to send now, and the progress that records them as in flight."""
    if progress.complete:
        return progress, []
    outstanding = progress.outstanding
    stalled = now_ms - progress.last_progress_ms >= policy.stall_ms
    covered = any(r.offset <= progress.offset < r.offset + r.length for r in outstanding)
    if stalled or not covered:
        outstanding = ()
        if stalled:
            progress = replace(progress, last_progress_ms=now_ms)
    frontier = max((r.offset + r.length for r in outstanding), default=progress.offset)
    new: list[Request] = []
    while len(outstanding) + len(new) < policy.window and frontier < progress.length:
        length = min(policy.chunk_bytes, progress.length - frontier)
        new.append(Request(frontier, length, now_ms))
        frontier += length
    return replace(progress, outstanding=(*outstanding, *new)), new


def receive(progress: Progress, chunk: Chunk, now_ms: int) -> tuple[Progress, ChunkVerdict]:
    """Judge one chunk; only an ``accepted`` one moves ``offset`` (by ``len(chunk.data)``)."""
    if chunk.sha256 != progress.sha256:
        return progress, "other_artifact"
    if chunk.total_length != progress.length or not chunk.data:
        return progress, "bad_length"
    if chunk.offset + len(chunk.data) > progress.length:
        return progress, "beyond_length"
    if hashlib.sha256(chunk.data).hexdigest() != chunk.chunk_sha256:
        answered = tuple(r for r in progress.outstanding if r.offset != chunk.offset)
        return replace(progress, outstanding=answered), "bad_chunk_hash"
    if chunk.offset != progress.offset:
        return progress, "out_of_order"
    offset = chunk.offset + len(chunk.data)
    return (
        replace(
            progress,
            offset=offset,
            session_bytes=progress.session_bytes + len(chunk.data),
            last_progress_ms=now_ms,
            outstanding=tuple(
                r
                for r in progress.outstanding
                if r.offset != chunk.offset and r.offset + r.length > offset
            ),
        ),
        "accepted",
    )


def check_speed(progress: Progress, now_ms: int, policy: DownloadPolicy) -> None:
    """Raise when the download is too slow to go on (T12).

    Raises:
        SlowRetrieval: past the deadline, or below the minimum throughput this session.
    """
    if progress.complete:
        return
    if now_ms - progress.started_ms > policy.deadline_ms:
        raise SlowRetrieval(f"{progress.offset} of {progress.length} bytes by the deadline")
    elapsed = now_ms - progress.session_ms
    if elapsed >= policy.grace_ms and progress.session_bytes * 1000 < (
        policy.min_bytes_per_s * elapsed
    ):
        rate = progress.session_bytes * 1000 // elapsed
        raise SlowRetrieval(f"{rate} B/s, below the minimum {policy.min_bytes_per_s} B/s")


def check_release(entry: ReleaseEntry, *, opset_range: tuple[int, int], max_bytes: int) -> None:
    """Refuse, before fetching a byte, a release this device could never install.

    Raises:
        Incompatible: its opset is outside ``opset_range``.
        Oversize: it is longer than ``max_bytes`` (T4: no endless download).
    """
    low, high = opset_range
    if not low <= entry.compat.opset <= high:
        raise Incompatible(f"opset {entry.compat.opset} outside {low}-{high}")
    if entry.length > max_bytes:
        raise Oversize(f"{entry.length} bytes, this device takes at most {max_bytes}")


def check_package(
    entry: ReleaseEntry,
    data: bytes,
    *,
    opset_range: tuple[int, int],
    allowed_domains: frozenset[str] | None = None,
    inputs: tuple[TensorSpec, ...] | None = None,
) -> ModelPackage:
    """Refuse a downloaded package before any runtime loads it; decode it if it passes.

    In order: length and sha256 against the signed release entry, before anything parses
    the bytes (threat-model T1a, B21); the package layout; the manifest naming the entry's
    model and version; :func:`protocol.modelcheck.inspect_model` (external data, custom
    operator domains outside ``allowed_domains``, opsets outside ``opset_range``, T5 and
    B22) and ``check_io`` (the graph is the one the manifest describes); the entry's
    compatibility ids against this runtime (T9b); and, when a model already serves,
    ``inputs``: the device's application feeds the same inputs to the next one.

    Raises:
        ContentMismatch: length or sha256 differ from the release entry.
        Malformed, Oversize, UnknownVersion: not a valid package.
        UnsafeModel: a model no runtime may load.
        Incompatible: another model or version, opset, I/O signature or inputs.
    """
    # Imported here: onnx costs the idle agent ~7 MB, and only an install needs it.
    from protocol import modelcheck

    trust.check_artifact(entry, data)
    package = decode_package(data)
    manifest = package.manifest
    if (manifest.name, manifest.version) != (entry.name, entry.version):
        raise Incompatible(f"the package holds {manifest.name} v{manifest.version}")
    info = modelcheck.inspect_model(
        package.model,
        allowed_domains=allowed_domains or modelcheck.DEFAULT_DOMAINS,
        opset_range=opset_range,
    )
    modelcheck.check_io(manifest, info)
    trust.check_compat(entry, opset_range=opset_range, io_signature=manifest.io_signature())
    if inputs is not None and (why := inputs_differ(inputs, manifest.inputs)) is not None:
        raise Incompatible(f"its inputs differ from the active model's: {why}")
    return package


class Download:
    """One package download on disk: ``<sha256>.part`` and its ``<sha256>.json`` progress.

    Resumes what a previous run of the same sha256 and length left; anything else in the
    way is started over. Not thread-safe: the model manager serialises every call.
    """

    def __init__(
        self, directory: Path, entry: ReleaseEntry, now_ms: int, policy: DownloadPolicy
    ) -> None:
        self.entry = entry
        self.policy = policy
        self.part = directory / f"{entry.sha256}.part"
        self._sidecar = directory / f"{entry.sha256}.json"
        self.progress = self._resume(now_ms) or start(entry, now_ms)
        with self.part.open("ab") as f:  # create it; cut back to what the sidecar vouches for
            f.truncate(self.progress.offset)
        if self.progress.offset:
            logger.info(
                "resuming download of %s at byte %d", entry.sha256[:12], self.progress.offset
            )

    @property
    def complete(self) -> bool:
        return self.progress.complete

    def requests(self, now_ms: int) -> list[FetchRequest]:
        """Fetch requests to send now (possibly none)."""
        self.progress, new = plan(self.progress, now_ms, self.policy)
        return [FetchRequest(self.entry.sha256, r.offset, r.length) for r in new]

    def receive(self, chunk: Chunk, now_ms: int) -> ChunkVerdict:
        """Write an accepted chunk at its offset, durably, then record the new offset."""
        progress, verdict = receive(self.progress, chunk, now_ms)
        if verdict == "accepted":
            fd = os.open(self.part, os.O_WRONLY)
            try:
                os.pwrite(fd, chunk.data, chunk.offset)
                os.fsync(fd)
            finally:
                os.close(fd)
            write_atomic(self._sidecar, progress.to_bytes())
        elif verdict != "other_artifact":
            logger.warning(
                "discarded chunk at %d of %s: %s", chunk.offset, chunk.sha256[:12], verdict
            )
        self.progress = progress
        return verdict

    def check_speed(self, now_ms: int) -> None:
        """Raises: SlowRetrieval (see :func:`check_speed`)."""
        check_speed(self.progress, now_ms, self.policy)

    def data(self) -> bytes:
        """Every byte downloaded (call once :attr:`complete`)."""
        return self.part.read_bytes()

    def pump(self, now_ms: int, send: Callable[[FetchRequest], object]) -> bytes | None:
        """Send the fetch requests due now; every byte once the download is complete."""
        if self.complete:
            return self.data()
        for request in self.requests(now_ms):
            send(request)
        return None

    def discard(self) -> None:
        """Delete the partial file and its progress."""
        for path in (self.part, self._sidecar):
            path.unlink(missing_ok=True)

    def _resume(self, now_ms: int) -> Progress | None:
        try:
            saved = Progress.from_bytes(self._sidecar.read_bytes(), now_ms)
        except FileNotFoundError:
            return None
        except ProtocolError as e:
            logger.warning("download progress unreadable, starting over: %s", e)
            return None
        if (saved.sha256, saved.length) != (self.entry.sha256, self.entry.length):
            return None
        if not self.part.exists() or self.part.stat().st_size < saved.offset:
            return None
        return saved
