"""The agent's local HTTP API: predict, feedback and status for the device's application.

Standard library only (``http.server.ThreadingHTTPServer``): the agent must stay light,
and three JSON routes need no framework. It listens on a loopback address only (there is
no authentication; anything on the device that can reach it may use it) and refuses to
bind anywhere else.

==========  ===========  ======================================  ===========================
method      path         request body                            200 response
==========  ===========  ======================================  ===========================
``POST``    /predict     ``{"inputs": [[...], ...]}``            ``{"ids": [...], "outputs": ...}``
``POST``    /feedback    ``{"labels": {"<prediction id>": y}}``  what the service reports
``GET``     /status      (none)                                  what the service reports
``GET``     /metrics     (none)                                  Prometheus text format
==========  ===========  ======================================  ===========================

``/metrics`` is served when the API is given a ``metrics`` callable (the daemon's, see
agent/metrics.py), else 404. Loopback only, like the rest: a Prometheus on the device
(or a node exporter's textfile collector, or an SSH tunnel) scrapes it.

Every error is JSON ``{"error": reason, "detail": text}`` with a 4xx status: 400 for a
body that is not JSON or not shaped as above, 404/405 for unknown routes or methods, 411
without a Content-Length, 413 over ``max_body_bytes`` (refused before reading it), and
whatever ``status_hint`` the service's :class:`~agent.errors.AgentError` carries (422 for
inputs of the wrong shape or dtype, 503 before a model is active). A failure that is not
the caller's fault answers 500 ``{"error": "internal"}`` and is logged here; no response
ever carries a traceback.

The routes call an :class:`InferenceService`; the daemon passes itself, forwarding to the
model runtime once one is plugged in.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol

from agent.config import check_loopback
from agent.errors import AgentError, BadRequest, PayloadTooLarge
from protocol.errors import EdgefleetError

logger = logging.getLogger(__name__)

MAX_BODY_BYTES = 1024 * 1024
Metrics = Callable[[], tuple[bytes, str]]
"""Returns the exposition text and its content type."""


@dataclass(frozen=True)
class Prediction:
    """One predict call's answer: an id per input row (for later feedback) and the outputs."""

    ids: Sequence[str]
    outputs: Any


class InferenceService(Protocol):
    """What the HTTP API calls; implementations raise ``RequestError``s for bad input."""

    def predict(self, inputs: list[Any]) -> Prediction: ...

    def feedback(self, labels: Mapping[str, Any]) -> Mapping[str, Any]: ...

    def status(self) -> Mapping[str, Any]: ...


