"""The reconciler on a fake clock (nudges, stuck once, recovery, republishing) and the
fleet documents it republishes (heartbeats, the root chain)."""

from __future__ import annotations

from dataclasses import fields, replace
from pathlib import Path
from typing import Any

import pytest

from hub import keyring
from hub.context import HubContext
from hub.fleet import reconcile_plan, reconciler
from hub.fleet.desired import set_desired
from hub.fleet.documents import issue_heartbeat, signed_release
from hub.health import Health, derive
from hub.settings import HubSettings
from hub.store.rows import Desired, Device, ReportedTwin, Twin, UplinkSeen
from protocol import canonical, metadata, trust
from protocol.documents import SignedDocument, verify_threshold
from protocol.errors import ThresholdNotMet
from protocol.messages import DesiredState, Nudge
from protocol.metadata import Assignment, Heartbeat, Root, decode_root_chain, encode_root_chain
from tests.clock import FakeClock
from tests.hub.test_desired import DEVICE, RecordingDownlink, add_device
from tests.hub.test_registry import Hub, make_hub

SETTINGS = HubSettings(
    data_dir=Path("unused"), nudge_every_s=60, stuck_after_s=900, offline_after_s=120
)


@pytest.fixture
def hub(tmp_path: Path, clock: FakeClock) -> Hub:
    hub = make_hub(tmp_path, clock)
    add_device(hub.store, last_seen=clock.now_ms())
    hub.register()
    return hub


@pytest.fixture
def downlink() -> RecordingDownlink:
    return RecordingDownlink()


def ctx(hub: Hub, downlink: RecordingDownlink | None = None) -> HubContext:
    """The running hub's context: its fleet documents reach the broker (are recorded)."""
    return replace(hub.context(downlink, SETTINGS), fleet=hub.publish)


def desire(hub: Hub, downlink: RecordingDownlink | None) -> None:
    set_desired(
        ctx(hub, downlink),
        device_id=DEVICE,
        model_name="iris",
        model_version=1,
        actor="operator",
    )


def tick(hub: Hub, downlink: RecordingDownlink) -> reconciler.Actions:
    return reconciler.reconcile_job(ctx(hub, downlink))


def heard(hub: Hub) -> None:
    """The device sent a frame just now (ingest updates ``last_seen``)."""
    hub.store.devices.note_uplink([UplinkSeen(DEVICE, b"", hub.clock.now_ms(), online=True)])


def reported(hub: Hub, version: int, flags: tuple[str, ...] = ()) -> None:
    """The device sent a state report running iris v``version`` (as ingest applies it)."""
    heard(hub)
    body = canonical.dumps({"flags": list(flags)}).decode()
    now = hub.clock.now_ms()
    hub.store.devices.report_state(DEVICE, now, ReportedTwin("iris", version, "ab" * 32, body, now))
    stuck = DEVICE in hub.store.desired.stuck_among([DEVICE])
    hub.store.devices.set_health(DEVICE, derive(flags, stuck=stuck))


def kinds(downlink: RecordingDownlink) -> list[str]:
    kinds = [type(message).__name__ for _, message, _ in downlink.sent]
    downlink.sent.clear()
    return kinds


def test_lagging_device_is_nudged_once_per_interval(hub: Hub, downlink: RecordingDownlink) -> None:
    desire(hub, downlink)
    assert kinds(downlink) == ["DesiredState"]
    assert tick(hub, downlink) == reconciler.Actions()
    hub.clock.advance(59)
    heard(hub)
    assert tick(hub, downlink).nudge == ()
    hub.clock.advance(1)
    assert tick(hub, downlink).nudge == (DEVICE,)
    assert kinds(downlink) == ["DesiredState", "Nudge"]
    assert downlink.sent == []
    assert tick(hub, downlink).nudge == ()
    hub.clock.advance(60)
    heard(hub)
    assert tick(hub, downlink).nudge == (DEVICE,)
    assert hub.store.desired.get(DEVICE).nudged_at == hub.clock.now_ms()


def test_nudge_asks_the_device_to_reread_its_desired_state(
    hub: Hub, downlink: RecordingDownlink
) -> None:
    desire(hub, downlink)
    hub.clock.advance(60)
    heard(hub)
    tick(hub, downlink)
    (_, desired, retained), (_, nudge, _) = downlink.sent[-2:]
    assert isinstance(desired, DesiredState)
    assert retained
    assert nudge == Nudge("desired")


def test_device_not_heard_from_is_not_nudged(hub: Hub, downlink: RecordingDownlink) -> None:
    desire(hub, downlink)
    hub.clock.advance(600)
    assert tick(hub, downlink).nudge == ()


