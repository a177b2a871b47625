"""The local HTTP API against a fake InferenceService: routing, JSON, and 4xx for bad input."""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator, Mapping
from typing import Any

import pytest

from agent.errors import ConfigError, InvalidInput, NotReady
from agent.http_api import HttpApi, Prediction


class FakeService:
    """Two-feature float model: rows must be lists of two numbers."""

    def __init__(self) -> None:
        self.labels: dict[str, Any] = {}
        self.ready = True

    def predict(self, inputs: list[Any]) -> Prediction:
        if not self.ready:
            raise NotReady("no active model")
        for row in inputs:
            ok = isinstance(row, list) and len(row) == 2
            if not ok or not all(isinstance(v, int | float) for v in row):
                raise InvalidInput("each input must be 2 numbers (float32[2])")
        return Prediction([f"p{i}" for i in range(len(inputs))], [sum(r) for r in inputs])

    def feedback(self, labels: Mapping[str, Any]) -> Mapping[str, Any]:
        self.labels.update(labels)
        return {"accepted": len(labels)}

    def status(self) -> Mapping[str, Any]:
        return {"model": "m@1"}


class BrokenService(FakeService):
    def predict(self, inputs: list[Any]) -> Prediction:
        raise RuntimeError("onnxruntime exploded at /secret/path")


@pytest.fixture
def service() -> FakeService:
    return FakeService()


def serve(service: FakeService, **kwargs: Any) -> Iterator[HttpApi]:
    api = HttpApi(service, "127.0.0.1", 0, **kwargs)
    api.start()
    try:
        yield api
    finally:
        api.stop()


@pytest.fixture
def api(service: FakeService) -> Iterator[HttpApi]:
    yield from serve(service, max_body_bytes=4096)


def call(
    api: HttpApi, method: str, path: str, body: bytes | None = None, headers: dict | None = None
) -> tuple[int, dict[str, Any]]:
    conn = http.client.HTTPConnection("127.0.0.1", api.port, timeout=10)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        assert response.getheader("Content-Type") == "application/json"
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def post(api: HttpApi, path: str, doc: Any) -> tuple[int, dict[str, Any]]:
    return call(api, "POST", path, json.dumps(doc).encode())


def test_http_predict_returns_ids_and_outputs(api: HttpApi) -> None:
    assert post(api, "/predict", {"inputs": [[1, 2], [3.5, 0]]}) == (
        200,
        {"ids": ["p0", "p1"], "outputs": [3, 3.5]},
    )


def test_http_feedback_passes_labels_to_the_service(api: HttpApi, service: FakeService) -> None:
    assert post(api, "/feedback", {"labels": {"p0": 1}}) == (200, {"accepted": 1})
    assert service.labels == {"p0": 1}


def test_http_status_reports_the_service_status(api: HttpApi) -> None:
    assert call(api, "GET", "/status") == (200, {"model": "m@1"})


BAD_REQUESTS = [
    pytest.param("POST", "/predict", b"{not json", 400, "bad_request", id="not-json"),
    pytest.param("POST", "/predict", b'{"inputs": [[NaN, 1]]}', 400, "bad_request", id="nan"),
    pytest.param("POST", "/predict", b"[" * 2000 + b"]" * 2000, 400, "bad_request", id="deep"),
    pytest.param("POST", "/predict", b'{"rows": []}', 400, "bad_request", id="no-inputs"),
    pytest.param("POST", "/predict", b'{"inputs": {"a": 1}}', 400, "bad_request", id="not-list"),
    pytest.param("POST", "/predict", b'{"inputs": [[1, 2, 3]]}', 422, "invalid_input", id="shape"),
    pytest.param("POST", "/predict", b'{"inputs": [["a", 2]]}', 422, "invalid_input", id="dtype"),
    pytest.param("POST", "/feedback", b'{"labels": [1]}', 400, "bad_request", id="labels-list"),
    pytest.param("POST", "/predict", b"x" * 5000, 413, "too_large", id="too-large"),
    pytest.param("GET", "/predict", None, 405, "method_not_allowed", id="get-predict"),
    pytest.param("DELETE", "/status", None, 405, "method_not_allowed", id="delete-status"),
    pytest.param("GET", "/admin", None, 404, "not_found", id="unknown-route"),
]  # fmt: skip


@pytest.mark.parametrize(("method", "path", "body", "status", "reason"), BAD_REQUESTS)
def test_http_refuses_bad_requests_with_a_json_4xx(
    api: HttpApi, method: str, path: str, body: bytes | None, status: int, reason: str
) -> None:
    got_status, doc = call(api, method, path, body)
    assert (got_status, doc["error"]) == (status, reason)
    assert doc["detail"]


def test_http_requires_a_content_length(api: HttpApi) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", api.port, timeout=10)
    conn.putrequest("POST", "/predict")
    conn.endheaders()
    response = conn.getresponse()
    assert (response.status, json.loads(response.read())["error"]) == (411, "length_required")
    conn.close()


def test_http_answers_503_before_a_model_is_active(api: HttpApi, service: FakeService) -> None:
    service.ready = False
    status, doc = post(api, "/predict", {"inputs": [[1, 2]]})
    assert (status, doc["error"]) == (503, "not_ready")


def test_http_hides_internal_failures_behind_a_plain_500(caplog) -> None:
    for api in serve(BrokenService()):
        status, doc = post(api, "/predict", {"inputs": [[1, 2]]})
    assert (status, doc["error"]) == (500, "internal")
    assert "secret" not in json.dumps(doc)
    assert "onnxruntime exploded" in caplog.text


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.10", "example.com", "::"])
def test_http_refuses_to_listen_beyond_loopback(service: FakeService, host: str) -> None:
    with pytest.raises(ConfigError, match="loopback"):
        HttpApi(service, host, 0)


def test_http_metrics_serves_the_exposition_text_when_given_a_source(
    service: FakeService,
) -> None:
    text = b"# TYPE edgefleet_agent_inference_rows_total counter\n"
    for api in serve(service, metrics=lambda: (text, "text/plain; version=0.0.4")):
        conn = http.client.HTTPConnection("127.0.0.1", api.port, timeout=10)
        conn.request("GET", "/metrics")
        response = conn.getresponse()
        assert (response.status, response.getheader("Content-Type")) == (
            200,
            "text/plain; version=0.0.4",
        )
        assert response.read() == text
        conn.close()
        assert call(api, "POST", "/metrics", b"{}")[0] == 405


def test_http_metrics_is_not_found_without_a_source(api: HttpApi) -> None:
    assert call(api, "GET", "/metrics")[0] == 404
