"""The persistent outbox: every uplink frame waits here until the *hub* acknowledges it.

Life of a message::

    enqueue ──> stored (seq allocated, frame signed, committed to SQLite)
                  │  due() / mark_sent()        resent after the ack timeout (doubling, 8x cap)
                  v                             or at once after a reconnect (rewind())
                in flight ──────────────────────┐
                  │  settle(HubAck)             │
                  v                             v
                deleted: committed or refused by the hub; never on the broker's PUBACK

**Seqs and frames at enqueue.** :meth:`Outbox.enqueue` allocates the next seq from a
counter kept in the same SQLite file, in the same transaction as the row, and stores the
signed frame (``sent_at`` = enqueue time, a random 16-byte nonce). A resend publishes the
identical bytes, so the hub deduplicates by seq (threat-model B14) and never sees the same
seq with two payloads (T10).

**Order and window.** Frames go out oldest first. At most ``max_in_flight`` frames are
sent but unacknowledged, and only seqs below ``oldest unsettled + WIDTH/2`` are sent, so
the hub's replay window (:data:`protocol.replay.WIDTH`) always still covers every frame
the agent may resend.

**Durability.** One SQLite file in the state dir, WAL, ``synchronous=FULL`` (power loss,
threat-model B33); :meth:`enqueue` returns only after its transaction committed, so a kill -9
at any point loses nothing enqueued. Which frames are in flight, and on which connection
each went out, is kept in memory only: after a restart everything unacknowledged is simply
sent again, after a reconnect what went out on an earlier connection.

**Drop policy.** The outbox is bounded by count and bytes (``max_messages`` /
``max_bytes``, the soft bound). Past the soft bound, the oldest ``telemetry`` frames are
dropped first, then the oldest ``data`` windows; ``state``, ``delta``, ``ack`` and
``hello`` are kept until the hard cap (twice the soft bound), past which the oldest frame
of any kind is dropped. A dropped frame may already have reached the hub (it was in
flight); it is counted either way. Every drop increments a persisted ``dropped`` counter,
which telemetry reports (``outbox_dropped``), and :meth:`take_drop_flag` lets the next
state report raise the ``outbox_dropped`` flag.

**The one exception: ``fetch``.** Download chunk requests are transient: they get a fresh
seq and a signed frame from :meth:`seal` and are published directly, never stored (the
downloader retries on its own); :meth:`enqueue` refuses them. The last will uses
:meth:`seal` the same way.

The outbox does not publish anything itself: the daemon asks :meth:`due` what to send and
reports back with :meth:`mark_sent`. Those two and :meth:`rewind` keep the in-flight book
and must be called from one drainer thread; everything else is safe from any thread.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlite_utils import Database

from agent.errors import OutboxError
from agent.identity import Identity
from protocol import frame
from protocol.frame import DEFAULT_LIMITS, Limits, Message
from protocol.messages import HubAck
from protocol.replay import WIDTH

logger = logging.getLogger(__name__)

HARD_CAP_FACTOR = 2
"""The hard cap is this many times the soft bound (count and bytes)."""
BACKOFF_CAP_FACTOR = 8
"""A frame's resend timeout doubles per attempt up to this many ack timeouts."""

DROP_ORDER = {"telemetry": 0, "data": 1}
"""Kinds dropped past the soft bound, first to last; every other kind waits for the hard cap."""
KEPT = 9
TRANSIENT_KINDS = frozenset({"fetch"})


@dataclass(frozen=True)
class OutboxLimits:
    """Bounds of one outbox (units in the names).

    Raises:
        ValueError: on construction, for ``max_in_flight`` outside [1, WIDTH/2) or a
            non-positive bound.
    """

    max_messages: int = 10_000
    max_bytes: int = 64 * 1024 * 1024
    max_in_flight: int = 1024
    ack_timeout_ms: int = 10_000

    def __post_init__(self) -> None:
        if not 1 <= self.max_in_flight < WIDTH // 2:
            raise ValueError(f"max_in_flight must be in [1, {WIDTH // 2})")
        if min(self.max_messages, self.max_bytes, self.ack_timeout_ms) < 1:
            raise ValueError("outbox bounds and the ack timeout must be positive")


