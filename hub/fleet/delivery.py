"""Model delivery: ``up/fetch`` requests answered with ``down/chunk`` frames, flow-controlled.

A device downloads the package its assignment names, one chunk per request (the agent
keeps one request in flight and resumes from its last offset). For each request,
cheapest checks first:

1. :func:`decide` (pure): the artifact must be the one named by the device's
   **current** assignment, or by the shadow assignment beside it (anything else is
   refused and audited: a device probing for other models, or one acting on a
   superseded assignment); the offset must lie inside
   the artifact; the length is cut to ``HubSettings.chunk_bytes`` and to the artifact's
   end;
2. :class:`FlowControl`: a token bucket per device (chunks per second, with a burst)
   and one for the whole hub (bytes per second). Over either, the request is shed: not
   queued, not answered (docs/decisions.md, bounded state), and the agent asks again
   after its back-off;
3. the bytes are read from the artifact store and sent as
   ``Chunk(sha256, offset, total_length, chunk_sha256, data)`` through the downlink.

Refusals are audited at most ``FlowLimits.audits_per_device_per_min`` times per device
and minute; beyond that they are only logged at debug level, so a misbehaving device
cannot flood the audit log. :func:`http_artifact` serves the same bytes over
``GET /api/v1/artifacts/{sha256}`` to HTTP-capable devices, for released artifacts only.

What it does not do: verify the fetch frame (ingest did, before calling
:meth:`Delivery.on_fetch`), or retry: the agent's download loop owns retries.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from dataclasses import dataclass
from typing import Literal

from edgefleet.clock import Clock
from hub.context import Sender
from hub.errors import InvalidRequest
from hub.registry.artifacts import ArtifactCorrupt, Artifacts, check_digest
from hub.settings import FlowLimits as FlowLimits  # re-exported: delivery's own knobs
from hub.settings import HubSettings
from hub.store import NotFound, Store
from protocol import metadata
from protocol.documents import SignedDocument
from protocol.messages import Chunk, FetchRequest
from protocol.metadata import Assignment

logger = logging.getLogger(__name__)

Outcome = Literal["sent", "shed", "refused", "unsent"]
MAX_BUCKETS = 10_000


@dataclass(frozen=True)
class Serve:
    """Send ``length`` bytes from ``offset`` of an artifact of ``total`` bytes."""

    offset: int
    length: int
    total: int


@dataclass(frozen=True)
class Refuse:
    """Answer nothing; audit ``reason`` (a short code) with ``detail``."""

    reason: str
    detail: str


def decide(
    request: FetchRequest, *, assigned: str | None, size: int | None, chunk_bytes: int
) -> Serve | Refuse:
    """What to answer ``request``, given the sha256 the device's current assignment names
    (None: no assignment) and that artifact's size (None: not on disk)."""
    if assigned is None or request.sha256 != assigned:
        return Refuse("not_assigned", f"artifact {request.sha256[:16]} is not assigned")
    if size is None:
        return Refuse("missing", f"assigned artifact {request.sha256[:16]} is not on disk")
    if request.offset >= size:
        return Refuse("out_of_range", f"offset {request.offset} at or past length {size}")
    return Serve(request.offset, min(request.length, chunk_bytes, size - request.offset), size)


@dataclass(frozen=True)
class Bucket:
    """A token bucket's level at ``at_ms``."""

    tokens: float
    at_ms: int

    def take(self, now_ms: int, *, rate: float, capacity: float, cost: float) -> Bucket | None:
        """The bucket after spending ``cost`` tokens, or None when it holds too few."""
        elapsed = max(0, now_ms - self.at_ms) / 1000
        tokens = min(capacity, self.tokens + elapsed * rate)
        return Bucket(tokens - cost, now_ms) if tokens >= cost else None

    def full(self, now_ms: int, *, rate: float, capacity: float) -> bool:
        return self.tokens + max(0, now_ms - self.at_ms) / 1000 * rate >= capacity


class FlowControl:
    """Per-device and hub-wide token buckets, safe to share between threads."""

    def __init__(self, limits: FlowLimits) -> None:
        self.limits = limits
        self._lock = threading.Lock()
        self._devices: dict[str, Bucket] = {}
        self._audits: dict[str, Bucket] = {}
        self._total: Bucket | None = None

    def admit(self, device_id: str, nbytes: int, now_ms: int) -> bool:
        """Spend one chunk of ``device_id``'s budget and ``nbytes`` of the hub's, or neither."""
        limits = self.limits
        with self._lock:
            device = self._devices.get(device_id, Bucket(limits.chunk_burst, now_ms))
            total = self._total or Bucket(limits.bytes_per_s, now_ms)
            spent = device.take(
                now_ms, rate=limits.chunks_per_s, capacity=limits.chunk_burst, cost=1
            )
            drained = total.take(
                now_ms, rate=limits.bytes_per_s, capacity=limits.bytes_per_s, cost=nbytes
            )
            if spent is None or drained is None:
                return False
            self._devices[device_id], self._total = spent, drained
            self._prune(self._devices, now_ms, limits.chunks_per_s, limits.chunk_burst)
            return True

    def audit_allowed(self, device_id: str, now_ms: int) -> bool:
        """Whether one more refusal of ``device_id`` may be audited this minute."""
        per_min = self.limits.audits_per_device_per_min
        with self._lock:
            bucket = self._audits.get(device_id, Bucket(per_min, now_ms))
            taken = bucket.take(now_ms, rate=per_min / 60, capacity=per_min, cost=1)
            if taken is None:
                return False
            self._audits[device_id] = taken
            self._prune(self._audits, now_ms, per_min / 60, per_min)
            return True

    @staticmethod
    def _prune(buckets: dict[str, Bucket], now_ms: int, rate: float, capacity: float) -> None:
        """Forget full buckets (a new one starts full) once there are too many."""
        if len(buckets) > MAX_BUCKETS:
            for key in [
                k for k, b in buckets.items() if b.full(now_ms, rate=rate, capacity=capacity)
            ]:
                del buckets[key]


