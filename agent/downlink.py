"""The downlink guard: verify, deduplicate, then hand each hub frame to its handlers.

Every message arriving on the device's ``down/<kind>`` topics goes through, in order
(cheap checks first, so a stranger's garbage costs little):

1. the topic parses and names this device (``identity_mismatch`` otherwise);
2. :func:`protocol.frame.decode`: size cap, layout, the kind and device id in the header
   match the topic, and the signature verifies under one of the rollout-role keys the
   caller's ``rollout_keys()`` returns *now* (the trust module rotates them);
3. the persisted downlink :class:`~protocol.replay.DownlinkWindow` of the current **key
   epoch** (the rollout keys that verified the frame): a seq already accepted is a
   **duplicate** and a no-op (the retained ``desired`` is redelivered on every reconnect);
   one more than a minute older than the newest accepted is a **replay** and refused; one
   stamped more than a day ahead of trusted time (``now_ms``: the
   clock lifted to the time floor the heartbeats attest) is refused as ``seq_ahead``,
   so no frame, not even one signed with a stolen rollout key, moves the window where the
   hub's seqs cannot follow. A root rotation that changes the rollout keys changes the
   epoch and starts a fresh window (the recovery path for a stolen key, as in TUF;
   docs/decisions.md, "Downlink sequence numbers");
4. the handlers registered for the kind run, in registration order; only when all of
   them returned is the seq recorded in the window (a crash in between means the frame is
   handled again on redelivery, so handlers must be idempotent; desired-state handling is
   by version, settlement by seq, both are).

:meth:`Downlink.dispatch` never raises: a handler that raises, or any other fault of ours
(the key source, a parser bug, the window store), is logged with a traceback but without
the payload, counted as ``failed``, and the next frame is handled as usual.

Refused frames are counted by reason (:meth:`Downlink.counters`) and logged with the
topic kind and the reason code only, never the payload, and summarised: the first refusal
of each reason in an interval (``log_every_s``, 60 s) is a WARNING, the rest of the
interval one line per reason with their count (a flood of 20,000 junk frames once wrote
16,648 warnings). Device time is not checked beyond the seq's stamp: the window decides
replays, and the trust module checks expiry of what the frames carry.

**A device that cannot hear the hub says so.** Frames that verify but are refused by the
window are the hub's own (or a key holder's): when :data:`BLOCKED_AFTER` of them in a row,
live ones, were refused with nothing accepted in between, :meth:`Downlink.problem` says so
(the trust store turns it into the ``downlink_refused`` flag of the state report, and an
install that starves names it as the cause instead of ``slow_retrieval``), logged once at
ERROR, until a frame is accepted again.

Fleet topics (``fleet/root``, ``fleet/release``, ``fleet/heartbeat``) carry signed
documents, not frames: their raw bytes go to the registered fleet handlers, which verify
them (the trust module does). They are retained, so handlers see them on every reconnect.

Not thread-safe: one dispatcher at a time calls :meth:`Downlink.dispatch` (the daemon's
``downlink`` job, which :class:`Inbox` feeds: the transport's sink only queues, on a
bounded queue, so a flood is dropped and counted, threat-model B31, and never blocks
paho).
"""

from __future__ import annotations

import logging
import queue
import sqlite3
import threading
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Literal

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlite_utils import Database

from agent.transport import Connected, LinkEvent
from edgefleet.clock import SystemClock
from protocol import frame, keys
from protocol.errors import IdentityMismatch, Malformed, ProtocolError, Replayed, Stale
from protocol.frame import DEFAULT_LIMITS, Envelope, Limits
from protocol.replay import DownlinkWindow, key_epoch
from protocol.topics import DOWN_KINDS, FLEET_KINDS, Topics

logger = logging.getLogger(__name__)

DownlinkHandler = Callable[[Envelope], None]
FleetHandler = Callable[[bytes], None]
KeySource = Callable[[], Iterable[Ed25519PublicKey]]
Verdict = Literal["accepted", "duplicate", "refused", "failed", "ignored"]
EVENT_QUEUE_SIZE = 10_000
BLOCKED_AFTER = 3
"""Authentic live frames refused by the window in a row before the device says it cannot
hear the hub."""
LOG_EVERY_S = 60.0


