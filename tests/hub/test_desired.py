"""Desired state: assignments signed with the rollout key, checked as a device checks them."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from hub.errors import Conflict, KeyUnavailable
from hub.fleet.desired import clear_desired, publish_desired, set_desired
from hub.fleet.documents import issue_heartbeat
from hub.settings import HubSettings
from hub.store import NotFound, Store
from hub.store.rows import Device, DeviceStatus
from protocol import metadata, trust
from protocol.frame import Message
from protocol.messages import DesiredState, DeviceConfig
from protocol.metadata import Assignment, ReleaseList
from tests import models
from tests.clock import FakeClock
from tests.hub.test_registry import Hub, cli, make_hub, npz, raise_floor, snapshot

DEVICE = "dev-1"


@dataclass
class RecordingDownlink:
    """The downlink seam (:class:`hub.context.Sender`): records what would be signed and
    published, as seq 1, 2, ...; ``up`` False: the link is down."""

    up: bool = True
    sent: list[tuple[str, Message, bool]] = field(default_factory=list)

    def send(self, device_id: str, message: Message, *, retain: bool = False) -> int | None:
        if not self.up:
            return None
        self.sent.append((device_id, message, retain))
        return len(self.sent)

    def desired(self) -> DesiredState:
        _, message, retain = self.sent[-1]
        assert retain
        assert isinstance(message, DesiredState)
        return message


def add_device(
    store: Store, device_id: str = DEVICE, status: DeviceStatus = "active", **columns: Any
) -> None:
    store.devices.add(Device(device_id, "ab" * 32, status, first_seen=0, **columns))


def settings(root: Path) -> HubSettings:
    return HubSettings(data_dir=root)


def register_two(hub: Hub) -> None:
    hub.register()
    hub.register(models.mlp_classifier().model, reference=npz(X=models.mlp_classifier().x))


@pytest.fixture
def hub(tmp_path: Path, clock: FakeClock) -> Hub:
    hub = make_hub(tmp_path, clock)
    add_device(hub.store)
    return hub


def assign(
    hub: Hub, downlink: RecordingDownlink | None, version: int, **kwargs: object
) -> Assignment:
    return set_desired(
        hub.context(downlink),
        device_id=kwargs.pop("device_id", DEVICE),  # type: ignore[arg-type]
        model_name="iris",
        model_version=version,
        actor="operator",
        **kwargs,  # type: ignore[arg-type]
    )


def device_accepts(hub: Hub, desired: DesiredState) -> trust.AssignmentVerdict:
    """A fresh device's trust core: heartbeat, release list, then the assignment."""
    assert desired.assignment is not None
    assert desired.release_list is not None
    now = hub.clock.now_ms()
    beat = issue_heartbeat(replace(hub.context(), fleet=None))
    assert beat is not None
    state = trust.TrustedState.initial(hub.ring.chain[0])
    state = trust.update_heartbeat(state, beat, now)
    state = trust.update_release_list(state, desired.release_list, now)
    return trust.verify_assignment(state, desired.assignment, now, device_id=DEVICE)


def test_assignment_verifies_against_the_release_list_it_names(hub: Hub) -> None:
    reg = hub.register()
    downlink = RecordingDownlink()
    assignment = assign(hub, downlink, 1, config=DeviceConfig(window_s=5.0))
    assert assignment.version == 1
    assert assignment.entry.sha256 == reg.sha256
    desired = downlink.desired()
    assert desired.config == DeviceConfig(window_s=5.0)
    verdict = device_accepts(hub, desired)
    assert verdict.status == "new"
    assert verdict.assignment == assignment
    row = hub.store.desired.get(DEVICE)
    assert (row.model_name, row.model_version, row.assignment_version) == ("iris", 1, 1)
    assert row.published_at == hub.clock.now_ms()
    assert hub.store.audit.count(action="desired.set") == 1


