"""Hub ingest against an in-memory simulator: what is stored, what is acknowledged, and
every bad frame refused with its reason and nothing else changed (forgery, replay, reused
seqs, floods, a failing disk)."""

from __future__ import annotations

import os
import struct
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hub.fleet import enrollment
from hub.fleet.presence import mark_offline
from hub.health import Health, derive
from hub.metrics import sample
from hub.store.rows import DeltaRecord, Desired, StateRecord, TelemetryRecord, UplinkRecord
from hub.store.sqlite import SqliteStore
from protocol import canonical, frame, keys, schema
from protocol.frame import Limits, Message
from protocol.messages import (
    DataDelta,
    DeltaUpload,
    DeviceAck,
    FetchRequest,
    HubAck,
    InstallOutcome,
    ModelRef,
    StateReport,
    Telemetry,
)
from protocol.replay import WIDTH
from protocol.sketches import FeatureSketch
from tests.hub.hubsim import UPLINK_TABLES, HubSim, SimDevice
from tests.hub.tables import rows

MODEL = ModelRef("digits", 3, "ab" * 32)
DAY_MS = 86_400_000


@pytest.fixture
def hub(tmp_path: Path) -> HubSim:
    return HubSim(tmp_path)


@pytest.fixture
def dev(hub: HubSim) -> SimDevice:
    return hub.device("dev-1", enrolled=True)


def telemetry(n: float = 1.0) -> Telemetry:
    return Telemetry(uptime_s=n, inference_count=int(n), latency_p50_ms=1.5)


def data_window(clock_ms: int) -> DataDelta:
    sketch = FeatureSketch("x0", counts=(1, 2, 3), n=6, mean=0.5, m2=1.0, min=0.0, max=1.0)
    return DataDelta(clock_ms - 60_000, clock_ms, (sketch,), model=MODEL, inference_count=6)


def delta() -> DeltaUpload:
    return DeltaUpload(MODEL, 64, "accuracy", 0.8, 0.85, 10.0, tensors=b"EFT\x00tensors")


def rejected(reason: str) -> float:
    return sample("edgefleet_hub_rejected_total", {"reason": reason})


# ---------------------------------------------------------------------- accepted frames


def test_hub_stores_every_kind_and_acks_the_committed_seqs(hub: HubSim, dev: SimDevice) -> None:
    now = hub.clock.now_ms()
    hub.send(
        dev.hello(),
        dev.frame(StateReport(active=MODEL, flags=("clock_suspect",))),
        dev.frame(telemetry()),
        dev.frame(delta()),
        dev.frame(data_window(now)),
        dev.frame(DeviceAck(ref_seq=7, ref_kind="desired", status="accepted")),
        dev.frame(FetchRequest("cd" * 32, offset=0, length=1024)),
    )

    assert hub.acks(dev) == [HubAck(committed=((1, 7),))]
    counts = {t: len(rows(hub.store, t)) for t in UPLINK_TABLES}
    assert counts == dict.fromkeys(UPLINK_TABLES, 1)
    [stored] = hub.store.uplink.records(DeltaRecord)
    assert (stored.tensors, stored.status, stored.base_version) == (
        b"EFT\x00tensors",
        "received",
        3,
    )
    assert hub.fetches == [("dev-1", FetchRequest("cd" * 32, offset=0, length=1024))]
    device = hub.store.devices.get("dev-1")
    assert (device.online, device.last_seen, device.active_name) == (True, now, "digits")
    assert device.health == Health.CLOCK_SUSPECT
    # the frame is authentic, so stored and acked; its delta names no registered base,
    # so screening refuses the content (hub.federated.screening)
    assert hub.rejections() == [("device:dev-1", "delta.refused", "unknown_base")]


def test_hub_reacks_a_duplicate_without_storing_it_again(hub: HubSim, dev: SimDevice) -> None:
    first = dev.frame(telemetry())
    hub.send(first)
    assert hub.acks(dev) == [HubAck(committed=((1, 1),))]
    before = hub.snapshot(audit=True)
    duplicates = sample("edgefleet_hub_duplicates_total")

    hub.send(first, first)  # an agent resend and a QoS 1 redelivery of it

    assert hub.acks(dev) == [HubAck(committed=((1, 1),))]
    assert hub.snapshot(audit=True) == before
    assert sample("edgefleet_hub_duplicates_total") == duplicates + 2