class WindowStore:
    """The downlink window, one row in the agent's SQLite file (own connection).

    A window an older agent stored (a counter-based ``SeqWindow``) reads as a fresh one:
    the hub's time-ordered seqs lie far above anything it held.
    """

    def __init__(self, path: Path) -> None:
        self._lock = threading.Lock()
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
        self._db = Database(conn)
        self._db.enable_wal()
        self._db.execute("PRAGMA synchronous=FULL")
        table = self._db.table("downlink_window")
        table.create({"id": int, "window": bytes}, pk="id", if_not_exists=True)

    def load(self) -> DownlinkWindow:
        with self._lock:
            row = self._db.execute("SELECT window FROM downlink_window WHERE id = 1").fetchone()
        if row is None:
            return DownlinkWindow()
        try:
            return DownlinkWindow.from_bytes(row[0])
        except Malformed:
            logger.info("downlink window of an older agent replaced by a fresh one")
            return DownlinkWindow()

    def save(self, window: DownlinkWindow) -> None:
        with self._lock:
            self._db.execute(
                "INSERT INTO downlink_window (id, window) VALUES (1, ?)"
                " ON CONFLICT (id) DO UPDATE SET window = excluded.window",
                [window.to_bytes()],
            )

    def close(self) -> None:
        with self._lock:
            self._db.close()


