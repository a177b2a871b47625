"""Ingest's verify workers only make it faster: the same batches, judged with and without
them, store, acknowledge and refuse exactly the same; and a frame verified ahead with a
key the device no longer has is verified again, never trusted."""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from hub.fleet import enrollment
from hub.fleet.identity import ACTIVE
from hub.ingest import verify_ahead as ingest_module
from hub.ingest.rules import Admitted, Decoded, Device, Refused, judge, predecode
from protocol import canonical, frame, keys, schema
from protocol.messages import HubAck, Telemetry
from protocol.replay import SeqWindow
from tests.hub.hubsim import HubSim, SimDevice

DEVICES = ("dev-0", "dev-1", "dev-2")


def telemetry(n: float) -> Telemetry:
    return Telemetry(uptime_s=n, inference_count=int(n), latency_p50_ms=1.5)


def flip(payload: bytes, index: int) -> bytes:
    return payload[:index] + bytes([payload[index] ^ 0x01]) + payload[index + 1 :]


def with_unknown_field(dev: SimDevice, seq: int) -> bytes:
    """Authentic, but with a field this hub does not know: refused for good, acked."""
    _, payload = dev.frame(telemetry(seq), seq=seq)
    opened = frame.open_frame(payload)
    head = canonical.dumps(
        {**schema.to_json(opened.header), "msg": {**opened.fields, "battery_pct": 80}}
    )
    raw = struct.pack(">2sBI", b"EF", 1, len(head)) + head
    return raw + keys.sign(dev.key, frame.payload_type("up.telemetry"), raw)


def batches(devs: dict[str, SimDevice]) -> list[list[tuple[str, bytes]]]:
    """A warm-up batch (fills the device cache the workers read), then a mixed one."""
    warm = [devs[d].frame(telemetry(1), seq=1) for d in DEVICES]
    mixed: list[tuple[str, bytes]] = []
    for seq in range(2, 14):
        mixed += [devs[d].frame(telemetry(seq), seq=seq) for d in DEVICES]
    d0, d1 = devs["dev-0"], devs["dev-1"]
    topic, payload = d0.frame(telemetry(20), seq=20)
    mixed += [
        (topic, payload),
        (topic, payload),  # the same frame twice in one batch: a duplicate
        warm[0],  # already committed: a duplicate, acked again
        (topic, flip(payload, len(payload) - 1)),  # bad signature
        d0.frame(telemetry(21), seq=21, key=Ed25519PrivateKey.generate()),  # another key
        d1.frame(telemetry(22), seq=22, topic_device="dev-0"),  # someone else's topic
        (d1.topics.up("dev-1", "telemetry"), with_unknown_field(d1, 23)),
        (d1.topics.up("dev-1", "telemetry"), b"EF\x01garbage"),
        SimDevice("ghost", d0.topics, d0.clock).frame(telemetry(1)),  # unknown device
        d1.frame(telemetry(24), seq=24, topic_kind="state"),  # wrong kind for the topic
    ]
    return [warm, mixed]


def run(tmp_path: Path, keys_by_id: dict[str, Ed25519PrivateKey], workers: int) -> Any:
    hub = HubSim(tmp_path)
    hub.ingest.ahead.workers = workers
    devs = {}
    for device_id in DEVICES:
        dev = SimDevice(device_id, hub.topics, hub.clock, key=keys_by_id[device_id])
        enrollment.preauthorize(hub.store, device_id, dev.public_hex, by="cli", now_ms=0)
        devs[device_id] = dev
    results = [hub.send(*batch) for batch in batches(devs)]
    acks: dict[str, list[HubAck]] = {d: hub.acks(d) for d in DEVICES}
    return hub, (results, acks, hub.snapshot(audit=True), hub.rejections())


def test_verify_workers_change_nothing_but_speed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ahead: list[Decoded | None] = []

    def counting(*args: Any, **kwargs: Any) -> list[Decoded | None]:
        results = predecode(*args, **kwargs)
        ahead.extend(results)
        return results

    monkeypatch.setattr(ingest_module, "predecode", counting)
    keys_by_id = {d: Ed25519PrivateKey.generate() for d in DEVICES}
    inline_hub, inline = run(tmp_path / "inline", keys_by_id, workers=0)
    assert ahead == []
    parallel_hub, parallel = run(tmp_path / "parallel", keys_by_id, workers=2)

    assert inline_hub.ingest.ahead.pool is None
    # the mixed batch went through the workers; what is not plain valid was left to judge
    assert sum(result is not None for result in ahead) == 12 * len(DEVICES) + 3
    assert parallel == inline
    results, acks, _, rejections = parallel
    assert results[1].committed == 12 * len(DEVICES) + 1
    assert results[1].duplicates == 2
    assert acks["dev-1"][-1].refused == ((23, "malformed"),)
    assert {reason for _, _, reason in rejections} >= {"bad_signature", "identity_mismatch"}
    parallel_hub.ingest.stop()


def test_a_frame_verified_ahead_with_another_key_is_verified_again(tmp_path: Path) -> None:
    hub = HubSim(tmp_path)
    old, new = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    dev = SimDevice("dev-0", hub.topics, hub.clock, key=old)
    topic, payload = dev.frame(telemetry(1), seq=1)
    rules = hub.ingest.rules

    def device(key: Ed25519PrivateKey) -> Device:
        public = key.public_key()
        return Device("dev-0", ACTIVE, keys.public_hex(public), public, SeqWindow())

    ahead = predecode([(topic, payload)], rules=rules, lookup={"dev-0": device(old)}.get)[0]
    assert ahead is not None

    now = hub.clock.now_ms()
    rotated = device(new)  # the device's key changed after the workers verified the frame
    outcome = judge(
        topic, payload, now_ms=now, rules=rules, lookup=lambda _: rotated, decoded=ahead
    )
    assert isinstance(outcome, Refused)
    assert outcome.reason == "bad_signature"

    same_key_new_object = device(old)  # equal key, other object: verified again, admitted
    outcome = judge(
        topic, payload, now_ms=now, rules=rules, lookup=lambda _: same_key_new_object, decoded=ahead
    )
    assert isinstance(outcome, Admitted)
    assert outcome.fields_json is None  # not taken from the frame verified ahead


def test_a_result_for_other_bytes_is_ignored(tmp_path: Path) -> None:
    hub = HubSim(tmp_path)
    dev = SimDevice("dev-0", hub.topics, hub.clock)
    public = dev.key.public_key()
    known = Device("dev-0", ACTIVE, dev.public_hex, public, SeqWindow())
    rules = hub.ingest.rules
    topic, good = dev.frame(telemetry(1), seq=1)
    ahead = predecode([(topic, good)], rules=rules, lookup={"dev-0": known}.get)[0]
    assert ahead is not None

    forged = flip(good, len(good) - 1)
    outcome = judge(
        topic,
        forged,
        now_ms=hub.clock.now_ms(),
        rules=rules,
        lookup=lambda _: known,
        decoded=ahead,
    )
    assert isinstance(outcome, Refused)
    assert outcome.reason == "bad_signature"
