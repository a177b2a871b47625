"""The dashboard over real HTTP (TestClient on the hub's app, a real SQLite store): who may
see and do what, the session cookie, CSRF, and errors as pages with a status and a reason."""

from __future__ import annotations

import fnmatch
import re
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

import hub.ui
from hub.api.auth import Role
from hub.health import Health
from hub.ui import session
from tests import models
from tests.clock import FakeClock
from tests.hub.test_api import Api, add_device, make_api

CSRF = re.compile(r'name="csrf" value="([^"]+)"')


@pytest.fixture
def api(tmp_path: Path, clock: FakeClock) -> Iterator[Api]:
    built = make_api(tmp_path, clock)
    built.hub.register(models.gemm_classifier(hidden=6))
    for k in range(120):
        add_device(built.store, f"dev-{k:03d}", tags={"region": "eu" if k < 30 else "us"})
    with built.client:
        yield built


def signed(api: Api, role: Role) -> TestClient:
    client = TestClient(api.client.app)
    response = client.post(
        "/ui/signin", data={"token": api.tokens[role].token}, follow_redirects=False
    )
    assert response.status_code == 303
    return client


def csrf_of(client: TestClient, path: str = "/ui/fleet") -> str:
    match = CSRF.search(client.get(path).text)
    assert match is not None
    return match.group(1)


def test_the_root_and_every_page_send_a_signed_out_browser_to_sign_in(api: Api) -> None:
    assert api.client.get("/", follow_redirects=False).headers["location"] == "/ui/fleet"
    for path in ("/ui/fleet", "/ui/devices/dev-001", "/ui/rollouts", "/ui/audit?actor=x"):
        response = api.client.get(path, follow_redirects=False)
        assert response.status_code == 303
        assert response.headers["location"].startswith("/ui/signin?next=%2Fui%2F")


def test_the_session_cookie_is_httponly_samesite_strict_and_holds_no_token(api: Api) -> None:
    response = api.client.post(
        "/ui/signin", data={"token": api.tokens["viewer"].token}, follow_redirects=False
    )
    cookie = response.headers["set-cookie"]
    assert cookie.startswith(f"{session.COOKIE}=")
    assert "HttpOnly" in cookie
    assert "SameSite=strict" in cookie
    assert "Path=/ui" in cookie
    assert api.tokens["viewer"].token not in cookie


def test_a_wrong_token_is_a_401_page_with_the_reason_and_sets_no_cookie(api: Api) -> None:
    response = api.client.post("/ui/signin", data={"token": "efh_nope"}, follow_redirects=False)
    assert response.status_code == 401
    assert "not an edgefleet API token" in response.text
    assert "set-cookie" not in response.headers


def test_signing_in_never_sends_the_browser_off_the_dashboard(api: Api) -> None:
    for target in ("https://evil.example/", "//evil.example/ui", "/api/v1/devices"):
        response = api.client.post(
            "/ui/signin",
            data={"token": api.tokens["viewer"].token, "next": target},
            follow_redirects=False,
        )
        assert response.headers["location"] == "/ui/fleet"


def test_revoking_a_token_ends_its_dashboard_session_at_once(api: Api) -> None:
    client = signed(api, "operator")
    assert client.get("/ui/fleet").status_code == 200
    operator = api.tokens["operator"].id
    assert api.call("DELETE", f"/api/v1/tokens/{operator}").status_code in (200, 204)
    response = client.get("/ui/fleet", follow_redirects=False)
    assert response.status_code == 303
    assert response.headers["location"].startswith("/ui/signin")


def test_an_action_without_a_session_is_a_401_and_changes_nothing(api: Api) -> None:
    response = api.client.post("/ui/drift/alerts/0123456789abcdef-drift-1/ack", data={})
    assert response.status_code == 401
    assert api.store.audit.count(outcome="rejected") == 0


def test_signing_out_needs_the_csrf_token_and_ends_the_session(api: Api) -> None:
    client = signed(api, "viewer")
    assert client.post("/ui/signout", data={}).status_code == 403
    assert client.get("/ui/fleet").status_code == 200
    out = client.post("/ui/signout", data={"csrf": csrf_of(client)}, follow_redirects=False)
    assert out.headers["location"] == "/ui/signin"
    assert client.get("/ui/fleet", follow_redirects=False).status_code == 303


def test_a_csrf_token_of_another_session_is_refused_and_audited(api: Api) -> None:
    first, second = signed(api, "operator"), signed(api, "operator")
    stolen = csrf_of(first)
    response = second.post("/ui/drift/alerts/0123456789abcdef-drift-1/ack", data={"csrf": stolen})
    assert response.status_code == 403
    assert "CSRF" in response.text
    [row] = api.store.audit.page(outcome="rejected").items
    assert (row.action, row.reason) == ("ui.action", "csrf")


def test_a_viewer_action_is_refused_and_audited_under_the_rest_actions_name(api: Api) -> None:
    client = signed(api, "viewer")
    response = client.post(
        "/ui/rollouts/r-1/approve", data={"csrf": csrf_of(client)}, follow_redirects=False
    )
    assert response.status_code == 403
    assert "needs the operator role" in response.text
    [row] = api.store.audit.page(outcome="rejected").items
    assert (row.actor, row.action) == (f"token:{api.tokens['viewer'].id}", "rollout.approve")


