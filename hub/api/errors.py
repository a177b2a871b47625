"""Every error the REST API answers is ``application/problem+json`` (RFC 9457).

One handler maps the whole :class:`~protocol.errors.EdgefleetError` tree, using each
class's ``status_hint`` and ``reason`` (``NotFound`` 404, ``InvalidRequest`` 422,
``Conflict`` 409, ``PermissionDenied`` 403, ``Unauthenticated`` 401 with
``WWW-Authenticate: Bearer``, ``Oversize`` 413...). Starlette's own HTTP errors (no such
route, wrong method, a body over the cap, an unparsable multipart body) and FastAPI's
request validation errors get the same shape. :class:`CrashGuard` turns anything else
into a 500 that says nothing about the internals, and logs it.

The body is ``{type, title, status, detail, reason}`` (plus ``errors`` for 422): ``type``
is ``urn:edgefleet:problem:<reason>``, ``title`` the status phrase. Errors with a 5xx
hint are logged and answered with a generic detail, since their message is about the
hub, not about the request.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from hub.errors import Unauthenticated
from protocol.errors import EdgefleetError

logger = logging.getLogger(__name__)

PROBLEM_MEDIA_TYPE = "application/problem+json"
MAX_DETAIL_CHARS = 500
MAX_ISSUES = 20
INTERNAL_DETAIL = "the hub failed to answer this request; the error is in its log"
_HTTP_REASONS = {
    400: "malformed",
    401: "unauthenticated",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "oversize",
    415: "unsupported_media_type",
}
_PROBLEM_REF = {"$ref": "#/components/schemas/Problem"}


class ProblemResponse(JSONResponse):
    media_type = PROBLEM_MEDIA_TYPE


def problem(
    status: int,
    reason: str,
    detail: str,
    *,
    headers: Mapping[str, str] | None = None,
    errors: list[dict[str, Any]] | None = None,
) -> ProblemResponse:
    """A problem+json response."""
    body: dict[str, Any] = {
        "type": f"urn:edgefleet:problem:{reason}",
        "title": _phrase(status),
        "status": status,
        "detail": detail[:MAX_DETAIL_CHARS],
        "reason": reason,
    }
    if errors is not None:
        body["errors"] = errors
    return ProblemResponse(body, status_code=status, headers=headers)


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries documenting problem+json bodies for ``statuses``."""
    return {
        status: {
            "description": _phrase(status),
            "content": {PROBLEM_MEDIA_TYPE: {"schema": _PROBLEM_REF}},
        }
        for status in statuses
    }


def install(app: FastAPI) -> None:
    """Register the handlers on ``app`` and wrap it in :class:`CrashGuard`."""
    app.add_exception_handler(EdgefleetError, _edgefleet_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_middleware(CrashGuard)


async def _edgefleet_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, EdgefleetError)
    status = exc.status_hint
    if status >= 500:
        logger.error("%s on %s %s: %s", type(exc).__name__, request.method, request.url.path, exc)
        return problem(status, exc.reason, INTERNAL_DETAIL)
    headers = None
    if isinstance(exc, Unauthenticated):
        headers = {"WWW-Authenticate": 'Bearer realm="edgefleet", error="invalid_token"'}
    return problem(status, exc.reason, str(exc) or _phrase(status), headers=headers)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    status = exc.status_code
    reason = _HTTP_REASONS.get(status, f"http_{status}")
    headers = dict(exc.headers or {})
    if status == 405:
        headers["Allow"] = _allowed_methods(request)
    return problem(status, reason, str(exc.detail), headers=headers)


def _allowed_methods(request: Request) -> str:
    """Every method the OpenAPI document lists for this path.

    Starlette's own ``Allow`` names only the first route that matched the path, while
    each method is a route of its own here (``GET`` and ``PATCH /devices/{id}``).
    """
    methods: set[str] = set()
    for template, operations in request.app.openapi().get("paths", {}).items():
        pattern = re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(template))
        if re.fullmatch(pattern, request.url.path):
            methods.update(method.upper() for method in operations)
    return ", ".join(sorted(methods))


async def _validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    issues = [
        {
            "loc": [part if isinstance(part, int) else str(part) for part in e.get("loc", ())],
            "msg": str(e.get("msg", ""))[:MAX_DETAIL_CHARS],
            "type": str(e.get("type", "")),
        }
        for e in list(exc.errors())[:MAX_ISSUES]
    ]
    first = issues[0] if issues else {"loc": [], "msg": "invalid request"}
    where = ".".join(str(part) for part in first["loc"])
    return problem(422, "invalid_request", f"{where}: {first['msg']}", errors=issues)


class CrashGuard:
    """Answer an exception nothing handled with a bare 500 problem, and log it.

    Sits inside Starlette's ``ServerErrorMiddleware``, so the server never sees the
    exception: one log line with the traceback here, no internals in the response.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def watch(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, watch)
        except Exception:
            logger.exception("unhandled error on %s %s", scope.get("method"), scope.get("path"))
            if started:  # too late for a clean answer: let the server drop the connection
                raise
            await problem(500, "internal", INTERNAL_DETAIL)(scope, receive, send)


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"
