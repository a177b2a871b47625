"""The retained topics the hub owns, watched: whatever else appears there is replaced.

Devices read three retained fleet documents (``fleet/root``, ``fleet/release``,
``fleet/heartbeat``) and their own retained ``down/desired``. Anyone who may publish
there (a hostile client the broker lets in, a stale tool, a second hub on the wrong data
directory) can leave a stale release list, another device's desired state or garbage in
their place. Devices refuse all of it (signatures, versions, device binding), but a
device that finds garbage where its desired state should be waits until the hub speaks
again, which may be days. So the hub watches its own topics (docs/threat-model.md):

- :class:`RetainedLedger` remembers what the hub left last on each topic (its sha256), fed
  by the fleet publisher and the downlink as they publish;
- :class:`RetainedWatch` subscribes (a link of its own, so ingest never sees these
  messages and the watch never waits behind an ingest backlog) to ``fleet/#`` and
  ``d/+/down/desired``. A message the ledger does not name is *judged* at most
  ``settle_s`` after it arrived, on the newest message of its topic, so the hub's own
  publication racing a stale echo of its previous one raises nothing. If the topic still
  holds something else, ``restore(route, payload)`` (:func:`hub.fleet.restore.restore_retained`:
  republish the current document, keep an older message that is the hub's own and still
  right, or have the watch clear a topic the hub owns nothing on) runs, and the event is
  audited as ``retained.restored``.

A flood on one topic costs at most one restore per ``restore_every_s``, every topic
together at most ``max_restores_per_s``, and audit rows at most one per topic per
minute (every restore is counted in ``edgefleet_hub_retained_restored_total``).

Judging starts once :meth:`RetainedWatch.arm` is called: the service arms it after its
first republication, so the hub does not "restore" the documents of its own previous run.
MQTT 3.1.1 delivers a message published while the watch is subscribed without the retain
flag, so a foreign message is judged alike whether it was retained or not; restoring
what was not overwritten only republishes the hub's own message.
"""

from __future__ import annotations

import hashlib
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from edgefleet.clock import Clock
from hub.metrics import RETAINED_RESTORED
from hub.store import Store
from hub.transport.mqtt import HubLink, Inbound, TlsFiles
from protocol.errors import Malformed
from protocol.topics import Route, Topics

logger = logging.getLogger(__name__)

Restored = Literal["kept", "restored", "clear", "failed"]
Restore = Callable[[Route, bytes], Restored]
"""``restore(route, payload)``: put the hub's own message back on ``route``'s topic given
the foreign ``payload`` found there: ``kept`` (it is the hub's and right after all),
``restored`` (republished), ``clear`` (the hub owns nothing there: the watch empties the
topic) or ``failed`` (try again later)."""


def digest(payload: bytes) -> str:
    return hashlib.sha256(payload).hexdigest()