@dataclass(frozen=True)
class Sealed:
    """A signed frame ready to publish on ``up/<kind>``."""

    seq: int
    kind: str
    frame: bytes


@dataclass(frozen=True)
class Settlement:
    """What one :class:`~protocol.messages.HubAck` removed: ``(seq, kind)`` pairs, and
    ``(seq, kind, reason)`` for the refused ones."""

    committed: tuple[tuple[int, str], ...]
    refused: tuple[tuple[int, str, str], ...]


@dataclass(frozen=True)
class OutboxStats:
    depth: int
    size_bytes: int
    in_flight: int
    dropped: int
    refused: int
    # since this outbox was opened (not persisted): a simulator's sent / delivered counts
    enqueued: int = 0
    committed: int = 0


@dataclass
class _Flight:
    attempts: int
    due_ms: int
    connection: int = 0


class Outbox:
    """A device's outbox in ``path`` (created on first use), signing with ``identity``.

    Thread-safe: producers, the drain loop and the ack handler may call it concurrently.
    """

    def __init__(
        self,
        path: Path,
        identity: Identity,
        limits: OutboxLimits | None = None,
        *,
        frame_limits: Limits = DEFAULT_LIMITS,
    ) -> None:
        self.path = path
        self.limits = limits or OutboxLimits()
        self._identity = identity
        self._frame_limits = frame_limits
        self._lock = threading.RLock()
        self._flights: dict[int, _Flight] = {}
        self._cursor = 0
        self._enqueued = self._committed = 0
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
        self._db = Database(conn)
        self._db.enable_wal()
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.table("outbox").create(
            {"seq": int, "kind": str, "cls": int, "frame": bytes, "size": int, "created_ms": int},
            pk="seq",
            if_not_exists=True,
        )
        self._db.table("outbox").create_index(["cls", "seq", "size"], if_not_exists=True)
        meta = self._db.table("outbox_meta")
        meta.create({"key": str, "value": int}, pk="key", if_not_exists=True)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # ------------------------------------------------------------------ producing

    def enqueue(self, message: Message, now_ms: int) -> int:
        """Store ``message`` as a signed frame with the next seq; return the seq.

        Returns only after the row and the seq counter are committed together. May drop
        older frames to stay within bounds (see the module docstring).

        Raises:
            OutboxError: ``message`` is of a transient kind (``fetch``): use :meth:`seal`.
            Oversize: the frame would exceed the frame size limit.
            Malformed: a header field out of range.
        """
        kind = message.KIND
        if kind in TRANSIENT_KINDS:
            raise OutboxError(f"{kind} messages are transient: seal and publish them directly")
        with self._lock:
            with self._transaction():
                seq = self._allocate()
                data = self._encode(message, seq, now_ms)
                self._db.execute(
                    "INSERT INTO outbox (seq, kind, cls, frame, size, created_ms)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    [seq, kind, DROP_ORDER.get(kind, KEPT), data, len(data), now_ms],
                )
                dropped = self._enforce_bounds()
            self._enqueued += 1
            for victim in dropped:
                self._flights.pop(victim, None)
        if dropped:
            logger.warning("outbox over its bound: dropped %d frame(s), oldest first", len(dropped))
        return seq

    def seal(self, message: Message, now_ms: int) -> Sealed:
        """Allocate a seq (persisted) and sign ``message`` without storing it.

        For transient frames (``fetch``) and the last will. The seq is never reused; if
        the frame is never published, the hub simply sees a gap.

        Raises:
            Oversize: the frame would exceed the frame size limit.
            Malformed: a header field out of range.
        """
        with self._lock:
            with self._transaction():
                seq = self._allocate()
            return Sealed(seq, message.KIND, self._encode(message, seq, now_ms))

    # ------------------------------------------------------------------ draining

    def due(self, now_ms: int, limit: int = 256) -> list[Sealed]:
        """Frames to publish now, oldest first, at most ``limit``.

        Frames in flight whose ack timeout passed come first, then frames never sent in
        this session while fewer than ``max_in_flight`` are in flight and their seq is
        within ``WIDTH/2`` of the oldest unsettled one.
        """
        with self._lock:
            oldest = self._scalar("SELECT min(seq) FROM outbox")
            if oldest is None:
                return []
            horizon = oldest + WIDTH // 2
            late = sorted(s for s, f in self._flights.items() if f.due_ms <= now_ms)[:limit]
            out = self._frames(late)
            missing = set(late) - {s.seq for s in out}
            for seq in missing:
                self._flights.pop(seq, None)
            budget = min(limit - len(out), self.limits.max_in_flight - len(self._flights))
            if budget > 0:
                rows = self._db.execute(
                    "SELECT seq, kind, frame FROM outbox WHERE seq > ? AND seq < ?"
                    " ORDER BY seq LIMIT ?",
                    [self._cursor, horizon, budget],
                ).fetchall()
                out.extend(Sealed(*row) for row in rows)
            return out

    def mark_sent(self, seq: int, now_ms: int, connection: int = 0) -> None:
        """Record that ``seq`` was handed to the broker on ``connection`` (the transport's
        count of connections): it waits for an ack from now on.

        A seq the hub already settled (its ack can overtake this call) is not tracked.
        """
        with self._lock:
            self._cursor = max(self._cursor, seq)
            if not self.contains(seq):
                return
            flight = self._flights.get(seq) or _Flight(0, 0)
            flight.attempts += 1
            flight.connection = connection
            timeout = self.limits.ack_timeout_ms * 2 ** min(flight.attempts - 1, 16)
            flight.due_ms = now_ms + min(timeout, BACKOFF_CAP_FACTOR * self.limits.ack_timeout_ms)
            self._flights[seq] = flight

    def rewind(self, before_connection: int) -> None:
        """Make every frame in flight that went out on a connection before
        ``before_connection`` due again now, with a fresh ack timeout: the broker may have
        lost it with that connection. A frame that went out on a later one (the connection
        up now, before its news reached the caller) keeps its clock, so a reconnect never
        sends the same frame twice on one connection."""
        with self._lock:
            for flight in self._flights.values():
                if flight.connection < before_connection:
                    flight.attempts, flight.due_ms = 0, 0

    def settle(self, ack: HubAck) -> Settlement:
        """Delete what the hub committed or refused for good; return what was removed.

        Seqs the outbox does not hold (already settled, dropped, or a last will) are
        ignored. Refused frames are logged at WARNING with the hub's reason and counted.
        """
        committed: list[tuple[int, str]] = []
        refused: list[tuple[int, str, str]] = []
        with self._lock:
            with self._transaction():
                for first, last in ack.committed:
                    committed.extend(
                        self._db.execute(
                            "DELETE FROM outbox WHERE seq BETWEEN ? AND ? RETURNING seq, kind",
                            [first, last],
                        ).fetchall()
                    )
                for seq, reason in ack.refused:
                    for row in self._db.execute(
                        "DELETE FROM outbox WHERE seq = ? RETURNING seq, kind", [seq]
                    ).fetchall():
                        refused.append((row[0], row[1], reason))
                if refused:
                    self._add("refused", len(refused))
            self._committed += len(committed)
            for seq in [c[0] for c in committed] + [r[0] for r in refused]:
                self._flights.pop(seq, None)
        for seq, kind, reason in refused:
            logger.warning("hub refused %s frame seq %d: %s", kind, seq, reason)
        return Settlement(tuple(committed), tuple(refused))

    # ------------------------------------------------------------------ inspecting

    def contains(self, seq: int) -> bool:
        with self._lock:
            return self._scalar("SELECT 1 FROM outbox WHERE seq = ?", [seq]) is not None

    def stats(self) -> OutboxStats:
        with self._lock:
            depth, size = self._totals()
            return OutboxStats(
                depth,
                size,
                len(self._flights),
                self._get("dropped"),
                self._get("refused"),
                self._enqueued,
                self._committed,
            )

    def opened_counts(self) -> tuple[int, int]:
        """``(enqueued, committed)`` since this outbox was opened; readable after
        :meth:`close` too (a simulator adds up the counts of an agent it restarted)."""
        with self._lock:
            return self._enqueued, self._committed

    def sent(self) -> int:
        """How many seqs this outbox has given out: every message it ever took."""
        with self._lock:
            return max(0, self._get("next_seq") - 1)

    def take_drop_flag(self) -> bool:
        """True once after any drop: the caller raises ``outbox_dropped`` in a state report."""
        with self._lock, self._transaction():
            dropped = self._get("dropped")
            if dropped <= self._get("dropped_flagged"):
                return False
            self._set("dropped_flagged", dropped)
            return True

    # ------------------------------------------------------------------ internals

    def _encode(self, message: Message, seq: int, now_ms: int) -> bytes:
        return frame.encode(
            message,
            device_id=self._identity.device_id,
            seq=seq,
            sent_at=now_ms,
            nonce=os.urandom(16),
            key=self._identity.key,
            limits=self._frame_limits,
        )

    def _enforce_bounds(self) -> list[int]:
        count, size = self._totals()
        soft = (self.limits.max_messages, self.limits.max_bytes)
        hard = (soft[0] * HARD_CAP_FACTOR, soft[1] * HARD_CAP_FACTOR)
        victims: list[int] = []
        passes = [(soft, cls, cls) for cls in sorted(DROP_ORDER.values())] + [(hard, 0, KEPT)]
        for bound, low, high in passes:
            while count > bound[0] or size > bound[1]:
                row = self._db.execute(
                    "SELECT seq, size FROM outbox WHERE cls BETWEEN ? AND ? ORDER BY seq LIMIT 1",
                    [low, high],
                ).fetchone()
                if row is None:
                    break
                self._db.execute("DELETE FROM outbox WHERE seq = ?", [row[0]])
                victims.append(row[0])
                count, size = count - 1, size - row[1]
        if victims:
            self._add("dropped", len(victims))
        return victims

    def _allocate(self) -> int:
        seq = self._get("next_seq") or 1
        self._set("next_seq", seq + 1)
        return seq

    def _totals(self) -> tuple[int, int]:
        count, size = self._db.execute("SELECT count(*), total(size) FROM outbox").fetchone()
        return int(count), int(size)

    def _get(self, key: str) -> int:
        value = self._scalar("SELECT value FROM outbox_meta WHERE key = ?", [key])
        return int(value or 0)

    def _set(self, key: str, value: int) -> None:
        self._db.execute(
            "INSERT INTO outbox_meta (key, value) VALUES (?, ?)"
            " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            [key, value],
        )

    def _add(self, key: str, delta: int) -> None:
        self._set(key, self._get(key) + delta)

    def _scalar(self, sql: str, params: list[Any] | None = None) -> Any:
        row = self._db.execute(sql, params or []).fetchone()
        return None if row is None else row[0]

    def _frames(self, seqs: list[int]) -> list[Sealed]:
        query = "SELECT seq, kind, frame FROM outbox WHERE seq = ?"
        rows = (self._db.execute(query, [seq]).fetchone() for seq in seqs)
        return [Sealed(*row) for row in rows if row is not None]

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        """BEGIN IMMEDIATE: take the write lock up front, so another process writing the
        same file (a test pre-filling it) waits instead of failing mid-transaction."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")
