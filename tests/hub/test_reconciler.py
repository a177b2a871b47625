"""The reconciler on a fake clock (nudges, stuck once, recovery, republishing) and the
fleet documents it republishes (heartbeats, the root chain)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from hub import keyring
from hub.fleet import reconciler
from hub.fleet.desired import set_desired
from hub.fleet.documents import RELEASE_PUBLISHED, issue_heartbeat, signed_release
from hub.settings import HubSettings
from protocol import metadata, trust
from protocol.documents import SignedDocument
from protocol.messages import DesiredState, Nudge
from protocol.metadata import Heartbeat, decode_root_chain, encode_root_chain
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


def desire(hub: Hub, downlink: RecordingDownlink | None) -> None:
    set_desired(
        hub.store,
        hub.ring,
        downlink,
        hub.clock,
        SETTINGS,
        device_id=DEVICE,
        model_name="iris",
        model_version=1,
        actor="operator",
    )


def tick(hub: Hub, downlink: RecordingDownlink) -> reconciler.Actions:
    return reconciler.reconcile_job(hub.store, hub.ring, downlink, hub.clock, SETTINGS, hub.publish)


def heard(hub: Hub, **columns: Any) -> None:
    """The device sent a frame just now (ingest updates ``last_seen``)."""
    hub.store.update("devices", DEVICE, {"last_seen": hub.clock.now_ms(), **columns})


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
    assert hub.store.get("desired", DEVICE)["nudged_at"] == hub.clock.now_ms()


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
    assert hub.store.get("devices", DEVICE)["health"] == "stuck"
    for _ in range(3):
        hub.clock.advance(60)
        heard(hub)
        assert tick(hub, downlink).stuck == ()
    heard(hub, health="ok")  # ingest rewrote the health from a state report
    assert tick(hub, downlink).stuck == (DEVICE,)
    assert hub.store.get("devices", DEVICE)["health"] == "stuck"
    assert hub.store.count("audit", "action = 'device.stuck'") == 1


def test_offline_device_is_not_marked_stuck(hub: Hub, downlink: RecordingDownlink) -> None:
    desire(hub, downlink)
    hub.clock.advance(3600)
    assert tick(hub, downlink).stuck == ()


def test_back_in_sync_clears_stuck(hub: Hub, downlink: RecordingDownlink) -> None:
    desire(hub, downlink)
    hub.clock.advance(900)
    heard(hub)
    tick(hub, downlink)
    heard(hub, active_name="iris", active_version=1)
    assert tick(hub, downlink).recovered == (DEVICE,)
    assert hub.store.get("devices", DEVICE)["health"] == "ok"
    assert hub.store.get("desired", DEVICE)["stuck_at"] is None
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
    assert hub.store.counter(RELEASE_PUBLISHED) == 0
    assert tick(hub, downlink).publish_release
    assert [kind for kind, _ in hub.published] == ["release", "heartbeat"]
    assert hub.store.counter(RELEASE_PUBLISHED) == 1
    assert not tick(hub, downlink).publish_release


def test_republish_all_restores_every_retained_message(
    hub: Hub, downlink: RecordingDownlink
) -> None:
    desire(hub, downlink)
    hub.published.clear()
    kinds(downlink)
    sent = reconciler.republish_all(hub.store, hub.ring, downlink, hub.clock, SETTINGS, hub.publish)
    assert sent == 1
    assert [kind for kind, _ in hub.published] == ["root", "release", "heartbeat"]
    assert kinds(downlink) == ["DesiredState"]
    root_chain = hub.published[0][1]
    assert SignedDocument.from_bytes(hub.ring.chain[0].to_bytes()).payload in root_chain.decode()


def twin(**columns: Any) -> dict[str, Any]:
    row = {
        "device_id": DEVICE,
        "status": "active",
        "model_name": "iris",
        "model_version": 2,
        "set_at": 0,
        "published_at": 0,
        "nudged_at": None,
        "assignment_expires": 10**12,
        "stuck_at": None,
        "last_seen": 0,
        "active_name": "iris",
        "active_version": 1,
        "health": "ok",
    }
    return {**row, **columns}


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
def test_plan_is_a_pure_function_of_the_rows(row: dict[str, Any], expected: dict[str, Any]) -> None:
    actions = reconciler.plan(
        [row], now_ms=100_000, settings=SETTINGS, release_version=1, release_published=1
    )
    assert actions == reconciler.Actions(**expected)


# ---------------------------------------------------------------- fleet documents


def test_no_heartbeat_until_a_release_list_is_signed(tmp_path: Path, clock: FakeClock) -> None:
    hub = make_hub(tmp_path, clock, release_online=False)
    hub.register()
    assert issue_heartbeat(hub.store, hub.ring, clock, SETTINGS, hub.publish) is None
    assert hub.published == []


def test_heartbeats_pin_the_signed_release_list_with_growing_versions(hub: Hub) -> None:
    first = issue_heartbeat(hub.store, hub.ring, hub.clock, SETTINGS, hub.publish)
    hub.clock.advance(60)
    second = issue_heartbeat(hub.store, hub.ring, hub.clock, SETTINGS, hub.publish)
    assert first is not None
    assert second is not None
    beats = [metadata.parse(Heartbeat, doc) for doc in (first, second)]
    assert [b.version for b in beats] == [1, 2]
    assert beats[1].issued_at == hub.clock.now_ms()
    assert beats[1].expires == hub.clock.now_ms() + SETTINGS.heartbeat_expiry_s * 1000
    release_doc, release = signed_release(hub.store) or pytest.fail("no signed release")
    assert (beats[1].release_version, beats[1].release_sha256) == (
        release.version,
        metadata.payload_sha256(release_doc),
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
    assert hub.store.get("devices", DEVICE)["health"] == "unknown"
    hub.clock.advance(900)
    heard(hub)
    assert tick(hub, downlink).stuck == (DEVICE,)
    assert hub.store.count("audit", "action = 'device.stuck'") == 2
