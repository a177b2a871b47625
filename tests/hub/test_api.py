"""The REST API over real HTTP (TestClient on the ASGI app), a real SQLite store and registry.

Also home of :func:`make_api`, which the schemathesis tests and the benchmark share.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi.testclient import TestClient
from httpx import Response
from prometheus_client import CollectorRegistry

from hub.api import auth
from hub.api.app import create_app
from hub.api.auth import Role
from hub.api.services import HubServices
from hub.health import Health
from hub.store import Store
from hub.store.rows import Device, DeviceStatus
from protocol import keys
from tests import models
from tests.clock import FakeClock
from tests.hub.tables import rows
from tests.hub.test_registry import Hub, make_hub, npz, reference, sign_offline

PROBLEM = "application/problem+json"
DEVICE = "dev-1"
MISSING_SHA = "0" * 64


@dataclass
class Api:
    """A hub's REST API with one token per role."""

    hub: Hub
    client: TestClient
    tokens: dict[Role, auth.IssuedToken]

    @property
    def store(self) -> Store:
        return self.hub.store

    def headers(self, role: Role | None) -> dict[str, str]:
        return {} if role is None else {"Authorization": f"Bearer {self.tokens[role].token}"}

    def call(self, method: str, path: str, role: Role | None = "admin", **kwargs: Any) -> Response:
        headers = {**self.headers(role), **kwargs.pop("headers", {})}
        response: Response = self.client.request(method, path, headers=headers, **kwargs)
        return response


def make_api(root: Path, clock: FakeClock, *, release_online: bool = True) -> Api:
    """Key ring, store, registry and app under ``root``, and a token for each role."""
    hub = make_hub(root, clock, release_online=release_online)
    services = HubServices(
        registry=hub.registry, artifacts=hub.artifacts, metrics=CollectorRegistry()
    )
    app = create_app(hub.context(), services)
    tokens = {
        role: auth.create_token(hub.store, role=role, name=role, actor="cli", now_ms=clock.now_ms())
        for role in auth.ROLES
    }
    return Api(hub, TestClient(app), tokens)


def add_device(
    store: Store, device_id: str = DEVICE, status: DeviceStatus = "active", **fields: Any
) -> None:
    public = keys.public_hex(Ed25519PrivateKey.generate().public_key())
    store.devices.add(Device(device_id, public, status, first_seen=0, **fields))


def register_form(name: str = "iris", **extra: tuple[str, bytes]) -> dict[str, Any]:
    files = {
        "model": ("model.onnx", models.gemm_classifier()),
        "reference": ("reference.npz", reference()),
        **extra,
    }
    return {"files": files, "data": {"name": name}}


@pytest.fixture
def api(tmp_path: Path, clock: FakeClock) -> Iterator[Api]:
    built = make_api(tmp_path, clock)
    with built.client:
        yield built


@pytest.fixture
def fleet(api: Api) -> Api:
    """``dev-1`` active and running nothing, ``iris`` v1 registered and released."""
    add_device(api.store)
    api.hub.register()
    return api


