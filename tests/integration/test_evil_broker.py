"""threat-model T13: a real hub and a real agent, and between the agent and Mosquitto an evil
broker (tests/evil_broker.py) that drops, duplicates, delays (so reorders), replays and
substitutes PUBLISH packets in both directions. Every accept/reject decision rests on
signatures, versions, device binding and expiry, so under it:

- an update still converges (chunks, assignments, acks all suffer the chaos);
- no attack succeeds: a substituted chunk is refused and fetched again, a forged
  assignment and a stale one replayed after a newer install change nothing, a replayed
  delta is stored once;
- nothing is lost or duplicated end to end: the agent's outbox drains, and every uplink
  frame the agent sent of a kind the hub stores is stored exactly once.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.config import AgentConfig
from agent.device import Device
from agent.download import DownloadPolicy
from agent.install import UpdaterConfig
from edgefleet.clock import SystemClock
from hub import keyring
from hub.fleet import enrollment
from hub.fleet.desired import set_desired
from hub.metrics import sample
from hub.service import HubService
from hub.settings import HubSettings
from hub.store.rows import (
    DataWindowRecord,
    DeltaRecord,
    DeviceAckRecord,
    StateRecord,
    TelemetryRecord,
)
from hub.transport.mqtt_packets import Publish
from protocol import frame
from protocol.messages import DeltaUpload, ModelRef
from protocol.topics import Topics
from tests import models
from tests.brokers import BrokerRunner
from tests.evil_broker import DOWN, UP, Action, Chaos, EvilBroker, Replace, Seen
from tests.hub.test_registry import reference

DEVICE = "dev-1"
WAIT_S = 40.0
STORED = {"state", "telemetry", "data", "delta", "ack"}  # kinds the hub keeps a row of
RECORDS = (StateRecord, TelemetryRecord, DataWindowRecord, DeltaRecord, DeviceAckRecord)


def eventually(condition: Callable[[], object], what: str, timeout_s: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


class Tamper:
    """Chaos on everything, a few chunks substituted, and a switch to stop it all."""

    def __init__(self, chaos: Chaos, corrupt_chunks: int) -> None:
        self.chaos = chaos
        self.corrupt_left = corrupt_chunks
        self.on = True

    def __call__(self, seen: Seen) -> Action:
        if not self.on:
            return Chaos(seed=0)(seen)
        if seen.down and seen.kind == "chunk" and self.corrupt_left > 0:
            self.corrupt_left -= 1
            payload = bytearray(seen.publish.payload)
            payload[len(payload) // 2] ^= 0x01  # one bit inside the signed chunk
            return Replace(bytes(payload))
        return self.chaos(seen)


@pytest.fixture
def hub(mosquitto_broker: BrokerRunner, tmp_path: Path, topics: Topics) -> Iterator[HubService]:
    settings = HubSettings(
        data_dir=tmp_path / "hub",
        broker_url=mosquitto_broker.url,
        topic_prefix=topics.prefix,
        http_port=0,
        chunk_bytes=512,
        reconcile_interval_s=1.0,
        nudge_every_s=2.0,
        heartbeat_interval_s=2.0,  # fleet documents the broker dropped come again soon
    )
    keyring.init(settings.keys_dir, now_ms=SystemClock().now_ms())
    with HubService.start(settings) as service:
        yield service


def start_agent(hub: HubService, evil: EvilBroker, tmp_path: Path) -> Device:
    root = tmp_path / "root.json"
    root.write_bytes(hub.keyring.chain[0].to_bytes())
    token = enrollment.create_token(hub.store, kind="single", by="test", now_ms=hub.clock.now_ms())
    config = AgentConfig(
        device_id=DEVICE,
        state_dir=tmp_path / "device",
        broker_url=evil.url,
        topic_prefix=hub.settings.topic_prefix,
        root_metadata=root,
        enrollment_token=token.secret,
        http_port=0,
        telemetry_interval_s=1.0,
        drain_interval_s=0.2,
        ack_timeout_s=1.0,
        reconnect_min_s=0.1,
        reconnect_max_s=1.0,
        stop_grace_s=1.0,
    )
    updater = UpdaterConfig(
        health_runs=2, tick_s=0.2, download=DownloadPolicy(chunk_bytes=512, window=2, stall_ms=1000)
    )
    device = Device(config, updater=updater)
    device.start()
    return device


def release(hub: HubService, version: int) -> ModelRef:
    model = models.gemm_classifier(hidden=32 * version)  # ~2 and ~4 KB: 4 and 8 chunks
    registered = hub.registry.register(
        model, name="churn", reference=reference(features=4), actor="operator"
    )
    set_desired(hub.context, device_id=DEVICE, model_name="churn", model_version=version,
                actor="operator")  # fmt: skip
    return ModelRef("churn", version, registered.sha256)


def active(hub: HubService) -> tuple[str | None, int | None]:
    device = hub.store.devices.find(DEVICE)
    return (device.active_name, device.active_version) if device else (None, None)


def stored_seqs(hub: HubService) -> list[int]:
    return sorted(r.seq for kind in RECORDS for r in hub.store.uplink.records(kind, DEVICE))


def test_under_an_evil_broker_updates_converge_no_attack_succeeds_and_nothing_is_lost(
    mosquitto_broker: BrokerRunner, hub: HubService, tmp_path: Path
) -> None:
    chaos = Chaos(seed=7, drop=0.1, duplicate=0.1, delay=0.15, max_delay_s=0.3)
    tamper = Tamper(chaos, corrupt_chunks=2)
    duplicates = sample("edgefleet_hub_duplicates_total")
    with EvilBroker(mosquitto_broker.host, mosquitto_broker.port, tamper) as evil:
        device = start_agent(hub, evil, tmp_path)
        try:
            eventually(lambda: hub.store.devices.status(DEVICE) == "active", "enrollment")

            # an update converges, through chaos and two substituted chunks
            v1 = release(hub, 1)
            eventually(lambda: active(hub) == ("churn", 1), "v1 installed and reported")
            assert tamper.corrupt_left == 0  # both substituted chunks reached the agent

            # a forged assignment: the desired frame swapped for one signed by another key
            forged = frame.encode(
                frame.decode(
                    evil.seen(direction=DOWN, kind="desired")[-1].publish.payload,
                    hub.keyring.signing_keys("rollout")[0].public_key(),
                ).message,
                device_id=DEVICE, seq=10**6, sent_at=hub.clock.now_ms(),
                nonce=os.urandom(16), key=Ed25519PrivateKey.generate(),
            )  # fmt: skip
            stale = evil.seen(direction=DOWN, kind="desired")[-1].publish
            trusted = device.manager.state_report().trust.assignment
            evil.inject(DOWN, DEVICE, Publish(stale.topic, forged, retain=True))
            time.sleep(1.0)
            assert device.manager.state_report().trust.assignment == trusted
            assert active(hub) == ("churn", 1)

            # a newer version, then the v1 assignment replayed: it must not go back
            release(hub, 2)
            eventually(lambda: active(hub) == ("churn", 2), "v2 installed and reported")
            evil.inject(DOWN, DEVICE, stale)
            time.sleep(2.0)
            assert active(hub) == ("churn", 2)
            runtime = device.manager.runtime
            assert runtime is not None
            assert runtime.ref.version == 2

            # a delta, then the same frame replayed by the broker: stored once
            device.agent.send(DeltaUpload(v1, 64, "accuracy", 0.8, 0.85, 10.0, tensors=b"EFT\x00t"))
            eventually(lambda: hub.store.uplink.records(DeltaRecord, DEVICE), "the delta")
            sent = evil.seen(direction=UP, kind="delta")[0]
            for _ in range(3):
                evil.inject(UP, DEVICE, sent.publish)
            time.sleep(1.0)
            assert len(hub.store.uplink.records(DeltaRecord, DEVICE)) == 1

            # nothing lost, nothing twice: stop the chaos, let the outbox drain
            tamper.on = False
            eventually(lambda: device.agent.outbox.stats().depth == 0, "the outbox drained")
        finally:
            device.stop()

    sent_seqs = sorted(
        {
            header.seq
            for s in evil.seen(direction=UP)
            if s.kind in STORED
            for header in [frame.open_frame(s.publish.payload).header]
        }
    )
    assert stored_seqs(hub) == sent_seqs
    assert chaos.counts["drop"] > 0
    assert chaos.counts["duplicate"] > 0
    assert sample("edgefleet_hub_duplicates_total") > duplicates
    assert hub.store.devices.get(DEVICE).public_key == device.agent.identity.public_hex
