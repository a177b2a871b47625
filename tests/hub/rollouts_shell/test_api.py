"""``/api/v1/rollouts`` over the real FastAPI app, store and key ring (fake clock)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hub.fleet import rollouts
from tests import models
from tests.clock import FakeClock
from tests.hub.rollouts_shell.test_shell import run_devices
from tests.hub.test_api import Api, add_device, make_api

SPEC: dict[str, Any] = {
    "model": "iris",
    "version": 2,
    "stages": [
        {"percent": 50, "bake_ms": 1000, "extend_ms": 0, "gates": [{"metric": "update_success"}]},
        {"percent": 100, "bake_ms": 0, "gates": [{"metric": "update_success"}]},
    ],
    "device_timeout_ms": 60000,
}


@pytest.fixture
def api(tmp_path: Path, clock: FakeClock) -> Iterator[Api]:
    built = make_api(tmp_path, clock)
    built.hub.register(models.gemm_classifier(hidden=6))
    built.hub.register(models.gemm_classifier(hidden=7))
    v1 = built.store.registry.version("iris", 1)
    assert v1 is not None
    for k in range(6):
        add_device(
            built.store, f"d-{k}", online=True, active_name="iris", active_version=1,
            active_sha256=v1.sha256, tags={"hw": "a" if k % 2 else "b"},
        )  # fmt: skip
    with built.client:
        yield built


def test_an_operator_starts_a_rollout_and_anyone_can_follow_it_to_the_end(api: Api) -> None:
    created = api.call("POST", "/api/v1/rollouts", role="operator", json=SPEC)
    assert created.status_code == 201, created.text
    view = created.json()
    assert (view["id"], view["phase"], view["stage"]) == ("r-1", "baking", 0)
    assert view["counts"][0]["updating"] == 3
    assert view["counts"][1]["pending"] == 3
    ctx = api.hub.context()
    for _ in range(10):
        run_devices(api.store)
        api.hub.clock.advance(2)
        rollouts.tick(ctx)
    shown = api.call("GET", "/api/v1/rollouts/r-1", role="viewer").json()
    assert shown["phase"] == "completed"
    assert [c["succeeded"] for c in shown["counts"]] == [3, 3]
    assert {(g["stage"], g["metric"], g["outcome"]) for g in shown["gates"]} == {
        (0, "update_success", "pass"),
        (1, "update_success", "pass"),
    }
    assert shown["timeline"][0]["line"].startswith("created: iris v2, 6 devices")
    listed = api.call("GET", "/api/v1/rollouts?model=iris&phase=completed", role="viewer")
    assert [r["id"] for r in listed.json()] == ["r-1"]
    scraped = api.call("GET", "/metrics", role="viewer").text
    assert 'edgefleet_rollouts{phase="completed"} 1.0' in scraped
    assert 'edgefleet_rollout_devices{rollout="r-1",state="succeeded"} 6.0' in scraped
    assert 'edgefleet_rollout_gate{metric="update_success",outcome="pass",rollout="r-1"} 1.0' in (
        scraped
    )


def test_pause_resume_abort_and_a_refused_action_say_why(api: Api) -> None:
    assert api.call("POST", "/api/v1/rollouts", role="operator", json=SPEC).status_code == 201
    paused = api.call("POST", "/api/v1/rollouts/r-1/pause", role="operator", json={"reason": "x"})
    assert paused.json()["phase"] == "paused"
    approve = api.call("POST", "/api/v1/rollouts/r-1/approve", role="operator", json={})
    assert approve.status_code == 409
    assert "paused" in approve.json()["detail"]
    resumed = api.call("POST", "/api/v1/rollouts/r-1/resume", role="operator", json={})
    assert resumed.json()["phase"] == "baking"
    aborted = api.call("POST", "/api/v1/rollouts/r-1/abort", role="operator", json={})
    assert aborted.json()["phase"] == "aborted"
    back = api.call("POST", "/api/v1/rollouts/r-1/rollback", role="operator", json={})
    assert back.json()["phase"] in ("rolling_back", "rolled_back")
    viewer = api.call("POST", "/api/v1/rollouts/r-1/pause", role="viewer", json={})
    assert viewer.status_code == 403


def test_a_bad_spec_a_conflict_and_an_unknown_rollout_are_4xx_with_a_reason(api: Api) -> None:
    bad = api.call("POST", "/api/v1/rollouts", role="operator", json={**SPEC, "stages": []})
    assert bad.status_code == 422
    assert "stages" in bad.json()["detail"]
    assert api.call("POST", "/api/v1/rollouts", role="operator", json=SPEC).status_code == 201
    again = api.call("POST", "/api/v1/rollouts", role="operator", json=SPEC)
    assert again.status_code == 409
    assert "r-1" in again.json()["detail"]
    assert api.call("GET", "/api/v1/rollouts/r-9", role="viewer").status_code == 404
    unreleased = api.call("POST", "/api/v1/rollouts/dry-run", role="operator",
                          json={**SPEC, "version": 7})  # fmt: skip
    assert unreleased.status_code == 200


def test_a_dry_run_lists_each_stages_devices_and_warns_of_small_stages(api: Api) -> None:
    spec = {**SPEC, "stages": [{"percent": 20}, {"percent": 100, "gates": []}]}
    found = api.call("POST", "/api/v1/rollouts/dry-run", role="operator", json=spec).json()
    assert found["target_size"] == 6
    assert sum(len(s) for s in found["stages"]) == 6
    assert len(found["stages"][0]) == 2
    assert found["warnings"], "2 canaries cannot feed a comparative gate that needs 5"