def test_unknown_device_is_not_found(hub: Hub) -> None:
    hub.register()
    before = snapshot(hub.store)
    with pytest.raises(NotFound):
        assign(hub, RecordingDownlink(), 1, device_id="dev-404")
    assert snapshot(hub.store) == before


def test_revoked_device_is_refused(hub: Hub) -> None:
    hub.register()
    add_device(hub.store, "dev-2", status="revoked")
    downlink = RecordingDownlink()
    before = snapshot(hub.store)
    with pytest.raises(Conflict, match="revoked"):
        assign(hub, downlink, 1, device_id="dev-2")
    assert snapshot(hub.store) == before
    assert downlink.sent == []


def test_unreleased_version_is_refused(tmp_path: Path, clock: FakeClock) -> None:
    hub = make_hub(tmp_path, clock, release_online=False)
    add_device(hub.store)
    hub.register()
    before = snapshot(hub.store)
    with pytest.raises(Conflict, match="no release list has been signed yet"):
        assign(hub, RecordingDownlink(), 1)
    assert snapshot(hub.store) == before


def test_version_missing_from_the_signed_list_is_not_released_yet(hub: Hub) -> None:
    hub.register()
    (hub.root / "keys" / "release.pem").rename(hub.root / "release.pem")
    hub.reload_keys()  # the release key goes offline
    hub.register(models.mlp_classifier().model, reference=npz(X=models.mlp_classifier().x))
    before = snapshot(hub.store)
    with pytest.raises(Conflict, match="version 2 of iris is not released yet"):
        assign(hub, RecordingDownlink(), 2)
    with pytest.raises(NotFound):
        assign(hub, RecordingDownlink(), 9)
    assert snapshot(hub.store) == before


def test_rollback_is_a_new_assignment_with_the_older_entry(hub: Hub) -> None:
    register_two(hub)
    downlink = RecordingDownlink()
    newer = assign(hub, downlink, 2)
    older = assign(hub, downlink, 1)
    assert older.version == newer.version + 1
    assert older.entry.version == 1
    assert older.entry.release_counter < newer.entry.release_counter
    assert device_accepts(hub, downlink.desired()).assignment == older


def test_rollback_below_the_floor_is_refused(tmp_path: Path, clock: FakeClock) -> None:
    hub = make_hub(tmp_path, clock, release_online=False)
    add_device(hub.store)
    register_two(hub)
    raise_floor(hub, 2)
    before = snapshot(hub.store)
    with pytest.raises(Conflict, match="below the rollback floor 2"):
        assign(hub, RecordingDownlink(), 1)
    assert snapshot(hub.store) == before
    downlink = RecordingDownlink()
    assign(hub, downlink, 2)
    assert device_accepts(hub, downlink.desired()).assignment.entry.version == 2


def test_without_a_downlink_the_change_is_stored_for_the_hub_to_publish(hub: Hub) -> None:
    hub.register()
    assign(hub, None, 1)
    assert hub.store.desired.get(DEVICE).published_at is None
    downlink = RecordingDownlink(up=False)
    assert not publish_desired(hub.context(downlink), DEVICE)
    downlink.up = True
    assert publish_desired(hub.context(downlink), DEVICE)
    assert hub.store.desired.get(DEVICE).published_at == hub.clock.now_ms()
    assert device_accepts(hub, downlink.desired()).status == "new"


def test_a_new_release_needs_no_new_assignment(hub: Hub) -> None:
    hub.register()
    downlink = RecordingDownlink()
    first = assign(hub, downlink, 1)
    hub.register(models.mlp_classifier().model, reference=npz(X=models.mlp_classifier().x))
    assert publish_desired(hub.context(downlink), DEVICE)
    desired = downlink.desired()
    assert desired.assignment is not None
    assert desired.release_list is not None
    assert metadata.parse(Assignment, desired.assignment) == first
    assert metadata.parse(ReleaseList, desired.release_list).version == 2
    assert device_accepts(hub, desired).assignment == first


