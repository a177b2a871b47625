"""A hub with something to show, built through the paths the hub itself takes.

``iris`` v1 and v2 registered and released; six ``iris`` devices (``ring=gate``) running
v1, with a rollout of v2 created over REST whose first stage the devices pass (they
install as told) and whose second waits for approval; the
drift fixture's 100 ``sensor`` devices (regions eu/us/asia) whose windows are merged as
ingest merges them and scored by the scheduler's job until the eu cohort drifts and an
alert opens (tests/hub/monitor/test_store_path.py's :class:`Fleet`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

from fastapi import FastAPI

from hub.fleet import rollouts
from tests import models
from tests.clock import FakeClock
from tests.hub.monitor.drifthub import add_devices, register_sensor
from tests.hub.monitor.test_store_path import EU, REGIONS, Fleet
from tests.hub.rollouts_shell.test_shell import run_devices
from tests.hub.test_api import Api, add_device, make_api

IRIS_DEVICES = 6
APPROVAL_SPEC: dict[str, Any] = {
    "model": "iris",
    "version": 2,
    "target": {"tags": {"ring": "gate"}},
    "stages": [
        {"percent": 50, "bake_ms": 1000, "gates": [{"metric": "update_success"}]},
        {"percent": 100, "bake_ms": 0, "approval": True, "gates": [{"metric": "update_success"}]},
    ],
    "device_timeout_ms": 60000,
}


def app_of(api: Api) -> FastAPI:
    """The hub's app behind the test client (its state holds the dashboard's settings)."""
    return cast(FastAPI, api.client.app)


def make_dashboard_hub(root: Path, clock: FakeClock, *, drift: bool = True) -> Api:
    api = make_api(root, clock)
    api.hub.register(models.gemm_classifier(hidden=6))
    api.hub.register(models.gemm_classifier(hidden=7))
    v1 = api.store.registry.version("iris", 1)
    assert v1 is not None
    for k in range(IRIS_DEVICES):
        add_device(
            api.store, f"iris-{k}", online=True, active_name="iris", active_version=1,
            active_sha256=v1.sha256, tags={"ring": "gate", "hw": "a" if k % 2 else "b"},
        )  # fmt: skip
    created = api.call("POST", "/api/v1/rollouts", role="operator", json=APPROVAL_SPEC)
    assert created.status_code == 201, created.text
    ctx = api.hub.context()
    for _ in range(3):  # the devices install v2, the first stage bakes and passes its gate
        run_devices(api.store)
        clock.advance(2)
        rollouts.tick(ctx)
    phase = api.call("GET", "/api/v1/rollouts/r-1", role="viewer").json()["phase"]
    assert phase == "awaiting_approval", phase
    if drift:
        add_devices(api.hub, {f"d{i:03d}": {"region": r} for i, r in enumerate(REGIONS)})
        fleet = Fleet(api.hub, register_sensor(api.hub))
        for shifted in (frozenset(), EU, EU):
            fleet.bucket(shifted)
        assert api.store.drift.alerts(state="open"), "the eu shift should open an alert"
    return api