def test_hub_accepts_frames_overtaken_in_transit(hub: HubSim, dev: SimDevice) -> None:
    frames = [dev.frame(telemetry(i)) for i in range(5)]
    hub.send(frames[4], frames[0])
    hub.send(frames[2], frames[1], frames[3])

    assert [a.committed for a in hub.acks(dev)] == [((1, 1), (5, 5)), ((2, 4),)]
    assert hub.store.uplink.count(TelemetryRecord) == 5


def test_state_reports_set_the_twin_and_the_last_will_marks_offline(
    hub: HubSim, dev: SimDevice
) -> None:
    will = dev.frame(StateReport(active=MODEL, flags=("offline",)))  # sealed at connect
    newer = ModelRef("digits", 4, "cd" * 32)
    hub.send(dev.frame(StateReport(active=newer)))
    hub.send(will)

    device = hub.store.devices.get("dev-1")
    assert (device.online, device.active_version, device.health) == (False, 4, Health.OK)
    assert hub.store.uplink.count(StateRecord) == 2


def test_a_state_report_from_a_stuck_device_keeps_it_stuck(hub: HubSim, dev: SimDevice) -> None:
    hub.send(dev.frame(StateReport(active=MODEL)))
    stuck = Desired("dev-1", "digits", 4, 1, "{}", 0, "operator", 10**13, stuck_at=5)
    hub.store.desired.put(stuck)
    hub.store.devices.set_health("dev-1", derive(None, stuck=True))

    hub.send(dev.frame(StateReport(active=MODEL, flags=("freeze_suspected",))))

    device = hub.store.devices.get("dev-1")
    assert device.health == Health.STUCK
    assert '"freeze_suspected"' in (device.reported or "")  # the cause stays readable
    hub.store.desired.set_stuck("dev-1", at_ms=None)
    hub.send(dev.frame(StateReport(active=MODEL, flags=("freeze_suspected",))))
    assert hub.store.devices.get("dev-1").health == Health.FREEZE_SUSPECTED


def test_a_later_frame_brings_the_device_back_online(hub: HubSim, dev: SimDevice) -> None:
    hub.send(dev.frame(StateReport(active=MODEL, flags=("offline",))))
    hub.send(dev.frame(telemetry()))

    assert hub.store.devices.get("dev-1").online


def test_mark_offline_marks_devices_not_seen_recently(hub: HubSim, dev: SimDevice) -> None:
    quiet = hub.device("dev-2", enrolled=True)
    hub.send(dev.frame(telemetry()), quiet.frame(telemetry()))
    hub.clock.advance(100)
    hub.send(dev.frame(telemetry()))
    hub.clock.advance(30)

    ctx = hub.context(offline_after_s=120)
    assert mark_offline(ctx) == ["dev-2"]
    assert mark_offline(ctx) == []
    assert hub.store.devices.get("dev-1").online


@pytest.mark.parametrize(
    ("flags", "stuck", "expected"),
    [
        ((), False, "ok"),
        (("offline",), False, "ok"),
        (("outbox_dropped", "freeze_suspected"), False, "freeze_suspected"),
        (("something_new",), False, "degraded"),
        (None, False, "unknown"),
        (None, True, "stuck"),
        (("freeze_suspected",), True, "stuck"),
    ],
)
def test_health_names_the_most_serious_finding(
    flags: tuple[str, ...] | None, stuck: bool, expected: str
) -> None:
    assert derive(flags, stuck=stuck) == expected


def test_hub_records_clock_skew(hub: HubSim, dev: SimDevice) -> None:
    before = sample("edgefleet_hub_clock_skew_seconds_count", {"direction": "ahead"})
    hub.send(dev.frame(telemetry(), sent_at=hub.clock.now_ms() + 2 * 3600 * 1000))

    assert sample("edgefleet_hub_clock_skew_seconds_count", {"direction": "ahead"}) == before + 1
    assert hub.store.uplink.count(TelemetryRecord) == 1  # two hours ahead: informational only


# ---------------------------------------------------------------------- refused frames


def flip(payload: bytes, index: int) -> bytes:
    return payload[:index] + bytes([payload[index] ^ 0x01]) + payload[index + 1 :]


Attack = Callable[[HubSim, SimDevice], tuple[str, bytes]]


def tampered(edit: Callable[[bytes], bytes], message: Callable[[], Message] = telemetry) -> Attack:
    """A valid frame from the device, passed through ``edit`` on the way."""

    def attack(hub: HubSim, dev: SimDevice) -> tuple[str, bytes]:
        topic, payload = dev.frame(message())
        return topic, edit(payload)

    return attack