def test_stuck_after_the_timeout_audited_once(hub: Hub, downlink: RecordingDownlink) -> None:
    desire(hub, downlink)
    hub.clock.advance(899)
    heard(hub)
    assert tick(hub, downlink).stuck == ()
    hub.clock.advance(1)
    heard(hub)
    assert tick(hub, downlink).stuck == (DEVICE,)
    assert hub.store.devices.get(DEVICE).health == Health.STUCK
    for _ in range(3):
        hub.clock.advance(60)
        heard(hub)
        assert tick(hub, downlink).stuck == ()
    reported(hub, version=2, flags=("freeze_suspected",))  # still lagging, and says why
    assert tick(hub, downlink).stuck == ()
    assert hub.store.devices.get(DEVICE).health == Health.STUCK
    assert hub.store.audit.count(action="device.stuck") == 1


def test_offline_device_is_not_marked_stuck(hub: Hub, downlink: RecordingDownlink) -> None:
    desire(hub, downlink)
    hub.clock.advance(3600)
    assert tick(hub, downlink).stuck == ()


def test_back_in_sync_clears_stuck(hub: Hub, downlink: RecordingDownlink) -> None:
    desire(hub, downlink)
    hub.clock.advance(900)
    heard(hub)
    tick(hub, downlink)
    reported(hub, version=1)
    assert tick(hub, downlink).recovered == (DEVICE,)
    assert hub.store.devices.get(DEVICE).health == Health.OK
    assert hub.store.desired.get(DEVICE).stuck_at is None
    hub.clock.advance(120)
    heard(hub)
    assert tick(hub, downlink) == reconciler.Actions()


def test_desired_stored_without_a_broker_is_published_on_the_next_tick(
    hub: Hub, downlink: RecordingDownlink
) -> None:
    desire(hub, None)
    assert tick(hub, downlink).publish == (DEVICE,)
    assert kinds(downlink) == ["DesiredState"]
    assert tick(hub, downlink).publish == ()


def test_release_list_the_broker_missed_is_published_with_a_heartbeat(
    tmp_path: Path, clock: FakeClock, downlink: RecordingDownlink
) -> None:
    hub = make_hub(tmp_path, clock, publisher=lambda kind, payload: False)
    hub.register()
    assert hub.store.counters.get("release_published") == 0
    assert tick(hub, downlink).publish_release
    assert [kind for kind, _ in hub.published] == ["release", "heartbeat"]
    assert hub.store.counters.get("release_published") == 1
    assert not tick(hub, downlink).publish_release


def test_republish_all_restores_every_retained_message(
    hub: Hub, downlink: RecordingDownlink
) -> None:
    desire(hub, downlink)
    hub.published.clear()
    kinds(downlink)
    sent = reconciler.republish_all(ctx(hub, downlink))
    assert sent == 1
    assert [kind for kind, _ in hub.published] == ["root", "release", "heartbeat"]
    assert kinds(downlink) == ["DesiredState"]
    root_chain = hub.published[0][1]
    assert SignedDocument.from_bytes(hub.ring.chain[0].to_bytes()).payload in root_chain.decode()


def twin(**columns: Any) -> Twin:
    desired = Desired(DEVICE, "iris", 2, 1, "{}", set_at=0, set_by="op",
                      assignment_expires=10**12, published_at=0)  # fmt: skip
    device = Device(DEVICE, "ab" * 32, "active", first_seen=0, last_seen=0,
                    active_name="iris", active_version=1, health=Health.OK)  # fmt: skip
    desired_fields = {f.name for f in fields(Desired)}
    return Twin(
        replace(desired, **{k: v for k, v in columns.items() if k in desired_fields}),
        replace(device, **{k: v for k, v in columns.items() if k not in desired_fields}),
    )


@pytest.mark.parametrize(
    ("row", "expected"),
    [
        pytest.param(twin(), {"nudge": (DEVICE,)}, id="lagging-heard"),
        pytest.param(twin(active_version=2), {}, id="in-sync"),
        pytest.param(twin(status="revoked"), {}, id="revoked"),
        pytest.param(twin(published_at=None), {"publish": (DEVICE,)}, id="never-published"),
        pytest.param(twin(nudged_at=60_000), {}, id="nudged-recently"),
        pytest.param(
            twin(active_version=2, assignment_expires=200_000), {"publish": (DEVICE,)}, id="reissue"
        ),
        pytest.param(
            twin(active_version=2, stuck_at=5, health="stuck"),
            {"recovered": (DEVICE,)},
            id="recovered",
        ),
    ],
)
def test_plan_is_a_pure_function_of_the_rows(row: Twin, expected: dict[str, Any]) -> None:
    actions = reconcile_plan.plan(
        [row], now_ms=100_000, settings=SETTINGS, release_version=1, release_published=1
    )
    assert actions == reconciler.Actions(**expected)


