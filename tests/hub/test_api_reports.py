"""REST reads of what devices reported, and the device twin, over a real store."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from hub.fleet import enrollment
from hub.store.rows import DataWindowRecord, DeltaRecord, StateRecord, TelemetryRecord
from protocol.tensors import encode_tensors
from tests.clock import FakeClock
from tests.hub.test_api import Api, add_device, make_api, problem_of

WEIGHT = np.arange(6, dtype=np.float32).reshape(2, 3)


@pytest.fixture
def api(tmp_path: Path, clock: FakeClock) -> Iterator[Api]:
    built = make_api(tmp_path, clock)
    with built.client:
        yield built


def ref(name: str, version: int) -> dict[str, Any]:
    return {"name": name, "version": version, "sha256": "a" * 64}


def state(device: str, seq: int, at: int, **install: Any) -> StateRecord:
    body: dict[str, Any] = {"active": ref("iris", 1), "flags": []}
    if install:
        body["install"] = {"assignment_version": 1, "model": ref("iris", 2), **install}
    return StateRecord(device, seq, at, at, json.dumps(body))


def delta(device: str, seq: int, at: int, version: int = 1) -> DeltaRecord:
    tensors = encode_tensors({"head.weight": WEIGHT, "head.bias": np.ones(2, np.float32)})
    return DeltaRecord(
        device, seq, at, at, "iris", version, "a" * 64, None, 32, "accuracy", 0.5, 0.7, 1.0, tensors
    )


@pytest.fixture
def reported(api: Api) -> Api:
    """Two devices, each with deltas, windows, telemetry and states at 1000, 2000, 3000 ms."""
    for device in ("d-1", "d-2"):
        add_device(api.store, device)
        records = []
        for i, at in enumerate((1000, 2000, 3000)):
            seq = 10 * i
            records += [
                delta(device, seq + 1, at, version=1 + i % 2),
                DataWindowRecord(device, seq + 2, at, at, at - 60_000, at, "iris", 1, "{}"),
                TelemetryRecord(device, seq + 3, at, at, json.dumps({"model": ref("iris", 1)})),
                state(device, seq + 4, at),
            ]
        api.store.uplink.add(records)
    return api


def keys(response: Any) -> list[tuple[str, int]]:
    assert response.status_code == 200, response.text
    return [(item["device_id"], item["seq"]) for item in response.json()["items"]]


@pytest.mark.parametrize("kind", ["deltas", "windows", "telemetry", "states"])
def test_reports_are_newest_first_and_filter_by_device_and_time(reported: Api, kind: str) -> None:
    everything = reported.call("GET", f"/api/v1/{kind}", role="viewer")
    assert everything.json()["total"] == 6
    assert [item["received_at"] for item in everything.json()["items"]] == [
        3000, 3000, 2000, 2000, 1000, 1000
    ]  # fmt: skip
    one = reported.call("GET", f"/api/v1/{kind}?device=d-2&since=2000&until=3000", role="viewer")
    assert [(d, s // 10) for d, s in keys(one)] == [("d-2", 1)]
    page = reported.call("GET", f"/api/v1/{kind}?limit=2&offset=2", role="viewer")
    assert keys(page) == keys(everything)[2:4]


@pytest.mark.parametrize("kind", ["deltas", "windows", "telemetry", "states"])
def test_reports_filter_by_model(reported: Api, kind: str) -> None:
    named = reported.call("GET", f"/api/v1/{kind}?model=iris", role="viewer").json()
    assert named["total"] == 6
    other = reported.call("GET", f"/api/v1/{kind}?model=other", role="viewer").json()
    assert other["total"] == 0


def test_deltas_filter_by_base_version(reported: Api) -> None:
    response = reported.call("GET", "/api/v1/deltas?model=iris:2", role="viewer")
    assert {i["base"]["version"] for i in response.json()["items"]} == {2}
    assert response.json()["total"] == 2


def test_delta_tensors_only_on_request_and_decoded(reported: Api) -> None:
    plain = reported.call("GET", "/api/v1/deltas?limit=1", role="viewer").json()["items"][0]
    assert plain["tensors"] is None
    assert plain["tensors_bytes"] > 0
    full = reported.call("GET", "/api/v1/deltas?limit=1&include=tensors", role="viewer").json()
    tensors = {t["name"]: t for t in full["items"][0]["tensors"]}
    assert tensors["head.weight"] == {
        "name": "head.weight",
        "dtype": "float32",
        "shape": [2, 3],
        "values": WEIGHT.tolist(),
    }
    assert tensors["head.bias"]["values"] == [1.0, 1.0]


def test_too_many_tensor_values_is_413_and_asks_for_fewer(
    reported: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("hub.api.reports.MAX_TENSOR_VALUES", 10)
    problem_of(reported.call("GET", "/api/v1/deltas?include=tensors&limit=2"), 413)
    assert reported.call("GET", "/api/v1/deltas?include=tensors&limit=1").status_code == 200


@pytest.mark.parametrize(
    "query",
    ["device=UPPER", "model=../x", "since=-1", "include=everything", "until=99999999999999999999"],
)
def test_bad_report_filters_are_422(reported: Api, query: str) -> None:
    problem_of(reported.call("GET", f"/api/v1/deltas?{query}"), 422)


# ---------------------------------------------------------------------- the twin


def test_twin_of_a_device_that_runs_its_desired_version_is_in_sync(api: Api) -> None:
    api.hub.register()
    add_device(api.store, "d-1", active_name="iris", active_version=1, online=True)
    api.call("PUT", "/api/v1/devices/d-1/desired", json={"model": "iris", "version": 1})
    twin = api.call("GET", "/api/v1/devices/d-1/twin", role="viewer").json()
    assert twin["in_sync"] is True
    assert twin["desired"]["model"] == {"name": "iris", "version": 1, "sha256": None}
    assert twin["reported"]["model"]["name"] == "iris"
    assert twin["last_refusal"] is None


def test_twin_names_the_last_refusal_and_its_reason(api: Api) -> None:
    api.hub.register()
    add_device(api.store, "d-1", active_name="iris", active_version=1)
    api.call("PUT", "/api/v1/devices/d-1/desired", json={"model": "iris", "version": 1})
    why = "incompatible: its inputs differ from the active model's"
    api.store.uplink.add(
        [
            state("d-1", 1, 1000, status="failed", reason="slow_retrieval"),
            state("d-1", 2, 2000, status="refused", reason=why),
            state("d-1", 3, 3000, status="unchanged", reason=""),
        ]
    )
    refusal = api.call("GET", "/api/v1/devices/d-1/twin", role="viewer").json()["last_refusal"]
    assert refusal == {"at": 2000, "outcome": "refused", "reason": why, "model": ref("iris", 2)}


def test_twin_shows_the_refusal_ingest_kept_with_the_version_refused(api: Api) -> None:
    add_device(api.store, "d-1")
    why = "incompatible: its inputs differ from the active model's"
    api.store.uplink.add([state("d-1", 7, 7000, status="refused", reason=why)])
    api.store.devices.note_refusals({"d-1": (f"refused: {why}", 7000)})
    refusal = api.call("GET", "/api/v1/devices/d-1/twin", role="viewer").json()["last_refusal"]
    assert refusal == {"at": 7000, "outcome": "refused", "reason": why, "model": ref("iris", 2)}


def test_twin_shows_a_refused_desired_state(api: Api) -> None:
    add_device(api.store, "d-1")
    api.store.devices.note_refusals({"d-1": ("refused desired: stale assignment", 9000)})
    refusal = api.call("GET", "/api/v1/devices/d-1/twin", role="viewer").json()["last_refusal"]
    assert refusal == {
        "at": 9000,
        "outcome": "refused",
        "reason": "desired: stale assignment",
        "model": None,
    }


def test_twin_of_a_pending_device_says_why_it_waits(api: Api) -> None:
    add_device(api.store, "p-1", "pending")
    api.store.audit.append(
        at=5, actor="device:p-1", action="device.pending", target="p-1", reason="token_expired"
    )
    api.store.devices.set_pending_reason("p-1", "token_expired")
    twin = api.call("GET", "/api/v1/devices/p-1/twin", role="viewer").json()
    assert twin["enrollment_refusal"] == {"at": 5, "reason": "token_expired"}
    enrollment.approve(api.store, "p-1", by="cli", now_ms=6)
    assert api.call("GET", "/api/v1/devices/p-1/twin").json()["enrollment_refusal"] is None


def test_twin_of_an_unknown_device_is_404(api: Api) -> None:
    problem_of(api.call("GET", "/api/v1/devices/nobody/twin"), 404)