def test_an_assignment_past_half_its_life_is_reissued(hub: Hub) -> None:
    hub.register()
    downlink = RecordingDownlink()
    first = assign(hub, downlink, 1)
    hub.clock.advance(settings(hub.root).assignment_expiry_s / 2 + 1)
    publish_desired(hub.context(downlink), DEVICE)
    assert downlink.desired().assignment is not None
    reissued = metadata.parse(Assignment, downlink.desired().assignment)  # type: ignore[arg-type]
    assert reissued.version == first.version + 1
    assert reissued.expires > first.expires


def test_clear_desired_publishes_no_assignment(hub: Hub) -> None:
    hub.register()
    downlink = RecordingDownlink()
    assign(hub, downlink, 1, config=DeviceConfig(window_s=7.0))
    clear_desired(hub.context(downlink), device_id=DEVICE, actor="operator")
    assert downlink.desired() == DesiredState(DeviceConfig(window_s=7.0))
    assert hub.store.desired.find(DEVICE) is None


def test_missing_rollout_key_is_key_unavailable(hub: Hub) -> None:
    hub.register()
    (hub.root / "keys" / "rollout.pem").rename(hub.root / "rollout.pem")
    hub.reload_keys()
    before = snapshot(hub.store)
    with pytest.raises(KeyUnavailable):
        assign(hub, RecordingDownlink(), 1)
    assert snapshot(hub.store) == before


def test_cli_rollout_set_stores_the_desired_state_for_the_hub(
    hub: Hub, capsys: pytest.CaptureFixture[str]
) -> None:
    hub.register()
    assert (
        cli(
            "rollout",
            "set",
            "--device",
            DEVICE,
            "--model",
            "iris",
            "--version",
            "1",
            "--data",
            hub.root,
        )
        == 0
    )
    assert "dev-1 should run iris v1 (assignment v1)" in capsys.readouterr().out
    row = hub.store.desired.get(DEVICE)
    assert (row.model_version, row.published_at) == (1, None)
    code = cli(
        "rollout",
        "set",
        "--device",
        "dev-9",
        "--model",
        "iris",
        "--version",
        "1",
        "--data",
        hub.root,
    )
    assert code == 2
    assert capsys.readouterr().err.startswith("edgefleet rollout set: error: no device 'dev-9'")


def test_a_version_the_device_would_refuse_as_incompatible_is_refused_with_its_reason(
    hub: Hub,
) -> None:
    """The device checks shapes and dtypes of its inputs before it installs (names do not
    matter); the hub checks the same against what the device last reported active."""
    runs = hub.register()
    hub.register(models.gemm_classifier(n_features=5), reference=npz(X=np.ones((50, 5), "f4")))
    add_device(hub.store, "dev-2", active_name="iris", active_version=1, active_sha256=runs.sha256)
    downlink = RecordingDownlink()
    before = snapshot(hub.store)

    with pytest.raises(Conflict) as refused:
        assign(hub, downlink, 2, device_id="dev-2")

    assert str(refused.value).startswith("incompatible: device dev-2 runs iris v1")
    assert "its input has shape [?,5], the active model's [?,4]" in str(refused.value)
    assert refused.value.status_hint == 409
    assert snapshot(hub.store) == before
    assert downlink.sent == []
    assert assign(hub, downlink, 1, device_id="dev-2").entry.sha256 == runs.sha256


@pytest.mark.parametrize(
    "active",
    [
        pytest.param({}, id="no-model-reported"),
        pytest.param(
            {"active_name": "iris", "active_version": 1, "active_sha256": "cd" * 32},
            id="bytes-the-registry-does-not-hold",
        ),
    ],
)
def test_a_device_whose_active_model_the_hub_cannot_see_is_left_to_check_itself(
    hub: Hub, active: dict[str, Any]
) -> None:
    hub.register()
    hub.register(models.gemm_classifier(n_features=5), reference=npz(X=np.ones((50, 5), "f4")))
    add_device(hub.store, "dev-3", **active)
    assert assign(hub, RecordingDownlink(), 2, device_id="dev-3").version == 1
