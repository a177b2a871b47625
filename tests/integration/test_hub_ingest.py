"""Hub ingest over real brokers (Mosquitto and the embedded amqtt broker).

1. Garbage on every ``up/`` kind, published with a real MQTT client: the hub stays up, the
   audit log shows each rejection with its reason, and no other row is written.
   On both stores (SQLite and PostgreSQL: the ``database`` fixture).
2. kill -9 of the hub (``python -m hub.ingest.pipeline`` in a subprocess) while it ingests
   10,000 frames (2,000 through the much slower embedded broker) from publishers that
   re-send until acknowledged; after a restart every frame is stored exactly once, and
   every frame the hub acknowledged was stored before its ack (checked against the
   database as the killed process left it, before the restart).
"""

from __future__ import annotations

import os
import selectors
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from paho.mqtt.enums import CallbackAPIVersion

from hub.fleet import enrollment
from hub.ingest import pipeline as ingest_run
from hub.metrics import sample
from hub.settings import HubSettings
from hub.store import Store
from hub.store.rows import TelemetryRecord
from hub.store.sqlite import SqliteStore
from protocol import frame, keys
from protocol.frame import Message
from protocol.messages import (
    DataDelta,
    DeltaUpload,
    DeviceAck,
    FetchRequest,
    Hello,
    HubAck,
    ModelRef,
    StateReport,
    Telemetry,
)
from protocol.replay import WIDTH
from protocol.sketches import FeatureSketch
from protocol.topics import UP_KINDS, Topics
from tests.brokers import BrokerRunner
from tests.clock import FakeClock
from tests.hub.hubsim import SimDevice
from tests.hub.tables import snapshot
from tests.mqtt import Received, TestClient

MODEL = ModelRef("digits", 3, "ab" * 32)
WAIT_S = 20.0


def sample_message(kind: str, dev: SimDevice, now_ms: int) -> Message:
    """One valid message of each uplink kind."""
    sketch = FeatureSketch("x0", counts=(1, 2), n=3, mean=0.5, m2=0.1, min=0.0, max=1.0)
    return {
        "hello": lambda: Hello(public_key=dev.public_hex, agent_version="1.0"),
        "state": lambda: StateReport(active=MODEL),
        "telemetry": lambda: Telemetry(uptime_s=1.0),
        "delta": lambda: DeltaUpload(MODEL, 8, "mse", 1.0, 0.5, 1.0, tensors=b"T" * 32),
        "data": lambda: DataDelta(now_ms - 60_000, now_ms, (sketch,)),
        "ack": lambda: DeviceAck(ref_seq=1, ref_kind="desired", status="accepted"),
        "fetch": lambda: FetchRequest("cd" * 32, 0, 1024),
    }[kind]()


def wait_until(condition: Any, timeout_s: float = WAIT_S) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return bool(condition())


def table_rows(store: Store) -> dict[str, list[dict[str, Any]]]:
    tables = ["devices", "enrollment_tokens", "telemetry", "states", "deltas", "data_windows"]
    tables += ["device_acks"]
    return snapshot(store, tuple(tables))


def publish_oversized(broker: BrokerRunner, topic: str, size: int) -> None:
    """Publish ``size`` bytes with a client of its own (the broker may disconnect it)."""
    client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv311)
    client.connect(broker.host, broker.port)
    client.loop_start()
    try:
        info = client.publish(topic, os.urandom(size), qos=1)
        info.wait_for_publish(3)
    except (RuntimeError, ValueError):
        pass  # disconnected by the broker: the point of the exercise
    finally:
        client.disconnect()
        client.loop_stop()


