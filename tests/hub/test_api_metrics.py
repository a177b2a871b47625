"""``/metrics``: the fleet's gauges are counted from the store at scrape time."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from hub.api.app import create_app
from hub.api.fleet_metrics import MAX_REASONS, reason_code
from hub.api.services import HubServices
from hub.health import Health
from hub.store.rows import DataWindowRecord, DeltaRecord
from tests.clock import FakeClock
from tests.hub.test_api import Api, add_device, make_api


@pytest.fixture
def api(tmp_path: Path, clock: FakeClock) -> Iterator[Api]:
    built = make_api(tmp_path, clock)
    with built.client:
        yield built


def samples(api: Api) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = api.call("GET", "/metrics", role="viewer").text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        if family.name.startswith("edgefleet_fleet_")
        for s in family.samples
    }


def install(status: str, reason: str = "") -> str:
    return json.dumps({"install": {"status": status, "reason": reason}})


def delta(device: str, seq: int) -> DeltaRecord:
    return DeltaRecord(
        device, seq, 0, 0, "iris", 1, "a" * 64, None, 8, "accuracy", 0.5, 0.6, 1.0, b""
    )


def window(device: str, seq: int) -> DataWindowRecord:
    return DataWindowRecord(device, seq, 0, 0, 0, 60_000, "iris", 1, "{}")


def test_fleet_gauges_count_what_the_store_holds(api: Api) -> None:
    api.hub.register()
    running: dict[str, Any] = {"active_name": "iris", "active_version": 1}
    add_device(
        api.store, "a-1", online=True, health=Health.OK, **running, reported=install("installed")
    )
    add_device(api.store, "a-2", online=True, health=Health.STUCK, **running)
    add_device(
        api.store, "a-3", health=Health.DEGRADED,
        reported=install("refused", "incompatible: its inputs differ from the active model's"),
    )  # fmt: skip
    add_device(api.store, "p-1", "pending")
    add_device(api.store, "p-2", "pending")
    add_device(api.store, "r-1", "revoked", **running)
    for device in ("a-2", "a-3"):
        api.call("PUT", f"/api/v1/devices/{device}/desired", json={"model": "iris", "version": 1})
    api.store.devices.set_health("a-2", Health.STUCK)  # setting desired state ended the episode
    api.store.uplink.add([delta("a-1", 1), delta("a-1", 2), window("a-1", 3)])

    got = samples(api)

    assert got[("edgefleet_fleet_devices", (("status", "active"),))] == 3
    assert got[("edgefleet_fleet_devices", (("status", "pending"),))] == 2
    assert got[("edgefleet_fleet_devices", (("status", "revoked"),))] == 1
    assert got[("edgefleet_fleet_devices_online", ())] == 2
    assert got[("edgefleet_fleet_devices_by_model", (("model", "iris"), ("version", "1")))] == 2
    health = {k[1][0][1]: v for k, v in got.items() if k[0] == "edgefleet_fleet_devices_by_health"}
    assert health == {"ok": 1, "stuck": 1, "degraded": 1}
    assert got[("edgefleet_fleet_updates_pending", ())] == 1  # a-3 runs nothing yet
    installs = {k[1]: v for k, v in got.items() if k[0] == "edgefleet_fleet_installs"}
    assert installs == {
        (("outcome", "installed"), ("reason", "")): 1,
        (("outcome", "refused"), ("reason", "incompatible")): 1,
    }
    assert got[("edgefleet_fleet_deltas_received_total", ())] == 2
    assert got[("edgefleet_fleet_windows_received_total", ())] == 1


def test_a_change_beside_the_app_shows_at_the_next_scrape_of_any_app(api: Api) -> None:
    assert samples(api)[("edgefleet_fleet_devices", (("status", "pending"),))] == 0
    add_device(api.store, "p-1", "pending")  # as the CLI or ingest would, not through this app
    assert samples(api)[("edgefleet_fleet_devices", (("status", "pending"),))] == 1
    services = HubServices(api.hub.registry, api.hub.artifacts, CollectorRegistry())
    other = TestClient(create_app(api.hub.context(), services))
    text = other.get("/metrics", headers=api.headers("viewer")).text
    assert 'edgefleet_fleet_devices{status="pending"} 1.0' in text


def test_free_text_reasons_cannot_grow_the_label_set(api: Api) -> None:
    for i in range(MAX_REASONS + 5):
        add_device(api.store, f"d-{i}", reported=install("failed", f"reason {i}: detail"))
    installs = [k for k in samples(api) if k[0] == "edgefleet_fleet_installs"]
    assert len(installs) == MAX_REASONS + 1
    assert ("edgefleet_fleet_installs", (("outcome", "failed"), ("reason", "other"))) in installs


@pytest.mark.parametrize(
    ("reason", "code"),
    [
        ("incompatible: its inputs differ", "incompatible"),
        ("slow_retrieval", "slow_retrieval"),
        ("", ""),
        ("x" * 100, "x" * 60),
    ],
)
def test_reason_code_is_the_text_before_the_colon(reason: str, code: str) -> None:
    assert reason_code(reason) == code