class Downlink:
    """Guard and dispatch table for one device's downlink and the fleet topics.

    Args:
        device_id, topics: whose downlink, under which prefix.
        rollout_keys: the keys every frame must verify under, asked per frame.
        store: where the window persists.
        now_ms: trusted time for the window's ``seq_ahead`` bound (the trust store's clock
            lifted to its time floor); default the system clock.
        limits: frame size caps.
        log_every_s: the refusal log's summary interval.
    """

    def __init__(
        self,
        *,
        device_id: str,
        topics: Topics,
        rollout_keys: KeySource,
        store: WindowStore,
        now_ms: Callable[[], int] | None = None,
        limits: Limits = DEFAULT_LIMITS,
        log_every_s: float = LOG_EVERY_S,
    ) -> None:
        self.device_id = device_id
        self._topics = topics
        self._keys = rollout_keys
        self._store = store
        self._now_ms = now_ms or SystemClock().now_ms
        self._limits = limits
        self._window = store.load()
        self._epochs: tuple[tuple[Ed25519PublicKey, ...], str] = ((), key_epoch(()))
        self._handlers: dict[str, list[DownlinkHandler]] = {}
        self._fleet: dict[str, list[FleetHandler]] = {}
        self._counts: Counter[str] = Counter()
        self._log = RefusalLog(log_every_s)
        self._blocked = 0  # authentic live frames the window refused since one was accepted
        self._blocked_reason = ""

    def register(self, kind: str, handler: DownlinkHandler) -> None:
        """Call ``handler(envelope)`` for every new, verified ``down/<kind>`` frame.

        Raises:
            ValueError: ``kind`` is not a downlink kind.
        """
        if kind not in DOWN_KINDS:
            raise ValueError(f"{kind!r} is not a downlink kind ({', '.join(sorted(DOWN_KINDS))})")
        self._handlers.setdefault(kind, []).append(handler)

    def register_fleet(self, kind: str, handler: FleetHandler) -> None:
        """Call ``handler(raw_bytes)`` for every message on ``fleet/<kind>`` (unverified).

        Raises:
            ValueError: ``kind`` is not a fleet kind.
        """
        if kind not in FLEET_KINDS:
            raise ValueError(f"{kind!r} is not a fleet kind ({', '.join(sorted(FLEET_KINDS))})")
        self._fleet.setdefault(kind, []).append(handler)

    def counters(self) -> dict[str, int]:
        """Frames by outcome: accepted, duplicate, failed, and ``refused.<reason>``."""
        return dict(self._counts)

    @property
    def window(self) -> DownlinkWindow:
        """The window as last persisted (its key epoch, high seq and recent seqs)."""
        return self._window

    def problem(self) -> str | None:
        """Why this device cannot hear the hub, or None while it can (module docstring)."""
        if self._blocked < BLOCKED_AFTER:
            return None
        return (
            f"downlink_refused: {self._blocked} hub frames in a row refused by the replay "
            f"window ({self._blocked_reason}); a root rotation of the rollout key resets it"
        )

    def flush_log(self) -> None:
        """Write the refusal summaries that are due (the downlink job calls it)."""
        self._log.flush(self._now_ms())

    def dispatch(self, topic: str, payload: bytes, *, retained: bool = False) -> Verdict:
        """Guard one inbound message and run its handlers; never raises."""
        try:
            route = self._topics.parse(topic)
            if route.direction == "fleet":
                return self._run_fleet(route.kind, payload)
            if route.direction != "down" or route.device_id != self.device_id:
                raise IdentityMismatch("not this device's downlink")
            rollout = tuple(self._keys())
            envelope = frame.decode(
                payload,
                list(rollout),
                expect_kind=route.qualified_kind,
                expect_device=self.device_id,
                limits=self._limits,
            )
        except ProtocolError as e:
            return self._refuse(topic, e, retained=retained)
        except Exception:  # a fault of ours (the key source, a parser): never the worker's end
            return self._fail(topic, "could not be checked")
        try:
            window = self._window.for_epoch(self._epoch(rollout))
            now_ms = self._now_ms()
            verdict = window.check(envelope.header.seq, now_ms=now_ms)
        except ProtocolError as e:
            return self._refuse(topic, e, retained=retained, authentic=True)
        except Exception:  # a fault of ours (the clock, the window): never the worker's end
            return self._fail(topic, "could not be checked")
        if verdict == "duplicate":
            self._counts["duplicate"] += 1
            logger.debug("duplicate %s seq %d ignored", route.kind, envelope.header.seq)
            return "duplicate"
        for handler in self._handlers.get(route.kind, []):
            try:
                handler(envelope)
            except Exception:
                self._counts["failed"] += 1
                logger.exception("%s handler failed on seq %d", route.kind, envelope.header.seq)
                return "failed"
        window = window.accept(envelope.header.seq, now_ms=now_ms)
        try:
            self._store.save(window)
        except Exception:  # handled but not recorded: handled again if redelivered
            return self._fail(topic, "handled, but its seq could not be recorded")
        if self._window.epoch and window.epoch != self._window.epoch:
            logger.info("rollout keys rotated: a fresh downlink window")
        self._window = window
        self._counts["accepted"] += 1
        if self._blocked >= BLOCKED_AFTER:
            logger.warning("hub frames are accepted again after %d refused", self._blocked)
        self._blocked = 0
        return "accepted"

    def _epoch(self, rollout: tuple[Ed25519PublicKey, ...]) -> str:
        cached, epoch = self._epochs
        if rollout != cached:
            epoch = key_epoch(keys.keyid(key) for key in rollout)
            self._epochs = rollout, epoch
        return epoch

    def _run_fleet(self, kind: str, payload: bytes) -> Verdict:
        handlers = self._fleet.get(kind, [])
        for handler in handlers:
            try:
                handler(payload)
            except Exception:
                self._counts["failed"] += 1
                logger.exception("fleet %s handler failed", kind)
                return "failed"
        return "accepted" if handlers else "ignored"

    def _fail(self, topic: str, what: str) -> Verdict:
        self._counts["failed"] += 1
        logger.exception("downlink %s frame %s", _kind(topic), what)
        return "failed"

    def _refuse(
        self, topic: str, error: ProtocolError, *, retained: bool, authentic: bool = False
    ) -> Verdict:
        self._counts[f"refused.{error.reason}"] += 1
        kind = _kind(topic)
        if retained and isinstance(error, Replayed):
            logger.info("stale retained %s frame ignored (%s)", kind, error.reason)
            return "refused"
        self._log.refused(kind, error.reason, self._now_ms())
        if authentic and not retained and isinstance(error, Replayed | Stale):
            self._blocked += 1
            self._blocked_reason = f"{error.reason}: {error}"[:200]
            if self._blocked == BLOCKED_AFTER:
                logger.error("this device cannot hear the hub: %s", self.problem())
        return "refused"