class HttpApi:
    """The local API server; ``port=0`` picks a free port (see :attr:`port`).

    Raises:
        ConfigError: on construction, for a non-loopback ``host``.
    """

    def __init__(
        self,
        service: InferenceService,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        max_body_bytes: int = MAX_BODY_BYTES,
        metrics: Metrics | None = None,
    ) -> None:
        check_loopback(host)
        self._service = service
        self._metrics = metrics
        self._address = ("127.0.0.1" if host == "localhost" else host, port)
        self._max_body = max_body_bytes
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        if self._server is None:
            return self._address[1]
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        host = self._address[0]
        return f"http://{f'[{host}]' if ':' in host else host}:{self.port}"

    def start(self) -> None:
        """Bind and serve in a background thread.

        Raises:
            AgentError: the address cannot be bound (port in use, no IPv6).
        """
        handler = type(
            "Handler",
            (_Handler,),
            {
                "service": self._service,
                "cap": self._max_body,
                "metrics": None if self._metrics is None else staticmethod(self._metrics),
            },
        )
        server_class = _Server6 if ":" in self._address[0] else ThreadingHTTPServer
        try:
            self._server = server_class(self._address, handler)
        except OSError as e:
            raise AgentError(f"local API cannot listen on {self._address}: {e.strerror}") from e
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), name="agent-http", daemon=True
        )
        self._thread.start()
        logger.info("local API listening on %s", self.url)

    def stop(self) -> None:
        """Stop accepting requests; requests in progress finish on their own threads."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join()


class _Server6(ThreadingHTTPServer):
    address_family = socket.AF_INET6


class _Handler(BaseHTTPRequestHandler):
    service: InferenceService
    cap: int
    metrics: Metrics | None
    timeout = 10  # seconds a client may take to send its request
    server_version = "edgefleet-agent"
    sys_version = ""

    def do_GET(self) -> None:
        self._route("GET")

    def do_POST(self) -> None:
        self._route("POST")

    def do_PUT(self) -> None:
        self._route("PUT")

    def do_DELETE(self) -> None:
        self._route("DELETE")

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("%s " + format, self.client_address[0], *args)

    def _route(self, method: str) -> None:
        path = self.path.split("?", 1)[0]
        routes = {"/predict": "POST", "/feedback": "POST", "/status": "GET"}
        if self.metrics is not None:
            routes["/metrics"] = "GET"
        allowed = routes.get(path)
        if allowed is None:
            self._reply(404, {"error": "not_found", "detail": f"no route {path[:64]}"})
            return
        if method != allowed:
            self._reply(405, {"error": "method_not_allowed", "detail": f"use {allowed}"}, allowed)
            return
        if path == "/metrics" and self.metrics is not None:
            self._scrape(self.metrics)
            return
        try:
            if path == "/status":
                body: Any = dict(self.service.status())
            elif path == "/predict":
                inputs = self._field("inputs", list, '{"inputs": [[...], ...]}')
                prediction = self.service.predict(inputs)
                body = {"ids": list(prediction.ids), "outputs": prediction.outputs}
            else:
                labels = self._field("labels", dict, '{"labels": {"<prediction id>": label}}')
                body = dict(self.service.feedback(labels))
            data = json.dumps(body, allow_nan=False).encode()
        except EdgefleetError as e:
            status = e.status_hint if 400 <= e.status_hint < 600 else 500
            self._reply(status, {"error": e.reason, "detail": str(e)})
            return
        except Exception:
            logger.exception("local API %s %s failed", method, path)
            self._reply(500, {"error": "internal", "detail": "see the agent's log"})
            return
        self._send(200, data)

    def _scrape(self, metrics: Metrics) -> None:
        try:
            data, content_type = metrics()
        except Exception:
            logger.exception("local API GET /metrics failed")
            self._reply(500, {"error": "internal", "detail": "see the agent's log"})
            return
        self._send(200, data, content_type=content_type)

    def _field(self, name: str, kind: type, shape: str) -> Any:
        """The request body's JSON object's ``name`` member, which must be a ``kind``.

        Raises:
            BadRequest: no Content-Length, not JSON, or not the documented shape.
            PayloadTooLarge: the body exceeds the cap.
        """
        length = self.headers.get("Content-Length")
        if length is None or not length.isdigit():
            raise _LengthRequired("send a Content-Length header")
        if int(length) > self.cap:
            self.close_connection = True
            raise PayloadTooLarge(f"body of {length} bytes exceeds {self.cap}")
        raw = self.rfile.read(int(length))
        try:
            doc = json.loads(raw, parse_constant=_refuse_constant)
        except (ValueError, RecursionError) as e:
            raise BadRequest(f"body is not JSON: {str(e)[:120]}") from None
        if not isinstance(doc, dict) or not isinstance(doc.get(name), kind):
            raise BadRequest(f"body must be {shape}")
        return doc[name]

    def _reply(self, status: int, body: Mapping[str, Any], allow: str | None = None) -> None:
        self._send(status, json.dumps(body).encode(), allow)

    def _send(
        self,
        status: int,
        data: bytes,
        allow: str | None = None,
        *,
        content_type: str = "application/json",
    ) -> None:
        self.send_response(status, HTTPStatus(status).phrase)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        if allow is not None:
            self.send_header("Allow", allow)
        self.end_headers()
        self.wfile.write(data)


class _LengthRequired(BadRequest):
    reason = "length_required"
    status_hint = 411


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")
