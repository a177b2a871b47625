"""The rounds and lineage pages over a round the hub really ran: deltas screened at ingest
(one refused for its norm), aggregated, validated and released as a candidate version."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

from hub.api import HubServices, auth, create_app
from hub.federated import rounds
from tests.hub.federated.helpers import MODEL, FlHub
from tests.hub.federated.test_rounds_shell import _trained_delta


def test_a_rounds_contributors_weights_and_refusals_show_on_its_pages(tmp_path: Path) -> None:
    hub = FlHub(tmp_path, auto_release=True)
    round_id = hub.open(target_deltas=3, min_deltas=1)
    x, y = hub.task.sample("B", 300, np.random.default_rng(5))
    for i in range(3):
        hub.send(hub.device(f"dev-{i}"), _trained_delta(hub, x[i::3], y[i::3], round_id))
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
