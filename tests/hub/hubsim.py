"""A hub ingest in memory, and devices that sign real frames for it (python-tuf's
RepositorySimulator idea): no broker, no threads, a fake clock.

    hub = HubSim(tmp_path)
    dev = hub.device("dev-1", enrolled=True)
    hub.send(dev.frame(Telemetry(uptime_s=1)))
    assert hub.acks(dev) == [HubAck(committed=((1, 1),))]

The downlink is the real :class:`hub.transport.downlink.Downlink` over a publisher that records
what it was given, so acks are real signed frames, decoded here with the hub's public key.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from hub import keyring
from hub.context import HubContext
from hub.fleet import enrollment
from hub.ingest.worker import BatchResult, Ingest
from hub.settings import HubSettings
from hub.store import Store
from hub.store.sqlite import SqliteStore
from hub.transport.downlink import SEQ_COUNTER, Downlink
from protocol import frame, keys
from protocol.frame import Message
from protocol.messages import FetchRequest, Hello, HubAck
from protocol.topics import Topics
from tests.clock import FakeClock
from tests.hub.tables import snapshot

UPLINK_TABLES = ("telemetry", "states", "deltas", "data_windows", "device_acks")


class RecordingPublisher:
    """Stands in for the MQTT link: records each publish, or refuses while ``up`` is False."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, bool]] = []
        self.up = True

    def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> bool:
        if self.up:
            self.sent.append((topic, payload, retain))
        return self.up


@dataclass
class SimDevice:
    """A device with its own key and seq counter."""

    id: str
    topics: Topics
    clock: FakeClock
    key: Ed25519PrivateKey = field(default_factory=Ed25519PrivateKey.generate)
    seq: int = 0

    @property
    def public_hex(self) -> str:
        return keys.public_hex(self.key.public_key())

    def frame(
        self,
        message: Message,
        *,
        seq: int | None = None,
        sent_at: int | None = None,
        key: Ed25519PrivateKey | None = None,
        topic_kind: str | None = None,
        topic_device: str | None = None,
    ) -> tuple[str, bytes]:
        """A signed uplink frame and its topic; the next seq unless ``seq`` is given."""
        if seq is None:
            self.seq += 1
            seq = self.seq
        payload = frame.encode(
            message,
            device_id=self.id,
            seq=seq,
            sent_at=self.clock.now_ms() if sent_at is None else sent_at,
            nonce=os.urandom(16),
            key=key or self.key,
        )
        topic = self.topics.up(topic_device or self.id, topic_kind or message.KIND)
        return topic, payload

    def hello(self, token: str | None = None, **fields: Any) -> tuple[str, bytes]:
        return self.frame(
            Hello(public_key=self.public_hex, agent_version="1.0", enrollment_token=token, **fields)
        )


class HubSim:
    """Ingest over an in-memory store, a fake clock and a recording downlink."""

    def __init__(self, tmp_path: Path, *, store: Store | None = None, **settings: Any) -> None:
        self.clock = FakeClock()
        self.store: Store = store or SqliteStore.open(":memory:")
        self.settings = HubSettings(data_dir=tmp_path, topic_prefix="sim/ef", **settings)
        self.topics = Topics(self.settings.topic_prefix)
        self.hub_key = Ed25519PrivateKey.generate()
        self.publisher = RecordingPublisher()
        self.downlink = Downlink(self.store, self.publisher, self.topics, self.hub_key, self.clock)
        self.fetches: list[tuple[str, FetchRequest]] = []
        self.ingest = Ingest(
            self.store,
            self.settings,
            self.clock,
            self.downlink,
            on_fetch=lambda device_id, request: self.fetches.append((device_id, request)),
            hub_keys=(self.hub_key.public_key(),),
        )

    def context(self, **settings: Any) -> HubContext:
        """A hub context over this store and clock (a fresh key ring in the data directory)."""
        keys_dir = self.settings.keys_dir
        ring = (
            keyring.load(keys_dir)
            if keys_dir.exists()
            else keyring.init(keys_dir, now_ms=self.clock.now_ms())
        )
        return HubContext(self.store, ring, self.clock, replace(self.settings, **settings))

    def device(self, device_id: str, *, enrolled: bool = False) -> SimDevice:
        dev = SimDevice(device_id, self.topics, self.clock)
        if enrolled:
            enrollment.preauthorize(
                self.store, device_id, dev.public_hex, by="cli", now_ms=self.clock.now_ms()
            )
        return dev

    def send(self, *frames: tuple[str, bytes]) -> BatchResult:
        """Ingest ``frames`` as one batch."""
        return self.ingest.process(list(frames))

    def acks(self, dev: SimDevice | str) -> list[HubAck]:
        """The HubAcks published to ``dev`` so far (checked with the hub's key), and forget them."""
        device_id = dev if isinstance(dev, str) else dev.id
        topic = self.topics.down(device_id, "ack")
        found: list[tuple[str, bytes, bool]] = []
        kept: list[tuple[str, bytes, bool]] = []
        for sent in self.publisher.sent:
            (found if sent[0] == topic else kept).append(sent)
        self.publisher.sent = kept
        acks = []
        for _, payload, _ in found:
            message = frame.decode(payload, self.hub_key.public_key()).message
            assert isinstance(message, HubAck)
            acks.append(message)
        return acks

    def snapshot(self, *, audit: bool = False) -> dict[str, list[dict[str, Any]]]:
        """Every row of the fleet and uplink tables (and the audit log if asked), but the
        downlink seq counter."""
        tables = ["devices", "enrollment_tokens", "meta", *UPLINK_TABLES]
        if audit:
            tables.append("audit")
        rows = snapshot(self.store, tuple(tables))
        # the downlink's seq counter moves with every ack the hub sends: not ingest state
        rows["meta"] = [row for row in rows["meta"] if row["key"] != SEQ_COUNTER]
        return rows

    def rejections(self) -> list[tuple[str, str, str]]:
        """(actor, action, reason) of every audit row of one refused frame (garbage and
        alerts, not the summaries), oldest first."""
        entries = [
            e
            for outcome in ("rejected", "alert")
            for e in self.store.audit.page(outcome=outcome, limit=10**6).items
            if e.action != "frames_rejected" and e.actor != "system"
        ]
        return [(e.actor, e.action, e.reason) for e in sorted(entries, key=lambda e: e.id)]

    def summaries(self) -> list[dict[str, Any]]:
        """The garbage summaries written so far: reason and detail, oldest first."""
        entries = self.store.audit.page(action="frames_rejected", limit=10**6).items
        return [{"reason": e.reason, **json.loads(e.detail)} for e in reversed(entries)]
