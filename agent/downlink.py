"""The downlink guard: verify, deduplicate, then hand each hub frame to its handlers.

Every message arriving on the device's ``down/<kind>`` topics goes through, in order
(cheap checks first, so a stranger's garbage costs little):

1. the topic parses and names this device (``identity_mismatch`` otherwise);
2. :func:`protocol.frame.decode`: size cap, layout, the kind and device id in the header
   match the topic, and the signature verifies under one of the rollout-role keys the
   caller's ``rollout_keys()`` returns *now* (the trust module rotates them);
3. the persisted downlink :class:`~protocol.replay.SeqWindow`: a seq already accepted is a
   **duplicate** and a no-op (the retained ``desired`` is redelivered on every reconnect,
   THREATS B14); one below the window is a **replay** and refused (B13);
4. the handlers registered for the kind run, in registration order; only when all of
   them returned is the seq recorded in the window (a crash in between means the frame is
   handled again on redelivery, so handlers must be idempotent; desired-state handling is
   by version, settlement by seq, both are).

:meth:`Downlink.dispatch` never raises: a handler that raises, or any other fault of ours
(the key source, a parser bug, the window store), is logged with a traceback but without
the payload, counted as ``failed``, and the next frame is handled as usual.

Refused frames are logged with the topic kind and the reason code only, never the payload,
and counted by reason (:meth:`Downlink.counters`). Device time is not checked: the seq
window decides replays, and the trust module checks expiry of what the frames carry.

Fleet topics (``fleet/root``, ``fleet/release``, ``fleet/heartbeat``) carry signed
documents, not frames: their raw bytes go to the registered fleet handlers, which verify
them (the trust module does). They are retained, so handlers see them on every reconnect.

Not thread-safe: one dispatcher at a time calls :meth:`Downlink.dispatch` (the daemon's
``downlink`` job, which :class:`Inbox` feeds: the transport's sink only queues, on a
bounded queue, so a flood is dropped and counted, THREATS B31, and never blocks paho).
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
from protocol import frame
from protocol.errors import IdentityMismatch, ProtocolError, Replayed
from protocol.frame import DEFAULT_LIMITS, Envelope, Limits
from protocol.replay import SeqWindow
from protocol.topics import DOWN_KINDS, FLEET_KINDS, Topics

logger = logging.getLogger(__name__)

DownlinkHandler = Callable[[Envelope], None]
FleetHandler = Callable[[bytes], None]
KeySource = Callable[[], Iterable[Ed25519PublicKey]]
Verdict = Literal["accepted", "duplicate", "refused", "failed", "ignored"]
EVENT_QUEUE_SIZE = 10_000


class WindowStore:
    """The downlink seq window, one row in the agent's SQLite file (own connection)."""

    def __init__(self, path: Path) -> None:
        self._lock = threading.Lock()
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
        self._db = Database(conn)
        self._db.enable_wal()
        self._db.execute("PRAGMA synchronous=FULL")
        table = self._db.table("downlink_window")
        table.create({"id": int, "window": bytes}, pk="id", if_not_exists=True)

    def load(self) -> SeqWindow:
        with self._lock:
            row = self._db.execute("SELECT window FROM downlink_window WHERE id = 1").fetchone()
        return SeqWindow() if row is None else SeqWindow.from_bytes(row[0])

    def save(self, window: SeqWindow) -> None:
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
    """Guard and dispatch table for one device's downlink and the fleet topics."""

    def __init__(
        self,
        *,
        device_id: str,
        topics: Topics,
        rollout_keys: KeySource,
        store: WindowStore,
        limits: Limits = DEFAULT_LIMITS,
    ) -> None:
        self.device_id = device_id
        self._topics = topics
        self._keys = rollout_keys
        self._store = store
        self._limits = limits
        self._window = store.load()
        self._handlers: dict[str, list[DownlinkHandler]] = {}
        self._fleet: dict[str, list[FleetHandler]] = {}
        self._counts: Counter[str] = Counter()

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

    def dispatch(self, topic: str, payload: bytes, *, retained: bool = False) -> Verdict:
        """Guard one inbound message and run its handlers; never raises."""
        try:
            route = self._topics.parse(topic)
            if route.direction == "fleet":
                return self._run_fleet(route.kind, payload)
            if route.direction != "down" or route.device_id != self.device_id:
                raise IdentityMismatch("not this device's downlink")
            envelope = frame.decode(
                payload,
                list(self._keys()),
                expect_kind=route.qualified_kind,
                expect_device=self.device_id,
                limits=self._limits,
            )
            verdict = self._window.check(envelope.header.seq)
        except ProtocolError as e:
            return self._refuse(topic, e, retained=retained)
        except Exception:  # a fault of ours (the key source, a parser): never the worker's end
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
        window = self._window.accept(envelope.header.seq)
        try:
            self._store.save(window)
        except Exception:  # handled but not recorded: handled again if redelivered
            return self._fail(topic, "handled, but its seq could not be recorded")
        self._window = window
        self._counts["accepted"] += 1
        return "accepted"

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

    def _refuse(self, topic: str, error: ProtocolError, *, retained: bool) -> Verdict:
        self._counts[f"refused.{error.reason}"] += 1
        kind = _kind(topic)
        if retained and isinstance(error, Replayed):
            logger.info("stale retained %s frame ignored (%s)", kind, error.reason)
        else:
            logger.warning("downlink %s frame refused: %s", kind, error.reason)
        return "refused"


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

    def put(self, event: LinkEvent) -> None:
        """The transport's sink (its thread): queue and wake, nothing more."""
        try:
            self._events.put_nowait(event)
        except queue.Full:
            self.dropped += 1
            logger.warning("inbound queue is full: message discarded")
        self.wake()

    def dispatch(self) -> None:
        """The ``downlink`` job: every queued event, in order; it outlives any one of them."""
        while True:
            try:
                event = self._events.get_nowait()
            except queue.Empty:
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