class RetainedLedger:
    """What the hub left last on each retained topic. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last: dict[str, str] = {}

    def published(self, topic: str, payload: bytes) -> None:
        """The hub publishes ``payload`` retained on ``topic`` (empty: clears it)."""
        with self._lock:
            self._last[topic] = digest(payload)

    def holds(self, topic: str, payload: bytes) -> bool:
        """Whether ``payload`` is what the hub left last on ``topic``."""
        with self._lock:
            return self._last.get(topic) == digest(payload)


@dataclass
class _Topic:
    route: Route
    payload: bytes
    due: float  # monotonic time at which it is judged
    restored_at: float = -1e9


class RetainedWatch:
    """Watch the hub's retained topics through a link of its own; see the module docstring.

    Args:
        link: subscribed to :meth:`subscriptions`, feeding :attr:`inbox` (built by
            :meth:`connect`, or given by a test).
        topics: the hub's topic prefix.
        ledger: what the hub published.
        restore: the hub's repair for one topic.
        store: for the audit rows.
        clock: for the audit rows' time.
    """

    def __init__(
        self,
        link: HubLink,
        inbox: queue.Queue[Inbound],
        *,
        topics: Topics,
        ledger: RetainedLedger,
        restore: Restore,
        store: Store,
        clock: Clock,
        settle_s: float = 0.5,
        restore_every_s: float = 1.0,
        max_restores_per_s: float = 50.0,
    ) -> None:
        self.link = link
        self._inbox = inbox
        self._topics = topics
        self._ledger = ledger
        self._restore = restore
        self._store = store
        self._clock = clock
        self._settle_s = settle_s
        self._restore_every_s = restore_every_s
        self._budget_per_s = max_restores_per_s
        self._budget = max_restores_per_s
        self._budget_at = time.monotonic()
        self._pending: dict[str, _Topic] = {}
        self._audited: tuple[int, set[str]] = (-1, set())  # this minute's audited topics
        self._armed = threading.Event()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="edgefleet-retained", daemon=True)

    @staticmethod
    def subscriptions(topics: Topics) -> list[str]:
        """The filters the watch's link subscribes to."""
        return [topics.all_fleet(), f"{topics.base}/d/+/down/desired"]

    @classmethod
    def connect(
        cls,
        url: str,
        *,
        client_id: str,
        tls: TlsFiles | None,
        topics: Topics,
        ledger: RetainedLedger,
        restore: Restore,
        store: Store,
        clock: Clock,
    ) -> RetainedWatch:
        """A watch with a link of its own to ``url`` (not started).

        Raises:
            hub.errors.InvalidRequest: a bad broker URL or TLS files.
        """
        inbox: queue.Queue[Inbound] = queue.Queue(10_000)
        link = HubLink(
            url, client_id=client_id, inbox=inbox, subscriptions=cls.subscriptions(topics), tls=tls
        )
        return cls(
            link, inbox, topics=topics, ledger=ledger, restore=restore, store=store, clock=clock
        )

    def start(self) -> None:
        self._thread.start()
        self.link.start()

    def arm(self) -> None:
        """Start judging (after the hub's first republication)."""
        self._armed.set()

    def stop(self) -> None:
        self._stopping.set()
        self.link.stop()
        if self._thread.is_alive():
            self._thread.join(5.0)

    # ------------------------------------------------------------------ the thread

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                topic, payload = self._inbox.get(timeout=0.1)
            except queue.Empty:
                pass
            else:
                self._note(topic, payload)
            if self._armed.is_set():
                self._judge_due()

    def _note(self, topic: str, payload: bytes) -> None:
        if self._ledger.holds(topic, payload):
            self._pending.pop(topic, None)
            return
        try:
            route = self._topics.parse(topic)
        except Malformed:
            return  # not a topic of ours (amqtt may hand a client retained topics it never
            # subscribed to)
        if route.direction != "fleet" and (route.direction, route.kind) != ("down", "desired"):
            return
        entry = self._pending.get(topic)
        now = time.monotonic()
        if entry is None:
            self._pending[topic] = _Topic(route, payload, now + self._settle_s)
        else:  # judged on the newest message, no later than settle_s after the first
            entry.payload = payload
            entry.due = min(entry.due, now + self._settle_s)

    def _judge_due(self) -> None:
        now = time.monotonic()
        for topic, entry in list(self._pending.items()):
            if entry.due > now:
                continue
            if self._ledger.holds(topic, entry.payload):
                del self._pending[topic]
                continue
            if now - entry.restored_at < self._restore_every_s or not self._spend(now):
                entry.due = now + self._restore_every_s
                continue
            entry.restored_at = now
            try:
                outcome = self._restore(entry.route, entry.payload)
            except Exception:  # a bug of ours: the watch keeps watching
                logger.exception("restoring %s failed", topic)
                outcome = "failed"
            if outcome == "clear" and not self._clear(topic):
                outcome = "failed"
            if outcome == "failed":
                entry.due = now + self._restore_every_s
                continue
            del self._pending[topic]
            if outcome == "kept":
                self._ledger.published(topic, entry.payload)
            else:
                self._record(topic, entry, outcome)

    def _clear(self, topic: str) -> bool:
        """Empty a retained topic (an empty retained message deletes it)."""
        self._ledger.published(topic, b"")
        return self.link.publish(topic, b"", qos=1, retain=True)

    def _spend(self, now: float) -> bool:
        self._budget = min(
            self._budget_per_s, self._budget + (now - self._budget_at) * self._budget_per_s
        )
        self._budget_at = now
        if self._budget < 1:
            return False
        self._budget -= 1
        return True

    def _record(self, topic: str, entry: _Topic, outcome: Restored) -> None:
        done = "cleared" if outcome == "clear" else outcome
        RETAINED_RESTORED.labels(entry.route.kind, done).inc()
        now_ms = self._clock.now_ms()
        minute = now_ms // 60_000
        logger.warning(
            "retained %s held a message the hub did not publish (%d bytes): %s",
            topic,
            len(entry.payload),
            done,
        )
        if self._audited[0] != minute:
            self._audited = (minute, set())
        if topic in self._audited[1]:
            return
        self._audited[1].add(topic)
        self._store.audit.append(
            at=now_ms,
            actor="system",
            action="retained.restored",
            target=topic,
            reason="foreign_message" if entry.payload else "emptied",
            detail={
                "kind": entry.route.kind,
                "device": entry.route.device_id,
                "done": done,
                "found_sha256": digest(entry.payload),
                "found_bytes": len(entry.payload),
            },
        )