class RefusalLog:
    """Refused frames, logged without drowning the log: the first of each reason per
    interval at WARNING, then one summary line per reason with the count."""

    def __init__(self, every_s: float) -> None:
        self._every_ms = int(every_s * 1000)
        self._started: int | None = None
        self._more: Counter[tuple[str, str]] = Counter()
        self._said: set[str] = set()

    def refused(self, kind: str, reason: str, now_ms: int) -> None:
        self.flush(now_ms)
        if self._started is None:
            self._started = now_ms
        if reason in self._said:
            self._more[(reason, kind)] += 1
            return
        self._said.add(reason)
        logger.warning(
            "downlink %s frame refused: %s (more refusals are summarised every %d s)",
            kind,
            reason,
            self._every_ms // 1000,
        )

    def flush(self, now_ms: int) -> None:
        """Summarise the interval once it is over, and start the next."""
        if self._started is None or now_ms - self._started < self._every_ms:
            return
        by_reason: Counter[str] = Counter()
        kinds: dict[str, set[str]] = {}
        for (reason, kind), count in self._more.items():
            by_reason[reason] += count
            kinds.setdefault(reason, set()).add(kind)
        for reason, count in sorted(by_reason.items()):
            logger.warning(
                "downlink: %d more frames refused as %s in the last %d s (%s)",
                count,
                reason,
                (now_ms - self._started) // 1000,
                ", ".join(sorted(kinds[reason])),
            )
        self._started, self._more, self._said = None, Counter(), set()


class Inbox:
    """The transport's events, queued for the ``downlink`` job; see the module docstring.

    Args:
        downlink: the guard every inbound frame goes through.
        on_connected: called (in the job) when a connection came up.
    """

    def __init__(
        self, downlink: Downlink, on_connected: Callable[[], None], size: int = EVENT_QUEUE_SIZE
    ) -> None:
        self._downlink = downlink
        self._on_connected = on_connected
        self._events: queue.Queue[LinkEvent] = queue.Queue(size)
        self.wake: Callable[[], None] = lambda: None
        """Asks for a :meth:`dispatch` run soon; the daemon sets it to its job's."""
        self.dropped = 0
        self._streak = 0  # discarded since the queue last drained
        self._streak_lock = threading.Lock()

    def put(self, event: LinkEvent) -> None:
        """The transport's sink (its thread): queue and wake, nothing more. A flood is
        discarded (threat-model B31) with one log line when it starts and one count when
        the job drains the queue, never a line per message."""
        try:
            self._events.put_nowait(event)
        except queue.Full:
            with self._streak_lock:
                self.dropped += 1
                self._streak += 1
                first = self._streak == 1
            if first:
                logger.warning("inbound queue is full: discarding messages until it drains")
        self.wake()

    def dispatch(self) -> None:
        """The ``downlink`` job: every queued event, in order; it outlives any one of them."""
        with self._streak_lock:
            streak, self._streak = self._streak, 0
        if streak:
            logger.warning("inbound queue was full: %d messages discarded", streak)
        while True:
            try:
                event = self._events.get_nowait()
            except queue.Empty:
                self._downlink.flush_log()
                return
            try:
                if isinstance(event, Connected):
                    self._on_connected()
                else:
                    self._downlink.dispatch(event.topic, event.payload, retained=event.retained)
            except Exception:  # no payload logged
                logger.exception("downlink event not handled; the job carries on")


def _kind(topic: str) -> str:
    """The last topic level, cut short: all a log line says about a frame."""
    return topic.rsplit("/", 1)[-1][:32]