def test_errors_are_pages_with_the_status_and_reason_rest_gives(api: Api) -> None:
    client = signed(api, "operator")
    missing = client.get("/ui/devices/nobody")
    assert missing.status_code == 404
    assert "no device &#39;nobody&#39;" in missing.text
    bad = client.get("/ui/fleet?offset=-5")
    assert bad.status_code == 422
    assert "offset" in bad.text
    unknown = client.post("/ui/rollouts/r-7/approve", data={"csrf": csrf_of(client)})
    assert unknown.status_code == 404
    assert "text/html" in unknown.headers["content-type"]


def test_the_fleet_is_paged_and_counts_the_whole_fleet(api: Api) -> None:
    client = signed(api, "viewer")
    first = client.get("/ui/fleet").text
    assert "1–50 of 120" in first
    assert "dev-049" in first
    assert "dev-050" not in first
    second = client.get("/ui/fleet?offset=50").text
    assert "51–100 of 120" in second
    assert "dev-050" in second
    eu = client.get("/ui/fleet?tag=region:eu").text
    assert "1–30 of 30" in eu
    assert re.search(r"region=us</a> <b>90</b>", first)


def test_pages_escape_what_devices_and_callers_send(api: Api) -> None:
    add_device(api.store, "dev-x", tags={"note": "<script>alert(1)</script>"})
    client = signed(api, "viewer")
    page = client.get("/ui/devices/dev-x").text
    assert "<script>alert(1)" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page


def test_tag_counts_count_devices_per_tag_value_most_common_first(api: Api) -> None:
    found = [(t.key, t.value, t.count) for t in api.store.devices.tag_counts(limit=5)]
    assert found == [("region", "us", 90), ("region", "eu", 30)]
    assert len(api.store.devices.tag_counts(limit=1)) == 1


def test_every_dashboard_file_ships_in_the_wheel() -> None:
    """pyproject's package data names each template and static file (a page that renders
    here from the source tree would otherwise be missing from an installed hub)."""
    root = Path(hub.ui.__file__).parent
    config = tomllib.loads((root.parents[1] / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["package-data"]["hub.ui"]
    files = [p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()]
    shipped = [f for f in files if not f.endswith((".py", ".pyc"))]
    assert shipped, "no templates or static files found"
    for name in shipped:
        assert any(fnmatch.fnmatch(name, pattern) for pattern in patterns), name


def test_a_form_posted_from_another_site_is_refused_even_to_sign_in(api: Api) -> None:
    token = api.tokens["operator"].token
    forged = api.client.post(
        "/ui/signin", data={"token": token}, headers={"Origin": "http://evil.example"}
    )
    assert forged.status_code == 403
    assert "set-cookie" not in forged.headers
    here = api.client.post(
        "/ui/signin",
        data={"token": token},
        headers={"Origin": "http://testserver"},
        follow_redirects=False,
    )
    assert here.status_code == 303


def test_pages_run_only_the_hubs_own_script_and_refuse_framing(api: Api) -> None:
    client = signed(api, "viewer")
    for path in ("/ui/fleet", "/ui/signin", "/ui/devices/nobody"):
        policy = client.get(path).headers["content-security-policy"]
        assert "default-src 'self'" in policy
        assert "frame-ancestors 'none'" in policy
    page = client.get("/ui/fleet").text
    assert "<script>" not in page, "no inline script: the policy would block it"
    assert re.findall(r"<script[^>]*>", page) == ['<script src="/ui/static/ui.js" defer>']


def test_an_unknown_dashboard_path_is_an_html_404_and_static_files_still_load(api: Api) -> None:
    client = signed(api, "viewer")
    missing = client.get("/ui/nowhere/at/all")
    assert missing.status_code == 404
    assert "text/html" in missing.headers["content-type"]
    assert "no dashboard page /ui/nowhere/at/all" in missing.text
    assert client.get("/ui/static/ui.css").status_code == 200
    assert client.get("/ui/static/nothing.css").status_code == 404


def test_the_fleet_page_filters_by_health_and_links_each_health_count(api: Api) -> None:
    for device_id in ("dev-003", "dev-007"):
        api.store.devices.set_health(device_id, Health.STUCK)
    api.store.devices.set_health("dev-050", Health.OK)
    client = signed(api, "viewer")
    fleet = client.get("/ui/fleet").text
    assert '<a href="/ui/fleet?health=stuck">stuck</a>\n        <b>2</b>' in fleet
    assert '<a href="/ui/fleet?health=ok">ok</a>\n        <b>1</b>' in fleet
    stuck = client.get("/ui/fleet?health=stuck")
    assert stuck.status_code == 200
    listed = re.findall(r'<td><a href="/ui/devices/([^"]+)">', stuck.text)
    assert listed == ["dev-003", "dev-007"]
    assert "1–2 of 2" in stuck.text
    assert "<option selected>stuck</option>" in stuck.text, "the form keeps the filter"
    both = client.get("/ui/fleet?health=stuck&tag=region:us")
    assert re.findall(r'<td><a href="/ui/devices/([^"]+)">', both.text) == []
    assert client.get("/ui/fleet?health=").status_code == 200, "the form's 'any'"
    refused = client.get("/ui/fleet?health=sick")
    assert refused.status_code == 422
    assert "health" in refused.text