class Delivery:
    """Answers fetch requests; :meth:`on_fetch` is the hook hub ingest calls."""

    def __init__(
        self,
        store: Store,
        artifacts: Artifacts,
        downlink: Sender,
        clock: Clock,
        settings: HubSettings,
        limits: FlowLimits | None = None,
    ) -> None:
        self.store = store
        self.artifacts = artifacts
        self.downlink = downlink
        self.clock = clock
        self.settings = settings
        self.flow = FlowControl(limits or settings.delivery)

    def on_fetch(self, device_id: str, request: FetchRequest) -> Outcome:
        """Answer one verified fetch request from ``device_id`` (see the module docstring).

        Never raises for anything the device sent; an artifact corrupted on disk is
        refused (and audited) rather than served.
        """
        now_ms = self.clock.now_ms()
        assigned = self._assigned(device_id, request.sha256)
        size = self._size(assigned) if assigned == request.sha256 else None
        verdict = decide(
            request, assigned=assigned, size=size, chunk_bytes=self.settings.chunk_bytes
        )
        if isinstance(verdict, Refuse):
            self._refused(device_id, request, verdict, now_ms)
            return "refused"
        if not self.flow.admit(device_id, verdict.length, now_ms):
            logger.debug("shed a fetch from %s at offset %d", device_id, request.offset)
            return "shed"
        try:
            data = self.artifacts.read_range(request.sha256, verdict.offset, verdict.length)
        except ArtifactCorrupt as e:  # logged by the store; keep serving everything else
            self._refused(device_id, request, Refuse(e.reason, str(e)), now_ms)
            return "refused"
        chunk = Chunk(
            sha256=request.sha256,
            offset=verdict.offset,
            total_length=verdict.total,
            chunk_sha256=hashlib.sha256(data).hexdigest(),
            data=data,
        )
        if self.downlink.send(device_id, chunk) is None:
            return "unsent"
        return "sent"

    def _assigned(self, device_id: str, wanted: str) -> str | None:
        """The artifact the device's current assignment names, or its shadow assignment's
        when that is the one ``wanted``."""
        stored = self.store.desired.current_assignment(device_id)
        if stored is None:
            return None
        doc = SignedDocument.from_bytes(stored.document.encode())
        served = metadata.parse(Assignment, doc).entry.sha256
        if wanted == served:
            return served
        desired = self.store.desired.find(device_id)
        if desired is None or desired.shadow_version is None:
            return served
        shadow = self.store.desired.assignment(device_id, desired.shadow_version)
        if shadow is None:
            return served
        sha = metadata.parse(Assignment, SignedDocument.from_bytes(shadow.document.encode()))
        return wanted if sha.entry.sha256 == wanted else served

    def _size(self, sha256: str) -> int | None:
        try:
            return self.artifacts.size(sha256)
        except NotFound:
            return None

    def _refused(self, device_id: str, request: FetchRequest, verdict: Refuse, now_ms: int) -> None:
        if not self.flow.audit_allowed(device_id, now_ms):
            logger.debug("refused fetch from %s: %s (not audited)", device_id, verdict.reason)
            return
        logger.info("refused fetch from %s: %s", device_id, verdict.detail)
        self.store.audit.append(
            at=now_ms,
            actor=f"device:{device_id}",
            action="artifact.fetch",
            target=request.sha256,
            outcome="rejected",
            reason=verdict.reason,
            detail={"offset": request.offset, "length": request.length, "why": verdict.detail},
        )


@dataclass(frozen=True)
class ArtifactBytes:
    """A released artifact, or a range of it, for HTTP (``Content-Range`` needs the total)."""

    data: bytes
    offset: int
    total_length: int


def http_artifact(
    store: Store,
    artifacts: Artifacts,
    sha256: str,
    *,
    offset: int = 0,
    length: int | None = None,
) -> ArtifactBytes:
    """The bytes of a released package for ``GET /api/v1/artifacts/{sha256}``.

    Without ``length`` the whole artifact, checked against its digest; with it, at most
    1 MiB from ``offset`` (a ``Range`` request; the device checks the whole in the end).
    Artifacts of unreleased or withdrawn versions are NotFound, like unknown ones.

    Raises:
        InvalidRequest: ``sha256`` is not a digest, or a range outside the artifact.
        NotFound: no released version has this artifact.
        ArtifactCorrupt: the stored bytes no longer match the digest.
    """
    check_digest(sha256)
    if not store.registry.released_artifact(sha256):
        raise NotFound(f"no released artifact {sha256[:16]}")
    if length is None:
        if offset:
            raise InvalidRequest("an offset needs a length")
        data = artifacts.read(sha256)
        return ArtifactBytes(data, 0, len(data))
    data = artifacts.read_range(sha256, offset, length)
    return ArtifactBytes(data, offset, artifacts.size(sha256))