def test_garbage_on_every_up_kind_is_audited_and_changes_nothing(
    broker: BrokerRunner, topics: Topics, tmp_path: Path, database: str
) -> None:
    clock = FakeClock(time.time_ns() // 1_000_000)
    settings = HubSettings(
        data_dir=tmp_path,
        database=database,
        broker_url=broker.url,
        topic_prefix=topics.prefix,
        client_id=f"hub-{uuid.uuid4().hex[:8]}",
        audit_rejections_per_device_per_min=1000,
    )
    hub_key = Ed25519PrivateKey.generate()
    service = ingest_run.start(settings, hub_key, clock=clock)
    dev = SimDevice("dev-1", topics, clock)
    ghost = SimDevice("ghost", topics, clock)
    enrollment.preauthorize(service.store, dev.id, dev.public_hex, by="cli", now_ms=0)
    try:
        assert service.link.wait_ready(WAIT_S)
        with TestClient(broker) as device, TestClient(broker) as attacker:
            device.subscribe(topics.device_down(dev.id))

            settled: set[int] = set()

            def acked(*seqs: int) -> None:
                def covers(received: Received) -> bool:
                    ack = frame.decode(received.payload, hub_key.public_key()).message
                    assert isinstance(ack, HubAck)
                    for first, last in ack.committed:
                        settled.update(range(first, last + 1))
                    return set(seqs) <= settled

                device.wait_for(covers)
                settled.clear()

            # the genuine frames, one per kind, accepted; then the window moves on
            genuine = {
                kind: dev.frame(sample_message(kind, dev, clock.now_ms())) for kind in UP_KINDS
            }
            for topic, payload in genuine.values():
                attacker.publish(topic, payload)
            acked(*range(1, len(genuine) + 1))
            mover = dev.frame(Telemetry(uptime_s=2.0), seq=WIDTH + 100)
            attacker.publish(*mover)
            acked(WIDTH + 100)
            before = table_rows(service.store)
            audited = service.store.audit.count(outcome="rejected")
            counted = sample("edgefleet_hub_rejected_total", {"reason": "replay"})

            expected = []
            for kind, (topic, payload) in sorted(genuine.items()):
                sent_by_ghost = ghost.frame(sample_message(kind, ghost, clock.now_ms()))
                # a frame of the device's own, this byte flipped in its signature
                flipped = payload[:-1] + bytes([payload[-1] ^ 1])
                garbage = [
                    (b"\0" + os.urandom(200), "unknown_version"),
                    (payload[: len(payload) // 2], "malformed"),
                    (flipped, "bad_signature"),
                    (payload, "replay"),  # accepted once, now below the window
                    (os.urandom(300 * 1024), "oversize"),
                ]
                for bad, reason in garbage:
                    attacker.publish(topic, bad)
                    expected.append((f"up.{kind}", reason))
                if kind != "hello":
                    attacker.publish(*sent_by_ghost)
                    expected.append((f"up.{kind}", "unknown_device"))
            # a valid hello from an unknown device without a token: recorded as pending
            attacker.publish(*ghost.hello())
            attacker.publish(*mover)  # a duplicate: re-acknowledged, not a rejection
            publish_oversized(broker, topics.up(dev.id, "telemetry"), 10 * 1024 * 1024)

            def rejections() -> list[tuple[str, str]]:
                entries = service.store.audit.page(outcome="rejected", limit=10**6).items
                return [(e.target, e.reason) for e in list(reversed(entries))[audited:]]

            wait_until(lambda: len(rejections()) >= len(expected))
            acked(WIDTH + 100)
            assert sorted(rejections()) == sorted(expected)
            after = table_rows(service.store)
            [pending] = [d for d in after["devices"] if d["id"] == "ghost"]
            assert pending["status"] == "pending"
            after["devices"].remove(pending)
            assert after == before
            assert sample("edgefleet_hub_rejected_total", {"reason": "replay"}) == counted + 7

            # still serving
            attacker.publish(*dev.frame(Telemetry(uptime_s=3.0), seq=WIDTH + 101))
            acked(WIDTH + 101)
    finally:
        service.stop()


# ---------------------------------------------------------------------- kill -9


DEVICES = 4
FRAMES = {"mosquitto": 10_000, "amqtt": 2_000}  # amqtt (pure Python) is ~10x slower
RESEND_AFTER_S = 2.0  # doubling on every resend of the same frame, up to 8 s, as agents do
IN_FLIGHT = 500


class ResendingPublisher:
    """Devices that publish signed telemetry and re-send each frame until the hub acks it.

    Records every seq any ack settled (verified with the hub's key), per device.
    """

    def __init__(
        self, broker: BrokerRunner, topics: Topics, hub_key: Ed25519PrivateKey, per_device: int
    ) -> None:
        self.per_device = per_device
        clock = FakeClock(time.time_ns() // 1_000_000)
        self.devices = [SimDevice(f"dev-{i}", topics, clock) for i in range(DEVICES)]
        self.frames = {
            d.id: [d.frame(Telemetry(uptime_s=float(seq))) for seq in range(1, per_device + 1)]
            for d in self.devices
        }
        self.acked: dict[str, set[int]] = {d.id: set() for d in self.devices}
        self.lock = threading.Lock()
        self._hub_public = hub_key.public_key()
        self._topics = topics
        self._stop = threading.Event()
        self._client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"pub-{uuid.uuid4().hex[:8]}",
            protocol=paho.MQTTv311,
        )
        self._client.max_inflight_messages_set(200)
        self._client.on_connect = self._on_connect
        self._client.on_message = self._on_message
        self._client.connect(broker.host, broker.port)
        self._thread = threading.Thread(target=self._run, name="resending-publisher", daemon=True)

    def start(self) -> None:
        self._client.loop_start()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self._client.disconnect()
        self._client.loop_stop()

    def acked_count(self) -> int:
        with self.lock:
            return sum(map(len, self.acked.values()))

    def snapshot(self) -> dict[str, set[int]]:
        with self.lock:
            return {device: set(seqs) for device, seqs in self.acked.items()}

    def _on_connect(self, client: paho.Client, *args: Any) -> None:
        client.subscribe([(self._topics.device_down(d.id), 1) for d in self.devices])

    def _on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        envelope = frame.decode(bytes(message.payload), self._hub_public, expect_kind="down.ack")
        ack = envelope.message
        assert isinstance(ack, HubAck)
        with self.lock:
            settled = self.acked[envelope.header.device_id]
            for first, last in ack.committed:
                settled.update(range(first, last + 1))

    def _run(self) -> None:
        due: dict[tuple[str, int], float] = {}
        tries: dict[tuple[str, int], int] = {}
        while not self._stop.is_set():
            now = time.monotonic()
            for device in self.devices:
                with self.lock:
                    done = set(self.acked[device.id])
                waiting = [s for s in range(1, self.per_device + 1) if s not in done]
                for seq in waiting[:IN_FLIGHT]:
                    key = (device.id, seq)
                    if now >= due.get(key, 0.0):
                        self._client.publish(*self.frames[device.id][seq - 1], qos=1)
                        tries[key] = tries.get(key, 0) + 1
                        due[key] = now + min(RESEND_AFTER_S * 2 ** (tries[key] - 1), 8.0)
            self._stop.wait(0.2)


def start_hub(data: Path, broker: BrokerRunner, topics: Topics, key: Path) -> subprocess.Popen[str]:
    process = subprocess.Popen(
        [
            sys.executable,
            *("-m", "hub.ingest.pipeline", "--data", str(data), "--broker", broker.url),
            *("--prefix", topics.prefix, "--key", str(key)),
            *("--client-id", f"hub-{uuid.uuid4().hex[:8]}"),
        ],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert process.stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        assert selector.select(WAIT_S), "the hub did not get ready"
        assert process.stdout.readline().strip() == "ready"
    return process


def stored(db: Path) -> set[tuple[str, int]]:
    """(device_id, seq) of every telemetry row, read with a connection of our own."""
    with sqlite3.connect(db) as conn:
        return set(conn.execute("SELECT device_id, seq FROM telemetry").fetchall())


@pytest.fixture
def hub_files(tmp_path: Path) -> tuple[Path, Path, Ed25519PrivateKey]:
    key = Ed25519PrivateKey.generate()
    key_path = tmp_path / "rollout.pem"
    key_path.write_bytes(keys.private_to_pem(key))
    return tmp_path / "hub", key_path, key


def test_kill_9_during_ingest_loses_nothing_and_stores_each_frame_once(
    broker: BrokerRunner,
    topics: Topics,
    hub_files: tuple[Path, Path, Ed25519PrivateKey],
) -> None:
    data, key_path, hub_key = hub_files
    per_device = FRAMES[broker.name] // DEVICES
    publisher = ResendingPublisher(broker, topics, hub_key, per_device)
    store = SqliteStore.open(data / "hub.db")
    for sim in publisher.devices:
        enrollment.preauthorize(store, sim.id, sim.public_hex, by="cli", now_ms=0)
    store.close()
    total = DEVICES * per_device

    hub = start_hub(data, broker, topics, key_path)
    publisher.start()
    try:
        assert wait_until(lambda: publisher.acked_count() >= total // 4, 60)
        hub.send_signal(signal.SIGKILL)
        hub.wait()
        time.sleep(0.5)  # acks the hub published before dying may still be on their way
        acked_before_restart = publisher.snapshot()
        at_kill = stored(data / "hub.db")
        assert 0 < len(at_kill) < total, "the kill should land mid-stream"
        for device, seqs in acked_before_restart.items():
            assert {(device, s) for s in seqs} <= at_kill, "acked but not stored"

        hub = start_hub(data, broker, topics, key_path)
        assert wait_until(lambda: publisher.acked_count() == total, 60)
    finally:
        publisher.stop()
        hub.send_signal(signal.SIGTERM)
        hub.wait(10)

    expected = {(d.id, seq) for d in publisher.devices for seq in range(1, per_device + 1)}
    store = SqliteStore.open(data / "hub.db")
    rows = store.uplink.records(TelemetryRecord)
    assert len(rows) == total
    assert {(r.device_id, r.seq) for r in rows} == expected
    assert all(f'"uptime_s":{float(r.seq)}' in r.body for r in rows)
    assert store.audit.count(outcome="rejected") == 0
    store.close()