def raw(kind: str, payload: bytes) -> Attack:
    return lambda hub, dev: (hub.topics.up(dev.id, kind), payload)


BAD_FRAMES: list[tuple[str, Attack, str]] = [
    ("random_bytes", raw("telemetry", b"\0" + os.urandom(300)), "unknown_version"),
    ("empty", raw("state", b""), "malformed"),
    ("truncated", tampered(lambda p: p[:40]), "malformed"),
    ("bad_magic", tampered(lambda p: b"XX" + p[2:]), "unknown_version"),
    ("unknown_version", tampered(lambda p: p[:2] + b"\x09" + p[3:]), "unknown_version"),
    (
        "header_length_past_end",
        tampered(lambda p: p[:3] + struct.pack(">I", 10**6) + p[7:]),
        "oversize",
    ),
    ("flipped_signature_byte", tampered(lambda p: flip(p, len(p) - 1)), "bad_signature"),
    (
        "flipped_header_byte",
        tampered(lambda p: flip(p, p.index(b'"uptime_s":') + 11)),
        "bad_signature",
    ),
    ("flipped_body_byte", tampered(lambda p: flip(p, len(p) - 70), delta), "malformed"),
    (
        "signed_by_another_key",
        lambda h, d: d.frame(telemetry(), key=Ed25519PrivateKey.generate()),
        "bad_signature",
    ),
    ("wrong_kind_for_topic", lambda h, d: d.frame(telemetry(), topic_kind="state"), "wrong_type"),
    (
        "another_devices_topic",
        lambda h, d: d.frame(telemetry(), topic_device="dev-2"),
        "identity_mismatch",
    ),
    (
        "unknown_device",
        lambda h, d: SimDevice("ghost", h.topics, h.clock).frame(telemetry()),
        "unknown_device",
    ),
    ("oversize", raw("delta", os.urandom(Limits().max_frame_bytes + 1)), "oversize"),
    (
        "topic_outside_prefix",
        lambda h, d: ("elsewhere/v1/d/dev-1/up/telemetry", d.frame(telemetry())[1]),
        "malformed",
    ),
    (
        "downlink_topic",
        lambda h, d: (h.topics.down(d.id, "ack"), d.frame(telemetry())[1]),
        "malformed",
    ),
    ("replayed_below_window", lambda h, d: d.frame(telemetry(), seq=1), "replay"),
]


@pytest.mark.parametrize(
    ("attack", "reason"),
    [pytest.param(attack, reason, id=name) for name, attack, reason in BAD_FRAMES],
)
def test_hub_refuses_bad_frame_and_changes_nothing_else(
    hub: HubSim, dev: SimDevice, attack: Attack, reason: str
) -> None:
    hub.device("dev-2", enrolled=True)
    hub.send(dev.frame(telemetry(), seq=WIDTH + 10))  # so seq 1 is below the window
    hub.acks(dev)
    before = hub.snapshot()
    counted = rejected(reason)

    result = hub.send(attack(hub, dev))

    assert result.committed == 0
    assert hub.snapshot() == before
    assert hub.acks(dev) == []
    assert hub.acks("dev-2") == []
    assert [r[2] for r in hub.rejections()] == [reason]
    assert rejected(reason) == counted + 1


def test_hub_never_writes_frame_content_to_the_audit_log(hub: HubSim, dev: SimDevice) -> None:
    hub.send((hub.topics.up(dev.id, "telemetry"), b"EF\x01" + b"SECRET-CONTENT" * 10))

    [row] = hub.store.audit.page(outcome="rejected").items
    assert "SECRET" not in str(row)
    assert row.detail == '{"bytes":143,"error":"Oversize","seq":null}'


