"""The shadow assignment beside a device's served one: signed as a device checks it,
published in ``DesiredState.shadow``, dropped by a new served model, its artifact served;
and the shadow reports of the stored data windows summed into the gate's inputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hub.errors import Conflict
from hub.fleet.delivery import Delivery, FlowLimits
from hub.fleet.desired import assign_shadow, clear_shadow, publish_desired
from hub.fleet.documents import issue_heartbeat
from hub.fleet.rollout_inputs import _summed
from hub.store import NotFound
from protocol import trust
from protocol.messages import DesiredState, FetchRequest
from tests import models
from tests.clock import FakeClock
from tests.hub.test_api import make_api
from tests.hub.test_delivery import SETTINGS, chunks
from tests.hub.test_desired import DEVICE, RecordingDownlink, add_device, assign
from tests.hub.test_registry import Hub, make_hub, npz, reference


@pytest.fixture
def hub(tmp_path: Path, clock: FakeClock) -> Hub:
    """``iris`` v1 served by the device, v2 (another model with the same inputs) released."""
    hub = make_hub(tmp_path, clock)
    add_device(hub.store)
    hub.register()
    hub.register(models.mlp_classifier().model, reference=npz(X=models.mlp_classifier().x))
    assign(hub, None, 1)
    return hub


def shadow_on(hub: Hub, version: int = 2) -> None:
    with hub.store.immediate():
        assign_shadow(
            hub.context(),
            device_id=DEVICE,
            model_name="iris",
            model_version=version,
            actor="rollout:r-1",
            now_ms=hub.clock.now_ms(),
        )


def published(hub: Hub) -> DesiredState:
    downlink = RecordingDownlink()
    assert publish_desired(hub.context(downlink), DEVICE)
    return downlink.desired()


def device_state(hub: Hub, desired: DesiredState) -> trust.TrustedState:
    """A fresh device's trust core after the heartbeat and the release list."""
    assert desired.release_list is not None
    now = hub.clock.now_ms()
    beat = issue_heartbeat(hub.context())
    assert beat is not None
    state = trust.TrustedState.initial(hub.ring.chain[0])
    state = trust.update_heartbeat(state, beat, now)
    return trust.update_release_list(state, desired.release_list, now)


def test_the_shadow_is_published_beside_the_served_assignment_and_verifies(hub: Hub) -> None:
    shadow_on(hub)
    desired = published(hub)
    assert desired.shadow is not None
    assert desired.assignment is not None
    state = device_state(hub, desired)
    served = trust.verify_assignment(
        state, desired.assignment, hub.clock.now_ms(), device_id=DEVICE
    )
    shadow = trust.verify_shadow(served.state, desired.shadow, hub.clock.now_ms(), device_id=DEVICE)
    assert (served.assignment.entry.version, shadow.assignment.entry.version) == (1, 2)
    assert shadow.assignment.version > served.assignment.version
    assert hub.store.desired.get(DEVICE).published_at is not None


def test_setting_a_shadow_marks_the_desired_state_unpublished(hub: Hub) -> None:
    published(hub)
    shadow_on(hub)
    assert hub.store.desired.get(DEVICE).published_at is None


def test_clearing_the_shadow_publishes_a_desired_state_without_it(hub: Hub) -> None:
    shadow_on(hub)
    with hub.store.immediate():
        assert clear_shadow(hub.context(), device_id=DEVICE, actor="t", now_ms=0)
        assert not clear_shadow(hub.context(), device_id=DEVICE, actor="t", now_ms=0)
    assert published(hub).shadow is None


def test_a_new_served_model_drops_the_shadow(hub: Hub) -> None:
    shadow_on(hub)
    assign(hub, None, 2)
    desired = published(hub)
    assert desired.shadow is None
    assert hub.store.desired.get(DEVICE).model_version == 2


def test_a_device_without_a_desired_state_gets_no_shadow(hub: Hub) -> None:
    add_device(hub.store, "dev-2")
    with pytest.raises(NotFound), hub.store.immediate():
        assign_shadow(
            hub.context(), device_id="dev-2", model_name="iris", model_version=2, actor="t",
            now_ms=0,
        )  # fmt: skip


def test_a_shadow_the_device_could_not_take_is_refused(hub: Hub) -> None:
    hub.register(models.gemm_classifier(n_features=5), reference=reference(features=5))
    v1 = hub.registry.get_version("iris", 1)
    add_device(hub.store, "dev-2", active_name="iris", active_version=1, active_sha256=v1.sha256)
    assign(hub, None, 1, device_id="dev-2")
    with pytest.raises(Conflict, match="inputs"), hub.store.immediate():
        assign_shadow(
            hub.context(), device_id="dev-2", model_name="iris", model_version=3, actor="t",
            now_ms=0,
        )  # fmt: skip
    assert hub.store.desired.get("dev-2").shadow_version is None


def test_the_shadows_artifact_is_served_and_no_other(hub: Hub) -> None:
    downlink = RecordingDownlink()
    serve = Delivery(hub.store, hub.artifacts, downlink, hub.clock, SETTINGS, FlowLimits())
    shadow_sha = hub.registry.get_version("iris", 2).sha256
    assert serve.on_fetch(DEVICE, FetchRequest(shadow_sha, 0, 100)) == "refused"
    shadow_on(hub)
    assert serve.on_fetch(DEVICE, FetchRequest(shadow_sha, 0, 100)) == "sent"
    assert chunks(downlink)[-1].sha256 == shadow_sha
    served_sha = hub.registry.get_version("iris", 1).sha256
    assert serve.on_fetch(DEVICE, FetchRequest(served_sha, 0, 100)) == "sent"


def window(model: str, version: int, inputs: list[int], agreed: list[int]) -> dict[str, object]:
    ref = {"name": model, "version": version, "sha256": "0" * 64}
    return {"inference_count": 10, "shadow": {"model": ref, "inputs": inputs, "agreed": agreed}}


def test_shadow_reports_are_summed_per_class_for_the_rollouts_version_only() -> None:
    bodies = [
        window("iris", 2, [5, 3], [5, 0]),
        window("iris", 2, [1, 2, 4], [1, 2, 4]),
        window("iris", 3, [100], [0]),  # another version's shadow
        window("other", 2, [100], [0]),
        json.loads('{"inference_count": 4}'),  # no shadow ran
    ]
    metrics = _summed(bodies, ("iris", 2))
    assert (metrics.shadow_inputs, metrics.shadow_agreed) == ((6, 5, 4), (6, 2, 4))


def test_the_api_shows_the_shadow_beside_the_desired_model_and_sets_its_share(
    tmp_path: Path, clock: FakeClock
) -> None:
    api = make_api(tmp_path, clock)
    with api.client:
        add_device(api.store)
        api.hub.register()
        api.hub.register(models.mlp_classifier().model, reference=npz(X=models.mlp_classifier().x))
        path = f"/api/v1/devices/{DEVICE}/desired"
        body = {"model": "iris", "version": 1, "config": {"shadow_sample": 0.5}}
        assert api.call("PUT", path, role="operator", json=body).status_code == 200
        assert api.call("GET", path, role="viewer").json()["shadow_version"] is None
        shadow_on(api.hub)
        desired = api.call("GET", path, role="viewer").json()
        assert (desired["version"], desired["shadow_version"]) == (1, 2)
        assert desired["config"]["shadow_sample"] == 0.5
        bad = {"model": "iris", "version": 1, "config": {"shadow_sample": 1.5}}
        assert api.call("PUT", path, role="operator", json=bad).status_code == 422
