"""Schemathesis against ``/openapi.json``: no 500, and every answer is what the schema says.

Every operation gets generated requests, valid and invalid (schemathesis' positive and
negative modes), sent through the ASGI app with an admin token. The checks are all of
schemathesis' defaults but one: ``positive_data_acceptance`` wants a 2xx for any
schema-valid request, and here the schema cannot say everything the hub checks (random
bytes match ``format: binary`` but are no ONNX model; a release list with a random
signature is well-formed but does not verify), so 4xx for those is correct.

A third run keeps schemathesis' ``positive_data_acceptance`` for the operations whose
schema can state everything the hub checks, and for the two that carry content only
the hub can judge (an ONNX model, a signed release list) allows exactly those refusals.

A second run sends every changing operation with a viewer token: whatever the path,
query and body, the answer is 403, because the role is checked before anything is read
(401 when a negative case dropped or mangled the token itself).

The operations are driven with ``operation.as_strategy()`` under hypothesis rather than
``schema.parametrize()``: the latter needs the app at import time (or schemathesis'
lazy fixture loader, which does not run under pytest 9), and each test here builds its
own hub in ``tmp_path``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.config import SchemathesisConfig
from schemathesis.core.result import Ok
from schemathesis.specs.openapi.checks import positive_data_acceptance

from hub.api.auth import Role
from hub.api.schemas import ReleaseListIn
from protocol.documents import document_type
from tests.clock import FakeClock
from tests.hub.test_api import Api, add_device, make_api, register_form

MAX_EXAMPLES = 15
"""Per operation and mode: ~25 operations x 2 modes x 15 cases take about half a minute."""
CHANGES = frozenset({"POST", "PUT", "PATCH", "DELETE"})
SETTINGS = settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    database=None,
)


@pytest.fixture
def api(tmp_path: Path, clock: FakeClock) -> Iterator[Api]:
    """An API with devices, a released model and a desired state to find."""
    built = make_api(tmp_path, clock)
    add_device(built.store, "dev-1")
    add_device(built.store, "p-1", "pending")
    built.hub.register()
    built.call("PUT", "/api/v1/devices/dev-1/desired", json={"model": "iris", "version": 1})
    with built.client:
        yield built


def fuzz(
    api: Api,
    role: Role,
    test: Callable[[Any], None],
    *,
    methods: frozenset[str] | None = None,
    modes: tuple[GenerationMode, ...] = (GenerationMode.POSITIVE, GenerationMode.NEGATIVE),
) -> tuple[int, list[str]]:
    """Run ``test`` on generated cases of every operation (of ``methods``), both modes,
    authenticated with ``role``'s token.

    The token goes in through schemathesis' auth configuration rather than as a header
    of each call: negative cases then vary everything but it, instead of dropping the
    header and being "accepted" when the call adds it back.

    Returns the number of cases run and one line per failing operation and mode.
    """
    config = SchemathesisConfig.from_dict(
        {"auth": {"openapi": {"token": {"bearer": api.tokens[role].token}}}}
    )
    schema = schemathesis.openapi.from_asgi("/openapi.json", api.client.app, config=config)
    cases = 0
    failures: list[str] = []
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), result
        operation = result.ok()
        if methods is not None and operation.method.upper() not in methods:
            continue
        for mode in modes:

            @SETTINGS
            @given(case=operation.as_strategy(generation_mode=mode))
            def run(case: Any) -> None:
                nonlocal cases
                cases += 1
                test(case)

            try:
                run()
            except Unsatisfiable:  # nothing to make invalid (GET /healthz takes no input)
                continue
            except (Exception, BaseExceptionGroup) as e:  # collect all, then report them all
                failures.append(f"{operation.label} [{mode}]: {e}")
    return cases, failures


def test_admin_requests_never_crash_and_match_the_schema(api: Api) -> None:
    def check(case: Any) -> None:
        case.call_and_validate(excluded_checks=[positive_data_acceptance])

    cases, failures = fuzz(api, "admin", check)
    assert not failures, "\n\n".join(failures)
    assert cases > 200


def test_viewer_gets_403_on_every_change_whatever_the_request(api: Api) -> None:
    viewer = f"Bearer {api.tokens['viewer'].token}"

    def check(case: Any) -> None:
        response = case.call()
        # negative cases may drop or mangle the Authorization header: then 401, never more
        expected = 403 if response.request.headers.get("authorization") == viewer else 401
        assert response.status_code == expected, f"{case.method} {case.formatted_path}"

    cases, failures = fuzz(api, "viewer", check, methods=CHANGES)
    assert not failures, "\n\n".join(failures)
    assert cases > 100


CONTENT_JUDGED = {
    "model.register": {400, 422},
    "release.publish": {400},
    "rollout.create": {422},
    "rollout.dry_run": {422},
}
"""Operations whose bodies carry content only the hub can judge: an ONNX graph and
``.npz`` rows (refused as malformed or unusable: 400, 422), a release list inside a
base64 payload (400), a rollout spec (stages' percentages increase to 100, a gate
belongs to its stage...: 422, docs/rollouts.md). Their schemas state everything else
(non-empty files, no nulls, the payload type, a signature at least), and every other
answer must be a 2xx, or
401/403/404/409 (state: an unknown id, a device already revoked)."""


def test_schema_valid_requests_are_accepted(api: Api) -> None:
    def check(case: Any) -> None:
        response = case.call()
        allowed = CONTENT_JUDGED.get(case.operation.definition.raw.get("operationId"), set())
        if response.status_code in allowed:
            body = response.json()
            assert body["reason"] in {
                "malformed", "invalid_request", "unsafe_model", "wrong_kind", "invalid_rollout"
            }  # fmt: skip
            return
        case.validate_response(response, checks=[positive_data_acceptance])

    cases, failures = fuzz(api, "admin", check, modes=(GenerationMode.POSITIVE,))
    assert not failures, "\n\n".join(failures)
    assert cases > 100


# ---------------------------------------------------------------------- what schemathesis found


def test_release_payload_type_is_the_protocols() -> None:
    schema = ReleaseListIn.model_json_schema()
    assert schema["properties"]["payloadType"]["const"] == document_type("release")


@pytest.mark.parametrize(
    "body",
    [
        pytest.param({"kind": "fleet"}, id="fleet-without-lifetime"),
        pytest.param({"kind": "fleet", "expires_in_s": None}, id="fleet-null-lifetime"),
    ],
)
def test_fleet_token_without_a_lifetime_is_refused_by_the_schema(
    api: Api, body: dict[str, Any]
) -> None:
    response = api.call("POST", "/api/v1/enrollment-tokens", json=body)
    assert response.status_code == 422
    assert response.json()["errors"][0]["loc"][:2] == ["body", "fleet"]


def test_single_token_with_null_lifetime_never_expires(api: Api) -> None:
    body = {"kind": "single", "expires_in_s": None}
    response = api.call("POST", "/api/v1/enrollment-tokens", json=body)
    assert response.status_code == 201
    assert response.json()["expires_at"] is None


def test_multipart_schema_has_no_null_fields_and_no_empty_files(api: Api) -> None:
    doc = api.client.get("/openapi.json").json()
    [form] = [
        schema["properties"]
        for schema in doc["components"]["schemas"].values()
        if schema.get("title") == "Body_model.register"
    ]
    assert all("anyOf" not in field for field in form.values())
    files = [f for f in form.values() if f.get("contentMediaType") == "application/octet-stream"]
    assert len(files) == 3
    assert all(f["minLength"] == 1 for f in files)


def test_empty_validation_file_is_refused_not_ignored(api: Api) -> None:
    form = register_form("other", validation=("v.npz", b""))
    response = api.call("POST", "/api/v1/models", role="operator", **form)
    assert response.status_code == 422
    assert response.json()["detail"] == "validation is an empty file"
    assert not api.store.registry.has_model("other")