def test_hub_refuses_a_reused_seq_with_other_content_and_alerts(
    hub: HubSim, dev: SimDevice
) -> None:
    hub.send(dev.frame(telemetry(1), seq=5))
    hub.acks(dev)
    before = hub.snapshot()

    hub.send(dev.frame(telemetry(2), seq=5))

    assert hub.snapshot() == before
    assert hub.acks(dev) == []
    assert hub.rejections() == [("device:dev-1", "seq_reused", "replay")]


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        pytest.param(
            lambda d, now: d.frame(telemetry(), sent_at=now - 8 * DAY_MS), "stale", id="too_old"
        ),
        pytest.param(
            lambda d, now: d.frame(telemetry(), sent_at=now + 2 * DAY_MS), "stale", id="future"
        ),
        pytest.param(
            lambda d, now: d.frame(DeviceAck(ref_seq=1, ref_kind="hello", status="accepted")),
            "invalid",
            id="ack_for_an_uplink_kind",
        ),
        pytest.param(
            lambda d, now: d.frame(data_window(now + 10 * 60_000)),
            "invalid",
            id="window_ends_after_sending",
        ),
        pytest.param(
            lambda d, now: d.frame(DeltaUpload(MODEL, 1, "mse", 1.0, 0.5, 1.0, tensors=b"")),
            "invalid",
            id="delta_without_tensors",
        ),
    ],
)
def test_hub_refuses_authentic_but_unacceptable_frames_for_good(
    hub: HubSim,
    dev: SimDevice,
    make: Callable[[SimDevice, int], tuple[str, bytes]],
    reason: str,
) -> None:
    before = hub.snapshot()
    bad = make(dev, hub.clock.now_ms())

    hub.send(bad)
    hub.send(bad)  # refused frames never enter the replay window: refused again

    assert hub.snapshot() == before
    assert hub.acks(dev) == [HubAck(committed=(), refused=((1, reason),))] * 2
    assert [r[2] for r in hub.rejections()] == [reason, reason]


def test_hub_refuses_signed_frames_that_break_the_schema_for_good(
    hub: HubSim, dev: SimDevice
) -> None:
    # a newer agent with a field this hub does not know: authentic, so settled as refused
    topic, payload = dev.frame(telemetry())
    opened = frame.open_frame(payload)
    fields = {**opened.fields, "battery_pct": 80}
    head = canonical.dumps({**schema.to_json(opened.header), "msg": fields})
    raw = struct.pack(">2sBI", b"EF", 1, len(head)) + head
    signed = raw + keys.sign(dev.key, frame.payload_type("up.telemetry"), raw)

    hub.send((topic, signed))

    assert hub.acks(dev) == [HubAck(committed=(), refused=((1, "malformed"),))]
    assert hub.store.uplink.count(TelemetryRecord) == 0


def test_hub_rate_limits_rejection_audit_per_device(tmp_path: Path) -> None:
    hub = HubSim(tmp_path, audit_rejections_per_device_per_min=3)
    dev = hub.device("dev-1", enrolled=True)
    garbage = (hub.topics.up(dev.id, "telemetry"), b"garbage")
    suppressed = sample("edgefleet_hub_audit_suppressed_total")
    counted = rejected("malformed")

    hub.send(*[garbage] * 10)
    hub.send(hub.device("dev-2").frame(telemetry()))  # another sender has its own budget
    hub.clock.advance(60)
    hub.send(garbage)

    reasons = [(actor, reason) for actor, _, reason in hub.rejections()]
    assert reasons == [("device:dev-1", "malformed")] * 3 + [
        ("device:dev-2", "unknown_device"),
        ("device:dev-1", "malformed"),
    ]
    assert sample("edgefleet_hub_audit_suppressed_total") == suppressed + 7
    assert rejected("malformed") == counted + 11
    # the first minute's garbage is summarised, every frame counted, the top sender named
    first = {s["reason"]: s for s in hub.summaries()}
    assert first["malformed"]["count"] == 10
    assert first["malformed"]["audited"] == 3
    assert first["malformed"]["top"] == [["dev-1", 10]]
    assert first["unknown_device"]["count"] == 1


def test_hub_prunes_rejected_audit_rows_beyond_the_kept_number(tmp_path: Path) -> None:
    hub = HubSim(tmp_path, audit_rejections_keep=20)
    for i in range(10):
        hub.send(*[(hub.topics.up(f"ghost-{i}-{j}", "state"), b"x") for j in range(10)])

    kept = hub.store.audit.count(outcome="rejected")
    assert 20 <= kept < 22


def test_hub_acks_nothing_when_the_commit_fails(
    hub: HubSim, dev: SimDevice, monkeypatch: pytest.MonkeyPatch
) -> None:
    frames = [dev.frame(telemetry(i)) for i in range(3)]
    before = hub.snapshot(audit=True)

    def broken_disk(records: list[UplinkRecord]) -> int:
        raise OSError("disk I/O error")

    with monkeypatch.context() as patch:
        patch.setattr(hub.store.uplink, "add", broken_disk)
        assert hub.send(*frames).committed == 0

    assert hub.acks(dev) == []
    assert hub.snapshot(audit=True) == before
    assert hub.send(*frames).committed == 3  # the agent's resend is stored once
    assert hub.acks(dev) == [HubAck(committed=((1, 3),))]