def problem_of(response: Response, status: int) -> dict[str, Any]:
    """The response's problem+json body, after checking its shape."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    assert body["type"] == f"urn:edgefleet:problem:{body['reason']}"
    assert {"title", "detail"} <= set(body)
    return body


# ---------------------------------------------------------------------- who may do what


@dataclass(frozen=True)
class Route:
    method: str
    template: str
    path: str
    role: Role | None
    body: dict[str, Any] | None = None

    @property
    def changes(self) -> bool:
        return self.method != "GET"


SHA = "a" * 64
ALERT = "0123456789abcdef-drift-1795392000000"  # none exists: reading it is a 404
ROUTES = [
    Route("GET", "/healthz", "/healthz", None),
    Route("GET", "/metrics", "/metrics", "viewer"),
    Route("GET", "/api/v1/devices", "/api/v1/devices", "viewer"),
    Route("GET", "/api/v1/devices/{device_id}", f"/api/v1/devices/{DEVICE}", "viewer"),
    Route(
        "PATCH",
        "/api/v1/devices/{device_id}",
        f"/api/v1/devices/{DEVICE}",
        "operator",
        {"json": {"tags": {"site": "berlin"}}},
    ),
    Route("POST", "/api/v1/devices/{device_id}/approve", "/api/v1/devices/p-1/approve", "operator"),
    Route(
        "POST", "/api/v1/devices/{device_id}/revoke", f"/api/v1/devices/{DEVICE}/revoke", "admin"
    ),
    Route("GET", "/api/v1/devices/{device_id}/desired", "/api/v1/devices/d-1/desired", "viewer"),
    Route(
        "PUT",
        "/api/v1/devices/{device_id}/desired",
        f"/api/v1/devices/{DEVICE}/desired",
        "operator",
        {"json": {"model": "iris", "version": 1}},
    ),
    Route(
        "DELETE", "/api/v1/devices/{device_id}/desired", "/api/v1/devices/d-1/desired", "operator"
    ),
    Route(
        "POST",
        "/api/v1/enrollment-tokens",
        "/api/v1/enrollment-tokens",
        "admin",
        {"json": {"kind": "single"}},
    ),
    Route("GET", "/api/v1/enrollment-tokens", "/api/v1/enrollment-tokens", "admin"),
    Route(
        "DELETE",
        "/api/v1/enrollment-tokens/{token_id}",
        "/api/v1/enrollment-tokens/tok-0000000000000000",
        "admin",
    ),
    Route("POST", "/api/v1/tokens", "/api/v1/tokens", "admin", {"json": {"role": "viewer"}}),
    Route("GET", "/api/v1/tokens", "/api/v1/tokens", "admin"),
    Route("DELETE", "/api/v1/tokens/{token_id}", "/api/v1/tokens/0123456789ab", "admin"),
    Route("POST", "/api/v1/models", "/api/v1/models", "operator", register_form("other")),
    Route("GET", "/api/v1/models", "/api/v1/models", "viewer"),
    Route("GET", "/api/v1/models/{name}/versions", "/api/v1/models/iris/versions", "viewer"),
    Route(
        "GET",
        "/api/v1/models/{name}/versions/{version}",
        "/api/v1/models/iris/versions/1",
        "viewer",
    ),
    Route(
        "GET",
        "/api/v1/models/{name}/versions/{version}/lineage",
        "/api/v1/models/iris/versions/1/lineage",
        "viewer",
    ),
    Route(
        "GET",
        "/api/v1/models/{name}/versions/{version}/download",
        "/api/v1/models/iris/versions/1/download",
        "viewer",
    ),
    Route(
        "POST",
        "/api/v1/releases",
        "/api/v1/releases",
        "operator",
        {"json": {"payload": "", "payloadType": "x", "signatures": []}},
    ),
    Route("GET", "/api/v1/artifacts/{sha256}", f"/api/v1/artifacts/{SHA}", "viewer"),
    Route("GET", "/api/v1/releases/pending", "/api/v1/releases/pending", "viewer"),
    Route("GET", "/api/v1/audit", "/api/v1/audit", "viewer"),
    Route("GET", "/api/v1/deltas", "/api/v1/deltas", "viewer"),
    Route("GET", "/api/v1/windows", "/api/v1/windows", "viewer"),
    Route("GET", "/api/v1/telemetry", "/api/v1/telemetry", "viewer"),
    Route("GET", "/api/v1/states", "/api/v1/states", "viewer"),
    Route("GET", "/api/v1/devices/{device_id}/twin", f"/api/v1/devices/{DEVICE}/twin", "viewer"),
    Route("POST", "/api/v1/rounds", "/api/v1/rounds", "operator", {"json": {"model": "iris"}}),
    Route("GET", "/api/v1/rounds", "/api/v1/rounds", "viewer"),
    Route("GET", "/api/v1/rounds/{round_id}", "/api/v1/rounds/iris-r1", "viewer"),
    Route("POST", "/api/v1/rounds/{round_id}/cancel", "/api/v1/rounds/iris-r1/cancel", "operator"),
    Route("GET", "/api/v1/models/{name}/fl-policy", "/api/v1/models/iris/fl-policy", "viewer"),
    Route(
        "PUT",
        "/api/v1/models/{name}/fl-policy",
        "/api/v1/models/iris/fl-policy",
        "admin",
        {"json": {"auto_release": True}},
    ),
    Route(
        "PUT",
        "/api/v1/models/{name}/validation-set",
        "/api/v1/models/iris/validation-set",
        "operator",
        {"files": {"validation": ("v.npz", reference())}},
    ),
    Route("GET", "/api/v1/drift", "/api/v1/drift?model=iris", "viewer"),
    Route("GET", "/api/v1/drift/devices/{device_id}", f"/api/v1/drift/devices/{DEVICE}", "viewer"),
    Route("GET", "/api/v1/drift/alerts", "/api/v1/drift/alerts", "viewer"),
    Route("GET", "/api/v1/drift/alerts/{alert_id}", f"/api/v1/drift/alerts/{ALERT}", "viewer"),
    Route(
        "POST",
        "/api/v1/drift/alerts/{alert_id}/ack",
        f"/api/v1/drift/alerts/{ALERT}/ack",
        "operator",
        {"json": {"note": "seen"}},
    ),
    Route(
        "GET", "/api/v1/models/{name}/drift-policy", "/api/v1/models/iris/drift-policy", "viewer"
    ),
    Route(
        "PUT",
        "/api/v1/models/{name}/drift-policy",
        "/api/v1/models/iris/drift-policy",
        "operator",
        {"json": {"psi_warn": 0.12}},
    ),
    Route("POST", "/api/v1/rollouts", "/api/v1/rollouts", "operator",
          {"json": {"model": "iris", "version": 1}}),
    Route("POST", "/api/v1/rollouts/dry-run", "/api/v1/rollouts/dry-run", "operator",
          {"json": {"model": "iris", "version": 1}}),
    Route("GET", "/api/v1/rollouts", "/api/v1/rollouts", "viewer"),
    Route("GET", "/api/v1/rollouts/{rollout_id}", "/api/v1/rollouts/r-1", "viewer"),
    *(
        Route("POST", f"/api/v1/rollouts/{{rollout_id}}/{action}",
              f"/api/v1/rollouts/r-1/{action}", "operator", {"json": {}})
        for action in ("approve", "pause", "resume", "abort", "rollback")
    ),
]  # fmt: skip
CHANGES = [r for r in ROUTES if r.changes]
GUARDED = [r for r in ROUTES if r.role is not None]


def route_id(route: Route) -> str:
    return f"{route.method} {route.template}"


def test_every_route_is_in_the_role_table(api: Api) -> None:
    documented = {
        (method.upper(), path)
        for path, operations in api.client.get("/openapi.json").json()["paths"].items()
        for method in operations
    }
    assert documented == {(r.method, r.template) for r in ROUTES}


def test_a_command_that_needs_only_auth_does_not_load_the_app_or_onnx() -> None:
    # `hub token create` and every remote command start in about a second, not three
    code = (
        "import sys, hub.api.auth, edgefleet.cli; "
        "print(sorted({'fastapi', 'onnx'} & set(sys.modules)))"
    )
    found = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert found.stdout.strip() == "[]"


def test_every_route_has_a_summary_and_an_operation_id(api: Api) -> None:
    paths = api.client.get("/openapi.json").json()["paths"]
    operations = [op for ops in paths.values() for op in ops.values()]
    assert all(op.get("summary") for op in operations)
    ids = [op["operationId"] for op in operations]
    assert len(set(ids)) == len(ids)


@pytest.mark.parametrize("route", GUARDED, ids=route_id)
def test_no_token_is_401_with_a_bearer_challenge(api: Api, route: Route) -> None:
    response = api.call(route.method, route.path, role=None, **(route.body or {}))
    problem_of(response, 401)
    assert response.headers["www-authenticate"].startswith("Bearer")


@pytest.mark.parametrize("route", CHANGES, ids=route_id)
def test_viewer_cannot_change_anything(fleet: Api, route: Route) -> None:
    before = rows(fleet.store, "devices")
    response = fleet.call(route.method, route.path, role="viewer", **(route.body or {}))
    assert problem_of(response, 403)["reason"] == "forbidden"
    assert rows(fleet.store, "devices") == before


@pytest.mark.parametrize("route", CHANGES, ids=route_id)
def test_viewer_gets_403_even_for_a_malformed_body(api: Api, route: Route) -> None:
    response = api.call(
        route.method,
        route.path,
        role="viewer",
        content=b"\x00 not json",
        headers={"Content-Type": "application/json"},
    )
    problem_of(response, 403)


@pytest.mark.parametrize("route", CHANGES, ids=route_id)
def test_refused_change_is_audited_with_the_token_id(fleet: Api, route: Route) -> None:
    fleet.call(route.method, route.path, role="viewer", **(route.body or {}))
    entries = fleet.store.audit.page(outcome="rejected").items
    assert entries[0].actor == f"token:{fleet.tokens['viewer'].id}"
    assert entries[0].reason == "forbidden"
    assert entries[0].target == route.path
    assert entries[0].at == fleet.hub.clock.now_ms()
    assert fleet.tokens["viewer"].token not in str(entries)


@pytest.mark.parametrize("route", [r for r in GUARDED if r.role == "admin"], ids=route_id)
def test_operator_cannot_manage_tokens_or_revoke_devices(fleet: Api, route: Route) -> None:
    response = fleet.call(route.method, route.path, role="operator", **(route.body or {}))
    problem_of(response, 403)


@pytest.mark.parametrize("route", [r for r in GUARDED if r.role == "viewer"], ids=route_id)
def test_viewer_reads_everything_readable(fleet: Api, route: Route) -> None:
    add_device(fleet.store, "d-1")
    fleet.call("PUT", "/api/v1/devices/d-1/desired", json={"model": "iris", "version": 1})
    sha = fleet.hub.registry.get_version("iris", 1).sha256
    path = route.path.replace(SHA, sha)
    if route.template == "/api/v1/rounds/{round_id}":
        opened = fleet.call("POST", "/api/v1/rounds", role="operator", json={"model": "iris"})
        assert opened.json()["round_id"] == "iris-r1"
    if route.template == "/api/v1/rollouts/{rollout_id}":
        fleet.call("POST", "/api/v1/rollouts", json={"model": "iris", "version": 1})
    nothing_pending = route.template in (
        "/api/v1/releases/pending",  # the release key is online
        "/api/v1/drift/alerts/{alert_id}",  # no drift alert was raised
    )
    assert fleet.call("GET", path, role="viewer").status_code == (404 if nothing_pending else 200)


@pytest.mark.parametrize("route", CHANGES, ids=route_id)
def test_admin_passes_every_role_check(fleet: Api, route: Route) -> None:
    response = fleet.call(route.method, route.path, role="admin", **(route.body or {}))
    assert response.status_code not in (401, 403), response.text


@pytest.mark.parametrize(
    "header",
    [
        pytest.param("Basic dXNlcjpwYXNz", id="basic-auth"),
        pytest.param("Bearer", id="no-token"),
        pytest.param("Bearer efh_0123456789ab_" + "a" * 43, id="unknown-token"),
        pytest.param("Bearer " + "x" * 300, id="huge-token"),
    ],
)
def test_anything_but_a_good_bearer_token_is_401(api: Api, header: str) -> None:
    response = api.client.get("/api/v1/devices", headers={"Authorization": header})
    problem_of(response, 401)


def test_revoked_token_stops_working_at_once(api: Api) -> None:
    viewer = api.tokens["viewer"]
    assert api.call("GET", "/api/v1/devices", role="viewer").status_code == 200
    assert api.call("DELETE", f"/api/v1/tokens/{viewer.id}").status_code == 204
    problem_of(api.call("GET", "/api/v1/devices", role="viewer"), 401)


def test_admin_creates_a_token_shown_once_that_works(api: Api) -> None:
    created = api.call("POST", "/api/v1/tokens", json={"role": "operator", "name": "ci"})
    assert created.status_code == 201
    body = created.json()
    headers = {"Authorization": f"Bearer {body['token']}"}
    assert api.client.get("/api/v1/devices", headers=headers).status_code == 200
    listing = api.call("GET", "/api/v1/tokens").json()
    assert body["id"] in [t["id"] for t in listing["items"]]
    assert body["token"] not in json.dumps(listing)
    assert "hash" not in listing["items"][0]


# ---------------------------------------------------------------------- problem+json


def test_unknown_device_is_a_404_problem(api: Api) -> None:
    body = problem_of(api.call("GET", "/api/v1/devices/nobody"), 404)
    assert body["reason"] == "not_found"


def test_unknown_route_is_a_404_problem(api: Api) -> None:
    problem_of(api.call("GET", "/api/v1/nothing-here"), 404)


def test_wrong_method_is_a_405_problem_naming_every_method(fleet: Api) -> None:
    response = fleet.call("POST", f"/api/v1/devices/{DEVICE}")
    problem_of(response, 405)
    assert response.headers["allow"] == "GET, PATCH"


def test_approving_an_active_device_is_a_409_problem(fleet: Api) -> None:
    body = problem_of(fleet.call("POST", f"/api/v1/devices/{DEVICE}/approve"), 409)
    assert body["reason"] == "conflict"


@pytest.mark.parametrize(
    ("path", "loc"),
    [
        pytest.param("/api/v1/devices?limit=0", ["query", "limit"], id="limit-0"),
        pytest.param("/api/v1/devices?limit=1001", ["query", "limit"], id="limit-1001"),
        pytest.param("/api/v1/devices?offset=-1", ["query", "offset"], id="negative-offset"),
        pytest.param("/api/v1/devices?status=lost", ["query", "status"], id="unknown-status"),
        pytest.param("/api/v1/devices?health=sick", ["query", "health"], id="unknown-health"),
        pytest.param("/api/v1/devices?tag=Region:eu", ["query", "tag"], id="tag-key-case"),
        pytest.param("/api/v1/devices?tag=a.b:c", ["query", "tag"], id="dotted-tag-key"),
        pytest.param("/api/v1/devices?model=../etc", ["query", "model"], id="model-traversal"),
        pytest.param("/api/v1/audit?since=99999999999999999999", ["query", "since"], id="since"),
        pytest.param("/api/v1/devices/UPPER", ["path", "device_id"], id="device-id-case"),
        pytest.param("/api/v1/models/iris/versions/0", ["path", "version"], id="version-0"),
    ],
)
def test_out_of_bounds_input_is_a_422_problem(api: Api, path: str, loc: list[str]) -> None:
    body = problem_of(api.call("GET", path), 422)
    assert body["reason"] == "invalid_request"
    assert body["errors"][0]["loc"] == loc


@pytest.mark.parametrize(
    "query",
    [
        pytest.param("stauts=revoked", id="misspelt-filter"),
        pytest.param("status=active&status=revoked", id="repeated"),
    ],
)
def test_unknown_or_repeated_query_parameter_is_a_422_problem(api: Api, query: str) -> None:
    problem_of(api.call("GET", f"/api/v1/devices?{query}"), 422)


def test_malformed_json_is_a_422_problem(fleet: Api) -> None:
    response = fleet.call(
        "PATCH",
        f"/api/v1/devices/{DEVICE}",
        content=b"{",
        headers={"Content-Type": "application/json"},
    )
    problem_of(response, 422)


@pytest.mark.parametrize(
    ("body", "key"),
    [
        pytest.param(b'{"tags": {}, "tags": {"site": "x"}}', "tags", id="top-level"),
        pytest.param(b'{"tags": {"site": "a", "site": "b"}}', "site", id="nested"),
    ],
)
def test_json_body_naming_a_key_twice_is_a_422_problem_naming_it(
    fleet: Api, body: bytes, key: str
) -> None:
    before = rows(fleet.store, "devices")
    response = fleet.call(
        "PATCH",
        f"/api/v1/devices/{DEVICE}",
        content=body,
        headers={"Content-Type": "application/json"},
    )
    assert f"names {key!r} more than once" in problem_of(response, 422)["detail"]
    assert rows(fleet.store, "devices") == before


def test_unknown_body_field_is_a_422_problem(fleet: Api) -> None:
    response = fleet.call("PATCH", f"/api/v1/devices/{DEVICE}", json={"tags": {}, "status": "x"})
    problem_of(response, 422)


def test_body_over_the_cap_is_a_413_problem_by_content_length(api: Api) -> None:
    response = api.call("POST", "/api/v1/tokens", content=b"x" * (1024 * 1024 + 1))
    assert problem_of(response, 413)["reason"] == "oversize"


def test_streamed_body_over_the_cap_is_cut_off_with_413(api: Api) -> None:
    def chunks() -> Iterator[bytes]:
        for _ in range(20):
            yield b"x" * 65536

    response = api.call("POST", "/api/v1/tokens", content=chunks())
    assert problem_of(response, 413)["reason"] == "oversize"


def test_upload_over_its_file_cap_is_a_413_problem(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("hub.api.models.MAX_MODEL_BYTES", 100)
    response = api.call("POST", "/api/v1/models", role="operator", **register_form())
    assert problem_of(response, 413)["detail"] == "model exceeds 100 bytes"
    assert api.store.registry.models() == []


def test_unexpected_error_is_a_500_problem_without_internals(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken() -> list[Any]:
        raise RuntimeError("secret internals at /srv/hub.db")

    monkeypatch.setattr(api.hub.registry, "list_models", broken)
    body = problem_of(api.call("GET", "/api/v1/models"), 500)
    assert "secret" not in json.dumps(body)


# ---------------------------------------------------------------------- devices


@pytest.fixture
def many(api: Api) -> Api:
    for i in range(25):
        status: DeviceStatus = ("active", "pending", "revoked")[i % 3]
        tags = {"site": "berlin" if i < 10 else "lyon"}
        model = {"active_name": "iris", "active_version": 1 + i % 2} if i % 5 else {}
        health = Health.STUCK if i % 4 == 0 else Health.OK
        add_device(
            api.store, f"dev-{i:02d}", status, tags=tags, online=bool(i % 2), health=health,
            **model,
        )  # fmt: skip
    return api


def ids(response: Response) -> list[str]:
    assert response.status_code == 200, response.text
    return [d["id"] for d in response.json()["items"]]


def test_device_pages_are_ordered_by_id_with_the_total(many: Api) -> None:
    first = many.call("GET", "/api/v1/devices?limit=10", role="viewer")
    second = many.call("GET", "/api/v1/devices?limit=10&offset=10", role="viewer")
    assert ids(first) == [f"dev-{i:02d}" for i in range(10)]
    assert ids(second) == [f"dev-{i:02d}" for i in range(10, 20)]
    assert first.json()["total"] == second.json()["total"] == 25


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("status=pending", [i for i in range(25) if i % 3 == 1]),
        ("tag=site:berlin", list(range(10))),
        ("tag=site:paris", []),
        ("model=iris", [i for i in range(25) if i % 5]),
        ("model=iris:2", [i for i in range(25) if i % 5 and i % 2]),
        ("online=true", [i for i in range(25) if i % 2]),
        ("status=active&tag=site:lyon&online=false", [12, 18, 24]),
        ("health=stuck", [i for i in range(25) if i % 4 == 0]),
        ("health=stuck&status=active", [0, 12, 24]),
        ("health=freeze_suspected", []),
    ],
)
def test_device_filters_combine(many: Api, query: str, expected: list[int]) -> None:
    response = many.call("GET", f"/api/v1/devices?{query}&limit=1000", role="viewer")
    assert ids(response) == [f"dev-{i:02d}" for i in expected]
    assert response.json()["total"] == len(expected)


def test_tags_change_by_merge_patch_and_the_change_is_audited(many: Api) -> None:
    many.hub.clock.advance(60)
    response = many.call(
        "PATCH",
        "/api/v1/devices/dev-03",
        role="operator",
        json={"tags": {"site": None, "rack": "r7"}},
    )
    assert response.status_code == 200
    assert response.json()["tags"] == {"rack": "r7"}
    [row] = many.store.audit.page(action="device.update").items
    assert row.actor == f"token:{many.tokens['operator'].id}"
    assert row.at == many.hub.clock.now_ms()
    assert row.target == "dev-03"


def test_too_many_tags_are_refused(fleet: Api) -> None:
    tags = {f"t{i}": "x" for i in range(32)}
    assert fleet.call("PATCH", f"/api/v1/devices/{DEVICE}", json={"tags": tags}).status_code == 200
    more = {"one-more": "x"}
    problem_of(fleet.call("PATCH", f"/api/v1/devices/{DEVICE}", json={"tags": more}), 422)


def test_operator_approves_a_pending_device(api: Api) -> None:
    add_device(api.store, "p-1", "pending")
    response = api.call("POST", "/api/v1/devices/p-1/approve", role="operator")
    assert response.status_code == 200
    assert response.json()["status"] == "active"
    [row] = api.store.audit.page(target="p-1").items
    assert row.actor == f"token:{api.tokens['operator'].id}"


def test_admin_revokes_a_device(fleet: Api) -> None:
    response = fleet.call("POST", f"/api/v1/devices/{DEVICE}/revoke")
    assert response.json()["status"] == "revoked"
    problem_of(fleet.call("POST", f"/api/v1/devices/{DEVICE}/revoke"), 409)


def test_desired_state_is_set_read_and_cleared(fleet: Api) -> None:
    path = f"/api/v1/devices/{DEVICE}/desired"
    body = {"model": "iris", "version": 1, "config": {"window_s": 30}}
    response = fleet.call("PUT", path, role="operator", json=body)
    assert response.status_code == 200, response.text
    desired = fleet.call("GET", path, role="viewer").json()
    assert (desired["model"], desired["version"], desired["config"]["window_s"]) == ("iris", 1, 30)
    assert desired["set_by"] == f"token:{fleet.tokens['operator'].id}"
    device = fleet.call("GET", f"/api/v1/devices/{DEVICE}", role="viewer").json()
    assert device["desired"]["assignment_version"] == 1
    assert fleet.call("DELETE", path, role="operator").status_code == 204
    problem_of(fleet.call("GET", path), 404)


@pytest.mark.parametrize(
    ("body", "status"),
    [
        pytest.param({"model": "iris", "version": 9}, 404, id="unknown-version"),
        pytest.param({"model": "iris", "version": 1, "config": {"window_s": 0}}, 422, id="range"),
        pytest.param({"model": "../x", "version": 1}, 422, id="name-traversal"),
    ],
)
def test_bad_desired_state_is_refused(fleet: Api, body: dict[str, Any], status: int) -> None:
    problem_of(fleet.call("PUT", f"/api/v1/devices/{DEVICE}/desired", json=body), status)
    assert fleet.store.desired.find(DEVICE) is None


# ---------------------------------------------------------------------- enrollment tokens


def test_enrollment_tokens_are_created_listed_and_revoked(api: Api) -> None:
    api.hub.clock.advance(10)
    body = {"kind": "fleet", "expires_in_s": 3600, "tags": {"site": "berlin"}}
    created = api.call("POST", "/api/v1/enrollment-tokens", json=body)
    assert created.status_code == 201
    token = created.json()
    assert token["expires_at"] == api.hub.clock.now_ms() + 3_600_000
    listing = api.call("GET", "/api/v1/enrollment-tokens").json()
    assert [t["id"] for t in listing["items"]] == [token["id"]]
    assert token["token"] not in json.dumps(listing)
    assert api.call("DELETE", f"/api/v1/enrollment-tokens/{token['id']}").status_code == 204
    assert api.call("GET", "/api/v1/enrollment-tokens").json()["items"][0]["revoked"] is True


def test_fleet_enrollment_token_without_expiry_is_refused(api: Api) -> None:
    problem_of(api.call("POST", "/api/v1/enrollment-tokens", json={"kind": "fleet"}), 422)


# ---------------------------------------------------------------------- models


def test_multipart_registration_creates_version_1(api: Api) -> None:
    response = api.call("POST", "/api/v1/models", role="operator", **register_form())
    assert response.status_code == 201, response.text
    body = response.json()
    assert (body["name"], body["version"], body["release_pending"]) == ("iris", 1, False)
    assert api.hub.registry.get_version("iris", 1).sha256 == body["sha256"]
    version = api.call("GET", "/api/v1/models/iris/versions/1", role="viewer").json()
    assert version["status"] == "released"
    assert version["created_by"] == f"token:{api.tokens['operator'].id}"
    models_page = api.call("GET", "/api/v1/models", role="viewer").json()
    assert models_page["items"][0]["latest_version"] == 1


def test_registering_the_same_upload_again_is_200_with_the_same_version(api: Api) -> None:
    first = api.call("POST", "/api/v1/models", role="operator", **register_form())
    again = api.call("POST", "/api/v1/models", role="operator", **register_form())
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json() == {**first.json(), "created": False}
    assert [v.version for v in api.hub.registry.list_versions("iris")] == [1]


def test_registration_with_validation_data_records_metrics(api: Api) -> None:
    exported = models.mlp_classifier()
    form: dict[str, Any] = {
        "files": {
            "model": ("m.onnx", exported.model),
            "reference": ("r.npz", npz(X=exported.x)),
            "validation": ("v.npz", npz(X=exported.x, y=exported.estimator.predict(exported.x))),
        },
        "data": {"name": "mlp"},
    }
    response = api.call("POST", "/api/v1/models", **form)
    assert response.status_code == 201, response.text
    assert response.json()["metrics"]


def test_hostile_model_upload_is_refused_and_audited(api: Api) -> None:
    form = register_form()
    form["files"]["model"] = ("m.onnx", models.custom_domain_node())
    response = api.call("POST", "/api/v1/models", role="operator", **form)
    assert 400 <= response.status_code < 500
    assert response.headers["content-type"] == PROBLEM
    assert api.store.registry.models() == []
    [row] = api.store.audit.page(action="model.register", outcome="rejected").items
    assert row.actor == f"token:{api.tokens['operator'].id}"


def test_versions_and_lineage_are_listed(fleet: Api) -> None:
    fleet.hub.register(reference=reference(seed=2))  # other bytes: a new version
    versions = fleet.call("GET", "/api/v1/models/iris/versions", role="viewer").json()
    assert [v["version"] for v in versions["items"]] == [1, 2]
    lineage = fleet.call("GET", "/api/v1/models/iris/versions/2/lineage", role="viewer").json()
    assert [v["version"] for v in lineage["items"]] == [2, 1]
    problem_of(fleet.call("GET", "/api/v1/models/nope/versions"), 404)


def test_download_is_the_package_with_its_digest(fleet: Api) -> None:
    response = fleet.call("GET", "/api/v1/models/iris/versions/1/download", role="viewer")
    assert response.headers["content-type"] == "application/octet-stream"
    digest = fleet.hub.registry.get_version("iris", 1).sha256
    assert hashlib.sha256(response.content).hexdigest() == digest


def test_artifact_download_matches_its_sha256(fleet: Api) -> None:
    digest = fleet.hub.registry.get_version("iris", 1).sha256
    response = fleet.call("GET", f"/api/v1/artifacts/{digest}", role="viewer")
    assert response.status_code == 200
    assert hashlib.sha256(response.content).hexdigest() == digest


def test_artifact_range_is_a_206_part(fleet: Api) -> None:
    digest = fleet.hub.registry.get_version("iris", 1).sha256
    whole = fleet.call("GET", f"/api/v1/artifacts/{digest}").content
    part = fleet.call("GET", f"/api/v1/artifacts/{digest}", headers={"Range": "bytes=10-19"})
    assert part.status_code == 206
    assert part.content == whole[10:20]
    assert part.headers["content-range"] == f"bytes 10-19/{len(whole)}"
    beyond = fleet.call(
        "GET", f"/api/v1/artifacts/{digest}", headers={"Range": f"bytes={len(whole)}-"}
    )
    assert problem_of(beyond, 416)["reason"] == "range_not_satisfiable"


@pytest.mark.parametrize(
    ("digest", "status"),
    [
        pytest.param("A" * 64, 422, id="upper-case"),
        pytest.param("a" * 63, 422, id="short"),
        pytest.param("..%2F..%2Fhub.db", 404, id="encoded-traversal"),
        pytest.param("../../hub.db", 404, id="traversal"),
        pytest.param(MISSING_SHA, 404, id="unknown"),
    ],
)
def test_artifact_path_that_is_not_a_digest_is_refused(
    fleet: Api, digest: str, status: int
) -> None:
    problem_of(fleet.call("GET", f"/api/v1/artifacts/{digest}", role="viewer"), status)


def test_release_list_signed_offline_is_published(tmp_path: Path, clock: FakeClock) -> None:
    api = make_api(tmp_path, clock, release_online=False)
    api.call("POST", "/api/v1/models", **register_form())
    pending = api.hub.registry.pending_release()
    assert pending is not None
    document = json.loads(sign_offline(api.hub, pending).to_bytes())
    response = api.call("POST", "/api/v1/releases", role="operator", json=document)
    assert response.status_code == 200, response.text
    assert response.json()["version"] == 1
    assert api.hub.registry.get_version("iris", 1).status == "released"
    problem_of(api.call("POST", "/api/v1/releases", json=document), 409)


def test_pending_release_list_is_read_for_signing(tmp_path: Path, clock: FakeClock) -> None:
    api = make_api(tmp_path, clock, release_online=False)
    problem_of(api.call("GET", "/api/v1/releases/pending", role="viewer"), 404)
    api.call("POST", "/api/v1/models", **register_form())
    pending = api.call("GET", "/api/v1/releases/pending", role="viewer")
    assert pending.status_code == 200
    expected = api.hub.registry.pending_release()
    assert expected is not None
    assert pending.json() == json.loads(expected.to_bytes())


def test_unsigned_release_list_is_refused(tmp_path: Path, clock: FakeClock) -> None:
    api = make_api(tmp_path, clock, release_online=False)
    api.call("POST", "/api/v1/models", **register_form())
    pending = api.hub.registry.pending_release()
    assert pending is not None
    response = api.call("POST", "/api/v1/releases", json=json.loads(pending.to_bytes()))
    assert problem_of(response, 422)["errors"][0]["loc"] == ["body", "signatures"]


# ---------------------------------------------------------------------- audit, system


def test_audit_filters_by_actor_action_outcome_and_time(fleet: Api) -> None:
    operator = f"token:{fleet.tokens['operator'].id}"
    fleet.hub.clock.advance(5)
    since = fleet.hub.clock.now_ms()
    fleet.call("PATCH", f"/api/v1/devices/{DEVICE}", role="operator", json={"tags": {"a": "b"}})
    fleet.call("POST", f"/api/v1/devices/{DEVICE}/revoke", role="operator")
    page = fleet.call("GET", f"/api/v1/audit?actor={operator}&since={since}", role="viewer").json()
    assert [(e["action"], e["outcome"]) for e in page["items"]] == [
        ("device.revoke", "rejected"),
        ("device.update", "ok"),
    ]
    rejected = fleet.call("GET", "/api/v1/audit?outcome=rejected", role="viewer").json()
    assert rejected["total"] == 1
    assert rejected["items"][0]["detail"] == {}


def test_healthz_needs_no_token(api: Api) -> None:
    assert api.client.get("/healthz").json() == {"status": "ok", "store": True, "role": "single"}


def test_metrics_count_requests_by_route_name(api: Api) -> None:
    api.call("GET", "/api/v1/devices", role="viewer")
    text = api.call("GET", "/metrics", role="viewer").text
    sample = 'edgefleet_hub_http_requests_total{method="GET",route="device.list",status="200"}'
    assert sample in text
    problem_of(api.call("GET", "/metrics", role=None), 401)
