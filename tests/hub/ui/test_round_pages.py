"""The rounds, lineage and device pages over what the hub really ingested: deltas screened at
ingest (one refused for its norm), aggregated, validated and released as a candidate
version; a device's signed telemetry frames."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

from hub.api import auth
from hub.api.app import create_app
from hub.api.services import HubServices
from hub.federated import rounds
from protocol.messages import Telemetry
from tests.hub.federated.helpers import MODEL, FlHub
from tests.hub.federated.test_rounds_shell import _trained_delta


def test_a_round_its_lineage_and_a_devices_latency_show_on_their_pages(tmp_path: Path) -> None:
    hub = FlHub(tmp_path, auto_release=True)
    round_id = hub.open(target_deltas=3, min_deltas=1)
    x, y = hub.task.sample("B", 300, np.random.default_rng(5))
    devices = [hub.device(f"dev-{i}") for i in range(3)]
    for i, dev in enumerate(devices):
        hub.send(dev, _trained_delta(hub, x[i::3], y[i::3], round_id))
    for k in range(4):  # dev-0's telemetry, a minute apart, its latency rising
        hub.sim.clock.advance(60)
        telemetry = Telemetry(uptime_s=60.0 * k, latency_p50_ms=2.0 + k, latency_p95_ms=5.0 + 2 * k)
        hub.sim.send(devices[0].frame(telemetry))
    hub.send(hub.device("dev-bad"), hub.delta(scale=50.0, round_id=round_id))
    rounds.tick(hub.ctx)
    record = hub.store.rounds.round(round_id)
    assert record is not None
    assert record.state == "accepted"
    services = HubServices(
        registry=hub.registry, artifacts=hub.registry.artifacts, metrics=CollectorRegistry()
    )
    token = auth.create_token(hub.store, role="viewer", name="v", actor="t", now_ms=0).token
    with TestClient(create_app(hub.ctx, services)) as client:
        client.post("/ui/signin", data={"token": token})
        listed = client.get("/ui/rounds").text
        assert round_id in listed
        assert f"v{record.candidate_version}" in listed
        page = client.get(f"/ui/rounds/{round_id}")
        assert page.status_code == 200
        assert re.search(r"norm_exceeded <b>1</b>", page.text), "refused, by why"
        weights = re.findall(r"<td>used</td><td>([0-9.]+)</td>", page.text)
        assert len(weights) == 3
        assert abs(sum(float(w) for w in weights) - 1.0) < 0.01
        lineage = client.get(f"/ui/models/{MODEL}/versions/{record.candidate_version}")
        assert lineage.status_code == 200
        assert f"round:{round_id}" in lineage.text
        assert "3 contributing devices" in lineage.text
        assert "validation:" in lineage.text
        device = client.get("/ui/devices/dev-0")
        assert device.status_code == 200
        assert "Its deltas (1)" in device.text
        latency = device.text[device.text.index('id="lat-h"') :]
        [p95] = re.findall(r'<polyline points="([^"]+)"', latency)[1:2]
        heights = [float(point.split(",")[1]) for point in p95.split()]
        assert len(heights) == 4
        assert heights == sorted(heights, reverse=True), "rising latency climbs the chart"