def test_a_failing_fetch_hook_does_not_stop_ingest(hub: HubSim, dev: SimDevice) -> None:
    def broken(device_id: str, request: FetchRequest) -> None:
        raise RuntimeError("delivery bug")

    hub.ingest.on_fetch = broken
    hub.send(dev.frame(FetchRequest("cd" * 32, 0, 10)), dev.frame(telemetry()))

    assert hub.acks(dev) == [HubAck(committed=((1, 2),))]


def test_revocation_applies_from_the_next_batch(hub: HubSim, dev: SimDevice) -> None:
    hub.send(dev.frame(telemetry()))
    hub.acks(dev)
    enrollment.revoke(hub.store, "dev-1", by="token:admin", now_ms=hub.clock.now_ms())
    before = hub.snapshot()

    hub.send(dev.frame(telemetry()), dev.frame(telemetry(), key=Ed25519PrivateKey.generate()))

    assert hub.snapshot() == before
    assert hub.publisher.sent == []
    assert hub.rejections() == [
        ("device:dev-1", "revoked_key_in_use", "revoked"),
        ("device:dev-1", "frame_rejected", "revoked"),
    ]


def test_hub_restarted_on_the_same_store_still_knows_the_window(tmp_path: Path) -> None:
    path = tmp_path / "hub.db"
    hub = HubSim(tmp_path, store=SqliteStore.open(path))
    dev = hub.device("dev-1", enrolled=True)
    first = dev.frame(telemetry())
    hub.send(first)
    hub.store.close()

    again = HubSim(tmp_path, store=SqliteStore.open(path))
    again.send(first, dev.frame(telemetry()))

    assert again.acks(dev) == [HubAck(committed=((1, 2),))]
    assert again.store.uplink.count(TelemetryRecord) == 2


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    kind=st.sampled_from(["hello", "state", "telemetry", "delta", "data", "ack", "fetch"]),
    device=st.sampled_from(["dev-1", "ghost", "UPPER", "a" * 70]),
    payload=st.one_of(
        st.binary(max_size=600),
        st.binary(max_size=200).map(lambda b: b"EF\x01\x00\x00\x00\x10" + b),
    ),
)
def test_hub_survives_any_payload_on_any_up_topic(
    hub: HubSim, dev: SimDevice, kind: str, device: str, payload: bytes
) -> None:
    before = hub.snapshot()
    topic = f"{hub.topics.base}/d/{device}/up/{kind}"

    result = hub.send((topic, payload))

    assert (result.committed, result.duplicates) == (0, 0)
    assert hub.snapshot() == before
    assert hub.publisher.sent == []


# ---------------------------------------------------------------------- what devices refuse


INCOMPATIBLE = "incompatible: its inputs differ from the active model's: its input has shape [?,5]"


def test_a_refusal_the_device_reports_is_stored_on_it_with_when_it_first_came(
    hub: HubSim, dev: SimDevice
) -> None:
    refused = InstallOutcome(4, ModelRef("digits", 4, "cd" * 32), "refused", INCOMPATIBLE)
    hub.send(dev.frame(StateReport(active=MODEL, install=refused)))
    first = hub.clock.now_ms()
    hub.clock.advance(30)
    hub.send(dev.frame(StateReport(active=MODEL, install=refused)))  # repeated in every report

    device = hub.store.devices.get("dev-1")
    assert (device.refusal, device.refusal_at) == (f"refused: {INCOMPATIBLE}", first)

    hub.clock.advance(30)
    hub.send(dev.frame(DeviceAck(9, "desired", "refused", "expired: assignment v5 has expired")))
    device = hub.store.devices.get("dev-1")
    assert device.refusal == "refused desired: expired: assignment v5 has expired"
    assert device.refusal_at == hub.clock.now_ms()
    assert hub.acks(dev)[-1].committed[-1][-1] == 3


def test_an_install_that_went_through_leaves_the_last_refusal_readable(
    hub: HubSim, dev: SimDevice
) -> None:
    failed = InstallOutcome(4, MODEL, "failed", "slow_retrieval: 10 of 200 bytes by the deadline")
    hub.send(dev.frame(StateReport(active=None, install=failed)))
    hub.send(dev.frame(StateReport(active=MODEL, install=replace(failed, status="installed"))))
    assert hub.store.devices.get("dev-1").refusal == f"failed: {failed.reason}"
