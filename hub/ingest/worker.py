"""Hub ingest: drain the uplink queue in batches, judge each frame, commit, then acknowledge.

The shell around :mod:`hub.ingest.rules` (the core decides, the shell writes only what
the core accepted). One worker thread::

    inbox (hub.transport.mqtt) ─> batch of up to ingest_batch_max frames (or ingest_batch_wait_ms)
      ─> store.atomic():  judge every frame; enrollment; rows, device windows, twin,
                          last_seen/online, rejection audit rows,
                          data windows into drift buckets (hub.monitor) ── one transaction
      ─> commit ─> HubAck per device (down/ack) ─> on_fetch hooks ─> prune audit

**Exactly once, acked implies stored.** A frame's row and its device's replay window
(``devices.up_window``) change in the same transaction, and acks go out only after the
commit. A crash before the commit loses the batch, unacknowledged, so agents resend it; a
crash between commit and ack only delays the ack: the resend is a *duplicate* by the
window, stored once, acknowledged again. Uplink rows are inserted with ``INSERT OR
IGNORE`` on their (device_id, seq) key as a second line of defence.

**Verify workers** open and verify a batch's frames ahead of the worker, on threads of
their own, and only save work (:mod:`hub.ingest.verify_ahead`).

**Caches.** Device keys and windows are cached for speed; the store is the truth. The
cache is updated only after a commit, dropped when a batch fails or the ``devices_epoch``
counter moved (approve/revoke/preauthorize bump it; checked in each batch's transaction,
so a revocation applies from the next batch on), and checked against the stored windows of
the batch's devices, their rows locked first (:func:`lock_windows`: hub replicas).

**Rejections** are counted (``edgefleet_hub_rejected_total{reason}``) and audited by
:mod:`hub.ingest.sentry`: attacks always (outcome ``alert``), garbage a few rows per sender
then summarised per reason; last wills count towards ``cloned_device``. Audit rows never
hold frame content or error text. A hello's broker verifier is stored with the batch, and
``on_credentials`` runs after the commit (:mod:`hub.transport.broker_accounts`).

**Pending devices hear why.** A hello that leaves its device pending (no token, or one
that is unknown, expired, revoked or used) is answered with a signed ``HubAck`` refusing
it as ``pending: <why>`` (a few per device per minute), so the agent logs what to fix;
nothing is admitted, and the reason is stored on the device (``pending_reason``). The
last install or desired state a device reports refusing is stored too (``refusal``).

Never crashes on input: the rules return refusals as values, and anything unexpected in
one frame is logged (without content) and counted as ``internal``; a failed transaction
is rolled back, counted, and the worker carries on.

Run alone (tests, debugging): ``python -m hub.ingest.pipeline --data DIR --broker URL --prefix P
--key ROLLOUT.pem`` prints ``ready`` once subscribed and runs until SIGTERM/SIGINT.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edgefleet.clock import Clock
from hub.federated.screening import DeltaScreening
from hub.fleet import enrollment
from hub.fleet.identity import ACTIVE, PENDING, Enroll, Pend, Refuse
from hub.ingest.batch import (
    Batch,
    SeenDevice,
    StateUpdate,
    load_device,
    lock_windows,
    record,
    reported_twin,
)
from hub.ingest.rules import (
    Admitted,
    Claimed,
    Decoded,
    Device,
    Lookup,
    Outcome,
    Refused,
    Rules,
    judge,
)
from hub.ingest.security import MinuteBudget
from hub.ingest.sentry import Sentry
from hub.ingest.verify_ahead import VerifyAhead, default_workers
from hub.metrics import (
    BATCH_FAILURES,
    BATCH_SECONDS,
    CLOCK_SKEW,
    DELTAS_SCREENED,
    DUPLICATES,
    INGESTED,
    QUEUE_DEPTH,
    REJECTED,
)
from hub.monitor.ingest import DriftMerger
from hub.settings import HubSettings
from hub.store import Store
from hub.store.round_rows import DeltaVerdict
from hub.store.rows import DeviceIdentity
from hub.transport.mqtt import Inbound
from protocol.messages import DeltaUpload, FetchRequest, Hello, StateReport
from protocol.topics import Topics

logger = logging.getLogger(__name__)

FetchHook = Callable[[str, FetchRequest], object]
DeltasHook = Callable[[Sequence[DeltaVerdict]], object]
FINGERPRINTS_KEPT = 65_536
PENDING_ANSWERS_PER_MIN = 4  # per pending device: the agent says hello once a minute
SKEW_BEHIND, SKEW_AHEAD = CLOCK_SKEW.labels("behind"), CLOCK_SKEW.labels("ahead")


class AckSender(Protocol):
    """What ingest needs of :class:`hub.transport.downlink.Downlink`."""

    def ack(
        self, device_id: str, committed: Sequence[int], refused: Sequence[tuple[int, str]] = ()
    ) -> list[int]: ...


@dataclass(frozen=True)
class BatchResult:
    """What one batch did (for tests and logs)."""

    committed: int
    duplicates: int
    refused: int
    acks: int


class Ingest:
    """The ingest worker. ``inbox`` is what :class:`hub.transport.mqtt.HubLink` fills.

    Args:
        store, settings, clock: the hub's.
        downlink: sends the HubAcks.
        on_fetch: called after the commit for each new fetch request (chunk delivery).
        inbox: the queue to drain (default: a new one of ``ingest_queue_max``).
        verify_workers: threads that open and verify a batch's frames ahead of the
            worker, in parallel (Ed25519 releases the GIL); 0 verifies inline. Default:
            one per CPU (up to 4), none on a single CPU.
        hub_keys: the hub's downlink public keys (its frames sent back are ``wrong_role``).
        on_credentials: called after a commit that stored a device's broker verifier.
        on_deltas: called after a commit with the screening verdicts of its new deltas
            (the rounds layer closes rounds and flushes buffers from there).
    """

    def __init__(
        self,
        store: Store,
        settings: HubSettings,
        clock: Clock,
        downlink: AckSender,
        *,
        on_fetch: FetchHook | None = None,
        inbox: queue.Queue[Inbound] | None = None,
        verify_workers: int | None = None,
        hub_keys: tuple[Ed25519PublicKey, ...] = (),
        on_credentials: Callable[[], object] | None = None,
        on_deltas: DeltasHook | None = None,
    ) -> None:
        self.store = store
        self.settings = settings
        self.clock = clock
        self.downlink = downlink
        self.on_fetch = on_fetch
        self.max_pending_devices = settings.max_pending_devices
        self.inbox = inbox if inbox is not None else queue.Queue(settings.ingest_queue_max)
        self.on_credentials = on_credentials
        self.on_deltas = on_deltas
        self.screening = DeltaScreening(store)
        self.rules = Rules(
            Topics(settings.topic_prefix), settings.limits, settings.freshness, hub_keys
        )
        self.sentry = Sentry(settings)
        self.pending_answers = MinuteBudget(
            PENDING_ANSWERS_PER_MIN, max_unknown=settings.max_pending_devices
        )
        self._devices: dict[str, Device] = {}
        self._windows: dict[str, bytes | None] = {}  # the stored window each cached one began as
        self._epoch = -1
        self._fingerprints: OrderedDict[tuple[str, int], bytes] = OrderedDict()
        self._audited = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.drift = DriftMerger(store)  # windows into drift buckets, in the batch's transaction
        workers = default_workers() if verify_workers is None else verify_workers
        self.ahead = VerifyAhead(self.rules, self._devices.get, workers)

    # ------------------------------------------------------------------ the thread

    def start(self) -> None:
        """Start the worker thread (prunes the audit log once first)."""
        self._prune()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="edgefleet-ingest", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Finish the batch in hand (and the next, if already taken from the queue to be
        verified ahead), write the rejection summaries so far, and stop; frames still
        queued are left (not acked)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None
        self.ahead.shutdown()
        self._write_summaries(flush=True)

    def _run(self) -> None:
        ahead: tuple[list[Inbound], Iterator[Decoded | None]] | None = None
        while not self._stop.is_set() or ahead is not None:
            if ahead is None:
                items = self.drain(timeout_s=0.2)
                if not items:
                    self._write_summaries()
                    continue
                ahead = items, self.ahead.start(items)
            items, decoded = ahead
            # with a full batch queued behind this one (a backlog), take it now: the verify
            # workers start on it while this thread writes, commits and acknowledges this
            # one. Otherwise the next batch is drained as usual, waiting for it to fill.
            ahead = None
            if not self._stop.is_set() and self.inbox.qsize() >= self.settings.ingest_batch_max:
                upcoming = self._take_queued()
                ahead = (upcoming, self.ahead.start(upcoming)) if upcoming else None
            self.process(items, decoded)

    def drain(self, timeout_s: float) -> list[Inbound]:
        """Up to ``ingest_batch_max`` frames: wait ``timeout_s`` for the first, then at
        most ``ingest_batch_wait_ms`` for the batch to fill."""
        try:
            items = [self.inbox.get(timeout=timeout_s)]
        except queue.Empty:
            return []
        limit = self.settings.ingest_batch_max
        deadline = time.monotonic() + self.settings.ingest_batch_wait_ms / 1000
        while len(items) < limit:
            try:
                items.append(self.inbox.get_nowait())
            except queue.Empty:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    items.append(self.inbox.get(timeout=remaining))
                except queue.Empty:
                    break
        return items

    def _take_queued(self) -> list[Inbound]:
        """Up to ``ingest_batch_max`` frames that are queued now, without waiting."""
        items: list[Inbound] = []
        limit = self.settings.ingest_batch_max
        while len(items) < limit:
            try:
                items.append(self.inbox.get_nowait())
            except queue.Empty:
                break
        return items

    # ------------------------------------------------------------------ one batch

    def process(
        self, items: Sequence[Inbound], decoded: Iterator[Decoded | None] | None = None
    ) -> BatchResult:
        """Judge, write and commit ``items`` in one transaction, then acknowledge.

        ``decoded``: :meth:`VerifyAhead.start` of these items, when the caller started it early.
        """
        QUEUE_DEPTH.set(self.inbox.qsize())
        started = time.perf_counter()
        if decoded is None:
            decoded = self.ahead.start(items)
        batch = Batch(self.clock.now_ms())
        try:
            with self.store.for_update():
                self._sync_epoch()
                lock_windows(self.store, items, self.rules.topics, self._devices, self._windows)
                lookup = self._lookup(batch)
                for (topic, payload), ahead in zip(items, decoded, strict=True):
                    self._one(topic, payload, batch, lookup, ahead)
                batch.audits.extend(self.sentry.summaries(batch.now_ms))
                batch.write(self.store)
                self.drift.merge(batch.admitted, batch.now_ms)
        except Exception:
            BATCH_FAILURES.inc()
            logger.exception("ingest batch of %d frames failed and was rolled back", len(items))
            self._devices.clear()
            return BatchResult(0, 0, 0, 0)
        BATCH_SECONDS.observe(time.perf_counter() - started)
        self._committed(batch)
        acks = self._acknowledge(batch)
        self._hand_off(batch)
        if batch.credentials and self.on_credentials is not None:
            self.on_credentials()
        if batch.verdicts:
            self._screened(batch.verdicts)
        if batch.audits:
            self._audited += len(batch.audits)
            if self._audited >= max(1, self.settings.audit_rejections_keep // 10):
                self._prune()
        seen = batch.seen.values()
        return BatchResult(
            committed=sum(len(s.committed) for s in seen),
            duplicates=sum(len(s.duplicates) for s in seen),
            refused=len(items) - sum(len(s.committed) + len(s.duplicates) for s in seen),
            acks=acks,
        )

    def _one(
        self, topic: str, payload: bytes, batch: Batch, lookup: Lookup, decoded: Decoded | None
    ) -> None:
        try:
            outcome: Outcome | None = judge(
                topic,
                payload,
                now_ms=batch.now_ms,
                rules=self.rules,
                lookup=lookup,
                fingerprints=self._fingerprints,
                decoded=decoded,
            )
            if isinstance(outcome, Claimed):
                outcome = self._enroll(outcome, batch, lookup)
            if isinstance(outcome, Admitted):
                self._admit(outcome, batch, lookup)
            elif isinstance(outcome, Refused):
                self._refuse(outcome, batch, lookup)
        except Exception:  # a bug, never the sender's input: keep serving
            logger.exception("ingest failed on a %d-byte frame", len(payload))
            REJECTED.labels("internal").inc()

    def _lookup(self, batch: Batch) -> Lookup:
        def lookup(device_id: str) -> Device | None:
            seen = batch.seen.get(device_id)
            if seen is not None:
                return seen.device
            device = self._devices.get(device_id)
            if device is None:
                identity = self.store.devices.identity(device_id)
                if identity is None:
                    return None
                device = self._devices[device_id] = load_device(identity)
                self._windows[device_id] = identity.up_window
            return device

        return lookup

    def _enroll(self, claimed: Claimed, batch: Batch, lookup: Lookup) -> Outcome | None:
        """Let enrollment decide on a hello: the frame to admit, a refusal, or None
        (the device is pending now)."""
        claim = claimed.claim
        with self.store.atomic():  # a savepoint: a failure undoes only this hello
            decision = enrollment.admit_claim(
                self.store, claim, now_ms=batch.now_ms, max_pending=self.max_pending_devices
            )
        if isinstance(decision, Refuse):
            known = lookup(claim.device_id)
            if decision.reason == "pending" and known and self._answer(claim.device_id, batch):
                seen = batch.seen.setdefault(claim.device_id, SeenDevice(known))
                seen.refused.append((claim.seq, f"pending: {decision.why}"))
            return Refused(
                key=claim.device_id,
                kind="hello",
                seq=claim.seq,
                reason=decision.reason,
                error="Enrollment",
                size=0,
                known=known is not None,
                action=decision.action,
            )
        active = isinstance(decision, Enroll)
        if claim.hello.broker_verifier is not None:
            batch.credentials[claim.device_id] = claim.hello.broker_verifier
        identity = DeviceIdentity(
            claim.device_id, ACTIVE if active else PENDING, claim.hello.public_key, None
        )
        seen = batch.seen[claim.device_id] = SeenDevice(load_device(identity))
        if not active:
            if isinstance(decision, Pend) and self._answer(claim.device_id, batch):
                seen.refused.append((claim.seq, f"pending: {decision.reason}"))
            return None
        batch.enrolled.add(claim.device_id)
        return claimed.frame

    def _answer(self, device_id: str, batch: Batch) -> bool:
        """Answer a pending hello now? A few per minute: a loop must not make us sign."""
        return self.pending_answers.allow(device_id, known=False, now_ms=batch.now_ms)

    def _admit(self, frame: Admitted, batch: Batch, lookup: Lookup) -> None:
        seen = batch.seen.get(frame.device_id)
        if seen is None:
            device = lookup(frame.device_id)
            assert device is not None  # judge admitted it
            seen = batch.seen[frame.device_id] = SeenDevice(device)
        if frame.duplicate:
            seen.duplicates.append(frame.seq)
            return
        # everything that may fail first: the frame enters the window (and its ack)
        # only together with the rows it stands for
        stored = record(frame, batch.now_ms)
        message = frame.message
        if isinstance(message, StateReport):
            twin = reported_twin(frame, message, batch.now_ms)
            self.sentry.report(frame.device_id, message, batch)
            batch.states.append(StateUpdate(frame.device_id, frame.seq, twin, message.flags))
        elif isinstance(message, Hello) and frame.device_id not in batch.enrolled:
            known = self.store.devices.get(frame.device_id)  # a re-hello: update the device
            batch.hellos[frame.device_id] = enrollment.hello_update(self.store, known, message)
            if message.broker_verifier is not None:  # a new one rotates its broker password
                batch.credentials[frame.device_id] = message.broker_verifier
        elif isinstance(message, FetchRequest):
            batch.fetches.append((frame.device_id, message))
        elif isinstance(message, DeltaUpload):
            self.screening.screen(frame.device_id, frame.seq, message, batch)
        batch.note_refusal(frame.device_id, message)
        if stored is not None:
            batch.records.append(stored)
        seen.accept(frame, batch.now_ms)
        batch.admitted.append(frame)

    def _refuse(self, refused: Refused, batch: Batch, lookup: Lookup) -> None:
        REJECTED.labels(refused.reason).inc()
        if refused.ack and refused.seq is not None:
            seen = batch.seen.get(refused.key)
            if seen is None:
                device = lookup(refused.key)
                if device is not None:
                    seen = batch.seen[refused.key] = SeenDevice(device)
            if seen is not None:
                seen.refused.append((refused.seq, refused.reason))
        self.sentry.refused(refused, batch)

    def _sync_epoch(self) -> None:
        epoch = self.store.counters.get("devices_epoch")
        if epoch != self._epoch:
            self._devices.clear()
            self._epoch = epoch

    # ------------------------------------------------------------------ after the commit

    def _committed(self, batch: Batch) -> None:
        for device_id, seen in batch.seen.items():
            if seen.device.status == ACTIVE:
                self._devices[device_id] = seen.device
                if seen.last_seen is not None:  # Batch.write stored this window
                    self._windows[device_id] = seen.device.window.to_bytes()
            DUPLICATES.inc(len(seen.duplicates))
        for kind, count in Counter(frame.kind for frame in batch.admitted).items():
            INGESTED.labels(kind).inc(count)
        for frame in batch.admitted:
            skew_s = (batch.now_ms - frame.sent_at) / 1000
            (SKEW_BEHIND if skew_s >= 0 else SKEW_AHEAD).observe(abs(skew_s))
            self._fingerprints[(frame.device_id, frame.seq)] = frame.signature[:16]
        while len(self._fingerprints) > FINGERPRINTS_KEPT:
            self._fingerprints.popitem(last=False)

    def _acknowledge(self, batch: Batch) -> int:
        sent = 0
        for device_id, seen in batch.seen.items():
            if not (seen.committed or seen.duplicates or seen.refused):
                continue
            try:
                sent += len(
                    self.downlink.ack(device_id, seen.committed + seen.duplicates, seen.refused)
                )
            except Exception:
                logger.exception("could not acknowledge to %s", device_id)
        return sent

    def _hand_off(self, batch: Batch) -> None:
        if self.on_fetch is None:
            return
        for device_id, request in batch.fetches:
            try:
                self.on_fetch(device_id, request)
            except Exception:
                logger.exception("fetch hook failed for %s", device_id)

    def _screened(self, verdicts: Sequence[DeltaVerdict]) -> None:
        for v in verdicts:
            DELTAS_SCREENED.labels(v.model, v.status, v.reason or "").inc()
        if self.on_deltas is not None:
            try:
                self.on_deltas(verdicts)
            except Exception:
                logger.exception("the rounds hook failed on %d deltas", len(verdicts))

    def _write_summaries(self, *, flush: bool = False) -> None:
        """Summaries of rejections when no batch is there to carry them."""
        self.sentry.write_summaries(self.store, self.clock.now_ms(), flush=flush)

    def _prune(self) -> None:
        self._audited = 0
        self.store.audit.prune(outcome="rejected", keep=self.settings.audit_rejections_keep)
        self.store.audit.prune(outcome="alert", keep=self.settings.audit_alerts_keep)