# ---------------------------------------------------------------- fleet documents


def test_no_heartbeat_until_a_release_list_is_signed(tmp_path: Path, clock: FakeClock) -> None:
    hub = make_hub(tmp_path, clock, release_online=False)
    hub.register()
    assert issue_heartbeat(ctx(hub)) is None
    assert hub.published == []


def test_heartbeats_pin_the_signed_release_list_with_growing_versions(hub: Hub) -> None:
    first = issue_heartbeat(ctx(hub))
    hub.clock.advance(60)
    second = issue_heartbeat(ctx(hub))
    assert first is not None
    assert second is not None
    beats = [metadata.parse(Heartbeat, doc) for doc in (first, second)]
    assert [b.version for b in beats] == [2, 3]  # v1 pinned the release list at once
    assert beats[1].issued_at == hub.clock.now_ms()
    assert beats[1].expires == hub.clock.now_ms() + SETTINGS.heartbeat_expiry_s * 1000
    current = signed_release(hub.store) or pytest.fail("no signed release")
    assert (beats[1].release_version, beats[1].release_sha256) == (
        current.version,
        metadata.payload_sha256(current.document),
    )
    state = trust.TrustedState.initial(hub.ring.chain[0])
    trust.update_heartbeat(state, second, hub.clock.now_ms())


def test_root_chain_round_trips_through_its_wire_form(tmp_path: Path, clock: FakeClock) -> None:
    keyring.init(tmp_path / "keys", now_ms=clock.now_ms())
    ring = keyring.rotate(tmp_path / "keys", "rollout", now_ms=clock.now_ms())
    assert decode_root_chain(encode_root_chain(ring.chain)) == list(ring.chain)
    state = trust.update_root(trust.TrustedState.initial(ring.chain[0]), ring.chain)
    assert state.root.version == 2


def test_a_new_desired_state_ends_a_stuck_episode(hub: Hub, downlink: RecordingDownlink) -> None:
    desire(hub, downlink)
    hub.clock.advance(900)
    heard(hub)
    assert tick(hub, downlink).stuck == (DEVICE,)
    desire(hub, downlink)
    assert hub.store.devices.get(DEVICE).health == Health.UNKNOWN  # it never reported
    hub.clock.advance(900)
    heard(hub)
    assert tick(hub, downlink).stuck == (DEVICE,)
    assert hub.store.audit.count(action="device.stuck") == 2


def test_rekey_publishes_the_new_root_a_heartbeat_and_every_assignment_resigned(
    hub: Hub, downlink: RecordingDownlink
) -> None:
    desire(hub, downlink)
    old = hub.ring
    new = keyring.rotate(old.path, "rollout", now_ms=hub.clock.now_ms())
    downlink.sent.clear()
    hub.published.clear()

    sent = reconciler.rekey(replace(ctx(hub, downlink), keyring=new), old, new)

    assert sent == 1
    assert [kind for kind, _ in hub.published] == ["root", "heartbeat"]
    chain = decode_root_chain(hub.published[0][1])
    assert [metadata.parse(Root, doc).version for doc in chain] == [1, 2]
    doc = downlink.desired().assignment
    assert doc is not None
    verify_threshold(doc, "assignment", new.root.role_keys("rollout"), 1)
    with pytest.raises(ThresholdNotMet):
        verify_threshold(doc, "assignment", old.root.role_keys("rollout"), 1)
    assert metadata.parse(Assignment, doc).version == 2
    [row] = hub.store.audit.page(action="keys.reloaded").items
    assert canonical.loads(row.detail.encode())["rotated"] == ["rollout"]


def test_rekey_of_the_heartbeat_key_alone_reissues_no_assignment(
    hub: Hub, downlink: RecordingDownlink
) -> None:
    desire(hub, downlink)
    old = hub.ring
    new = keyring.rotate(old.path, "heartbeat", now_ms=hub.clock.now_ms())
    downlink.sent.clear()
    hub.published.clear()

    assert reconciler.rekey(replace(ctx(hub, downlink), keyring=new), old, new) == 0

    assert [kind for kind, _ in hub.published] == ["root", "heartbeat"]
    beat = SignedDocument.from_bytes(hub.published[1][1])
    assert metadata.parse(Heartbeat, beat).version > 0
    verify_threshold(beat, "heartbeat", new.root.role_keys("heartbeat"), 1)
    assert downlink.sent == []
