"""Every rollout action from the dashboard over HTTP, as an operator's browser posts them:
each lands through the REST route's function, with its REST audit row, and an action the
rollout's phase refuses is a 409 page that says why."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests.clock import FakeClock
from tests.hub.test_api import Api
from tests.hub.ui.dashhub import make_dashboard_hub

CSRF = re.compile(r'name="csrf" value="([^"]+)"')


@pytest.fixture
def api(tmp_path: Path, clock: FakeClock) -> Iterator[Api]:
    built = make_dashboard_hub(tmp_path, clock, drift=False)
    with built.client:
        yield built


def operator(api: Api) -> tuple[TestClient, str]:
    client = TestClient(api.client.app)
    client.post("/ui/signin", data={"token": api.tokens["operator"].token})
    match = CSRF.search(client.get("/ui/rollouts/r-1").text)
    assert match is not None
    return client, match.group(1)


def phase(api: Api) -> str:
    return str(api.call("GET", "/api/v1/rollouts/r-1", role="viewer").json()["phase"])


def test_an_operator_aborts_then_rolls_back_and_each_is_audited_as_rest(api: Api) -> None:
    client, csrf = operator(api)
    page = client.get("/ui/rollouts/r-1").text
    assert {"do-approve", "do-pause", "do-abort", "do-rollback"} <= set(
        re.findall(r'id="(do-[a-z]+)"', page)
    )
    aborted = client.post("/ui/rollouts/r-1/abort", data={"csrf": csrf, "reason": "bad gate"})
    assert aborted.status_code == 200
    assert phase(api) == "aborted"
    assert "bad gate" in aborted.text
    assert 'id="do-abort"' not in aborted.text, "an aborted rollout offers no abort"
    back = client.post("/ui/rollouts/r-1/rollback", data={"csrf": csrf, "reason": "undo"})
    assert back.status_code == 200
    assert phase(api) in ("rolling_back", "rolled_back")
    actor = f"token:{api.tokens['operator'].id}"
    rows = api.store.audit.page(actor=actor).items
    assert {"rollout.abort", "rollout.rollback"} <= {r.action for r in rows}
    assert all(r.outcome == "ok" for r in rows)


def test_an_action_the_phase_refuses_is_a_409_page_that_says_why(api: Api) -> None:
    client, csrf = operator(api)
    client.post("/ui/rollouts/r-1/pause", data={"csrf": csrf})
    refused = client.post("/ui/rollouts/r-1/approve", data={"csrf": csrf})
    assert refused.status_code == 409
    assert "paused" in refused.text
    assert phase(api) == "paused"
    resumed = client.post(
        "/ui/rollouts/r-1/resume", data={"csrf": csrf, "accept_inconclusive": "true"}
    )
    assert resumed.status_code == 200
    assert phase(api) == "awaiting_approval"


def test_an_unknown_action_is_a_422_page_and_changes_nothing(api: Api) -> None:
    client, csrf = operator(api)
    response = client.post("/ui/rollouts/r-1/delete", data={"csrf": csrf})
    assert response.status_code == 422
    assert "action" in response.text
    assert phase(api) == "awaiting_approval"
