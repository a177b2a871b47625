"""Hub → device frames: sign with the rollout role key, number, and publish.

Every downlink frame (``down.ack`` from ingest; ``down.desired``, ``down.chunk`` and
``down.nudge`` from the modules that own them) goes through :meth:`Downlink.send`, which

1. refuses to publish to a device that is revoked or unknown to the store (a revoked
   device hears nothing more from the hub, not even acks);
2. numbers the frame with a **time-ordered seq** (:func:`protocol.replay.downlink_seq`):
   the clock in milliseconds, then a per-process counter within the millisecond, then
   this publisher's **slot** (its own 8 bits, taken once from the store's ``down_seq``
   counter). Seqs increase within a process and never collide between the processes
   publishing at the same time (the hub, a CLI run beside it, later hub replicas), and
   no process can run ahead of the others: whatever runs beside the hub numbers within
   milliseconds of it, so no device's window is pushed past the hub's seqs (the old
   scheme reserved blocks of 1,000 from a shared counter, and five CLI runs beside a
   hub stranded a device: docs/decisions.md, "Downlink sequence numbers");
3. signs the frame with the hub's **rollout** private key (agents check down frames
   against the rollout role keys in their trusted root; :meth:`Downlink.set_key` swaps
   it when the key ring rotates) and publishes it at QoS 1;
4. tells the retained ledger what it left on a retained topic (``down/desired``), so the
   watch (:mod:`hub.transport.retained`) can tell the hub's own message from another's.

The agent deduplicates by seq, so a frame published twice is harmless. A hub whose clock
is stepped back by more than a minute across a restart is refused by devices until its
clock has caught up (their window reaches back one minute); a device says so in its state
report (``downlink_refused``).

This module does not read keys, retry failed publishes, or clear retained messages.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterable
from typing import Final, Protocol

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgefleet.clock import Clock
from hub.metrics import DOWNLINK_DROPPED, DOWNLINK_SENT
from hub.store import Store
from hub.store.rows import Counter
from hub.transport.retained import RetainedLedger
from protocol import frame
from protocol.errors import Malformed
from protocol.frame import DEFAULT_LIMITS, Limits, Message
from protocol.messages import HubAck
from protocol.replay import downlink_seq
from protocol.topics import Topics

logger = logging.getLogger(__name__)

SEQ_COUNTER: Final[Counter] = "down_seq"
"""Counts downlink publishers ever started; each takes the next value as its slot."""
SLOTS = 256
MAX_ACK_ENTRIES = 4096  # HubAck's own cap on committed ranges + refused entries


class Publisher(Protocol):
    """What the downlink publishes through (``hub.transport.mqtt.HubLink`` in the service)."""

    def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> bool:
        """Hand one message to the broker; False if it could not."""
        ...


class Downlink:
    """Signs and publishes downlink frames with time-ordered seqs; see the module docstring.

    Args:
        store: for this publisher's slot and device status.
        publisher: the MQTT link.
        topics: the topic prefix in use.
        key: the rollout role's private key (:meth:`set_key` replaces it).
        clock: for seqs and ``sent_at``.
        limits: frame size caps.
        ledger: told of every retained frame published (None: nobody watches).
    """

    def __init__(
        self,
        store: Store,
        publisher: Publisher,
        topics: Topics,
        key: Ed25519PrivateKey,
        clock: Clock,
        *,
        limits: Limits = DEFAULT_LIMITS,
        ledger: RetainedLedger | None = None,
    ) -> None:
        self._store = store
        self._publisher = publisher
        self._topics = topics
        self._key = key
        self._clock = clock
        self._limits = limits
        self.ledger = ledger
        self.slot = store.counters.bump(SEQ_COUNTER) % SLOTS
        self._lock = threading.Lock()
        self._units = 0  # the last (ms << 8 | counter) this process used

    def set_key(self, key: Ed25519PrivateKey) -> None:
        """Sign every frame from now on with ``key`` (the key ring rotated the rollout key)."""
        with self._lock:
            self._key = key

    def next_seq(self) -> int:
        """A downlink seq above every seq this process used, stamped with the clock."""
        with self._lock:
            self._units = max(self._units + 1, self._clock.now_ms() << 8)
            return downlink_seq(self._units >> 8, (self._units & 0xFF) << 8 | self.slot)

    def send(self, device_id: str, message: Message, *, retain: bool = False) -> int | None:
        """Sign ``message`` for ``device_id`` and publish it on its ``down/<kind>`` topic.

        Returns:
            The seq used, or None when nothing was published (revoked or unknown
            device, or the link is down; counted in ``edgefleet_hub_downlink_dropped``).

        Raises:
            protocol.errors.Oversize: the frame would exceed the frame size cap.
            protocol.errors.Malformed: ``device_id`` is not a valid id, or ``message``
                is not a downlink message.
        """
        if message.DIRECTION != "down":
            raise Malformed(f"{message.qualified_kind()} is not a downlink message")
        topic = self._topics.down(device_id, message.KIND)
        status = self._store.devices.status(device_id)
        if status is None or status == "revoked":
            DOWNLINK_DROPPED.labels("revoked" if status else "unknown_device").inc()
            return None
        seq = self.next_seq()
        payload = frame.encode(
            message,
            device_id=device_id,
            seq=seq,
            sent_at=self._clock.now_ms(),
            nonce=os.urandom(16),
            key=self._key,
            limits=self._limits,
        )
        if retain and self.ledger is not None:
            self.ledger.published(topic, payload)  # before the echo can reach the watch
        if not self._publisher.publish(topic, payload, qos=1, retain=retain):
            DOWNLINK_DROPPED.labels("not_connected").inc()
            return None
        DOWNLINK_SENT.labels(message.KIND).inc()
        return seq

    def ack(
        self,
        device_id: str,
        committed: Iterable[int],
        refused: Iterable[tuple[int, str]] = (),
    ) -> list[int]:
        """Publish ``down.ack`` frames settling ``committed`` seqs and ``refused`` ones.

        Splits into several frames when one would list more than HubAck allows.

        Returns:
            The downlink seqs of the frames published (empty if none was).
        """
        sent = []
        for ack in hub_acks(committed, refused):
            seq = self.send(device_id, ack)
            if seq is None:
                break
            sent.append(seq)
        return sent


def seq_ranges(seqs: Iterable[int]) -> tuple[tuple[int, int], ...]:
    """Inclusive ``(first, last)`` runs covering exactly ``seqs``, ascending.

    ``seq_ranges([5, 1, 2, 3, 5, 9]) == ((1, 3), (5, 5), (9, 9))``.
    """
    runs: list[tuple[int, int]] = []
    for seq in sorted(set(seqs)):
        if runs and runs[-1][1] == seq - 1:
            runs[-1] = (runs[-1][0], seq)
        else:
            runs.append((seq, seq))
    return tuple(runs)


def hub_acks(committed: Iterable[int], refused: Iterable[tuple[int, str]] = ()) -> list[HubAck]:
    """The HubAck frames (usually one) that settle ``committed`` and ``refused``; none if empty."""
    runs, refusals = list(seq_ranges(committed)), sorted(set(refused))
    acks = []
    while runs or refusals:
        taken, runs = runs[:MAX_ACK_ENTRIES], runs[MAX_ACK_ENTRIES:]
        room = MAX_ACK_ENTRIES - len(taken)
        settled, refusals = refusals[:room], refusals[room:]
        acks.append(HubAck(committed=tuple(taken), refused=tuple(settled)))
    return acks
