"""Dashboard sessions live in the store: only a digest of the id on disk, expiry and
sign-out delete the row, and a sign-in outlives a hub restart and works on another hub over
the same database."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

from hub import keyring
from hub.api import auth
from hub.api.app import create_app
from hub.api.services import HubServices
from hub.registry.artifacts import ArtifactStore
from hub.service import HubService
from hub.settings import HubSettings
from hub.store.sqlite import SqliteStore
from hub.transport.broker import EmbeddedBroker
from hub.ui import session
from hub.ui.session import Sessions
from tests.clock import FakeClock
from tests.hub.tables import rows
from tests.hub.test_api import Api, make_api
from tests.hub.test_registry import Hub
from tests.hub.ui.test_access import csrf_of, signed


@pytest.fixture
def api(tmp_path: Path, clock: FakeClock) -> Iterator[Api]:
    built = make_api(tmp_path, clock)
    with built.client:
        yield built


def cookie_of(client: TestClient) -> str:
    found = client.cookies.get(session.COOKIE)
    assert found
    return str(found)


def test_the_store_keeps_a_digest_of_the_session_id_and_never_the_token(api: Api) -> None:
    client = signed(api, "operator")
    [row] = rows(api.store, "ui_sessions")
    cookie = cookie_of(client)
    assert row["digest"] == session.digest(cookie) != cookie
    assert row["token_id"] == api.tokens["operator"].id
    assert row["expires_ms"] - row["created_ms"] == session.SESSION_TTL_MS
    stored = str(rows(api.store, "ui_sessions"))
    assert cookie not in stored
    assert api.tokens["operator"].token not in stored
    assert csrf_of(client) not in stored, "the CSRF token is derived, not stored"


def test_an_expired_session_is_refused_and_its_row_deleted(api: Api, clock: FakeClock) -> None:
    client = signed(api, "viewer")
    assert client.get("/ui/fleet", follow_redirects=False).status_code == 200
    clock.advance(session.SESSION_TTL_MS / 1000 - 1)
    assert client.get("/ui/fleet", follow_redirects=False).status_code == 200, "not yet"
    clock.advance(1)
    response = client.get("/ui/fleet", follow_redirects=False)
    assert response.status_code == 303
    assert response.headers["location"].startswith("/ui/signin")
    assert rows(api.store, "ui_sessions") == []


def test_signing_out_deletes_the_session_so_its_cookie_no_longer_signs_in(api: Api) -> None:
    client = signed(api, "viewer")
    cookie = cookie_of(client)
    out = client.post("/ui/signout", data={"csrf": csrf_of(client)}, follow_redirects=False)
    assert out.status_code == 303
    assert rows(api.store, "ui_sessions") == []
    replay = TestClient(api.client.app, cookies={session.COOKIE: cookie})
    assert replay.get("/ui/fleet", follow_redirects=False).status_code == 303


def test_sessions_are_bounded_oldest_first_and_expired_ones_go_first(
    api: Api, clock: FakeClock
) -> None:
    sessions = Sessions(api.store, limit=2)
    token = api.tokens["viewer"].id
    first = sessions.open(token, now_ms=clock.now_ms())
    clock.advance(1)
    second = sessions.open(token, now_ms=clock.now_ms())
    clock.advance(1)
    third = sessions.open(token, now_ms=clock.now_ms())
    now = clock.now_ms()
    assert sessions.find(first.id, now_ms=now) is None, "the oldest went first"
    assert sessions.find(second.id, now_ms=now) == second
    assert sessions.find(third.id, now_ms=now) == third
    assert sessions.find("x" * 500, now_ms=now) is None
    later = third.expires_ms
    fourth = sessions.open(token, now_ms=later)
    assert [r["digest"] for r in rows(api.store, "ui_sessions")] == [session.digest(fourth.id)]


def test_a_sign_in_works_on_another_hub_over_the_same_database(api: Api, tmp_path: Path) -> None:
    client = signed(api, "operator")
    replica = Hub(
        tmp_path, api.hub.clock, SqliteStore.open(tmp_path / "hub.db"),
        ArtifactStore(tmp_path / "artifacts"), keyring.load(tmp_path / "keys"),
    )  # fmt: skip
    services = HubServices(replica.registry, replica.artifacts, CollectorRegistry())
    with TestClient(create_app(replica.context(), services)) as other:
        other.cookies.set(session.COOKIE, cookie_of(client), path="/ui")
        page = other.get("/ui/fleet", follow_redirects=False)
        assert page.status_code == 200
        assert "operator (operator)" in page.text
        assert csrf_of(other) == csrf_of(client), "a form from one hub is accepted by another"
        api.call("DELETE", f"/api/v1/tokens/{api.tokens['operator'].id}")
        assert other.get("/ui/fleet", follow_redirects=False).status_code == 303, "revoked"
    replica.store.close()


def test_a_sign_in_survives_a_hub_restart(tmp_path: Path) -> None:
    settings = HubSettings(data_dir=tmp_path / "hub", http_port=0)
    keyring.init(settings.keys_dir, now_ms=FakeClock().now_ms())
    with httpx.Client(follow_redirects=True) as browser:
        with HubService.start(settings, embedded_broker=EmbeddedBroker()) as hub:
            issued = auth.create_token(hub.store, role="viewer", name="v", actor="t", now_ms=0)
            signin = browser.post(f"{hub.http_url}/ui/signin", data={"token": issued.token})
            assert signin.status_code == 200, signin.text
            assert "v (viewer)" in signin.text
        with HubService.start(settings, embedded_broker=EmbeddedBroker()) as again:
            page = browser.get(f"{again.http_url}/ui/fleet", follow_redirects=False)
            assert page.status_code == 200, "signed in still, on the restarted hub"
            assert "v (viewer)" in page.text
