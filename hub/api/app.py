"""The hub's REST API as a FastAPI application, built by :func:`create_app`.

Nothing is created at import time: ``create_app(ctx, services)`` returns a new app each
call, holding the hub context and its collaborators on ``app.state.context``, so tests
and the simulator can build as many as they like, each with its own settings.

Layout: ``GET /healthz`` and ``GET /metrics`` at the root, everything else under
``/api/v1`` (devices, enrollment and API tokens, models, versions, releases, artifacts,
audit); the web dashboard under ``/ui`` (:mod:`hub.ui`, installed here, out of the
schema). The schema is at ``/openapi.json`` (interactive docs at ``/docs``, served from
local files: :mod:`hub.api.docs`); each route's ``name`` is both its OpenAPI
``operationId`` and the action its audit rows record.

Request metrics (``edgefleet_hub_http_requests_total{method,route,status}`` and
``edgefleet_hub_http_request_seconds{method,route}``) live in a registry of the app's
own, so two apps in one process never collide; ``/metrics`` serves it after the hub's
registry (``services.metrics``). ``route`` is the route's name, never the raw path, so
the label set stays bounded whatever clients send. The fleet's gauges
(:mod:`hub.api.fleet_metrics`) are counted from the store at each scrape, in the same
registry.
"""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, FastAPI
from fastapi.routing import APIRoute
from prometheus_client import CollectorRegistry, Counter, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from hub import ui
from hub.api import (
    audit,
    devices,
    docs,
    drift,
    errors,
    models,
    reports,
    rollouts,
    rounds,
    system,
    tokens,
)
from hub.api.auth import Principal
from hub.api.deps import AppContext
from hub.api.drift_metrics import DriftCollector
from hub.api.fleet_metrics import FleetCollector
from hub.api.rollout_metrics import RolloutCollector
from hub.api.schemas import Problem
from hub.api.services import HubServices
from hub.context import HubContext

API_PREFIX = "/api/v1"
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_ROUTERS: tuple[tuple[str, APIRouter], ...] = (
    ("", system.router),
    (API_PREFIX, devices.router),
    (API_PREFIX, tokens.router),
    (API_PREFIX, models.router),
    (API_PREFIX, models.uploads),
    (API_PREFIX, reports.router),
    (API_PREFIX, audit.router),
    (API_PREFIX, rounds.router),
    (API_PREFIX, rounds.uploads),
    (API_PREFIX, drift.router),
    (API_PREFIX, rollouts.router),
)


class HubAPI(FastAPI):
    """FastAPI with the problem+json schema that error responses refer to."""

    def openapi(self) -> dict[str, Any]:
        schema = super().openapi()
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        if "Problem" not in components:
            problem = Problem.model_json_schema(ref_template="#/components/schemas/{model}")
            components.update(problem.pop("$defs", {}))
            components["Problem"] = problem
            for name in _multipart_bodies(schema):
                _tighten_form(components[name])
        return schema


def _multipart_bodies(schema: dict[str, Any]) -> set[str]:
    """Names of the component schemas that describe multipart request bodies."""
    names = set()
    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            content = operation.get("requestBody", {}).get("content", {})
            ref = content.get("multipart/form-data", {}).get("schema", {}).get("$ref", "")
            if ref:
                names.add(ref.rsplit("/", 1)[-1])
    return names


def _tighten_form(body: dict[str, Any]) -> None:
    """Make a multipart body's schema say what the routes accept.

    FastAPI writes an optional form field as ``anyOf: [T, null]``, but a form cannot
    carry null: a field is sent or left out. And an uploaded file must not be empty
    (the routes refuse one). Both were schema-valid requests the hub refused.
    """
    required = set(body.get("required", ()))
    for name, field in body.get("properties", {}).items():
        options = field.get("anyOf")
        if name not in required and options:
            kept = [o for o in options if o != {"type": "null"}]
            if len(kept) == 1:
                del field["anyOf"]
                field.update(kept[0])
        if field.get("contentMediaType") == "application/octet-stream":
            field["minLength"] = 1


def create_app(
    ctx: HubContext, services: HubServices, *, local: Principal | None = None
) -> FastAPI:
    """A new REST API over the hub context ``ctx``; see the module docstring.

    ``local`` is for the CLI's ``--data`` mode only (:class:`hub.api.deps.AppContext`).
    """
    app = HubAPI(
        title="edgefleet hub",
        version="1",
        summary="Register and release models, manage a fleet of devices, read the audit log.",
        openapi_url="/openapi.json",
        docs_url=None,  # served from local files by hub.api.docs
        redoc_url=None,
        generate_unique_id_function=_operation_id,
    )
    api_metrics = CollectorRegistry(auto_describe=True)
    api_metrics.register(FleetCollector(ctx.store))
    api_metrics.register(DriftCollector(ctx.store))
    api_metrics.register(RolloutCollector(ctx.store))
    app.state.context = AppContext(ctx, services, api_metrics, local)
    for prefix, router in _ROUTERS:
        app.include_router(router, prefix=prefix)
    docs.install(app)
    ui.install(app)
    errors.install(app)
    app.add_middleware(
        RequestMetrics,
        requests=Counter(
            "edgefleet_hub_http_requests",
            "REST requests answered, by method, route name and status.",
            ["method", "route", "status"],
            registry=api_metrics,
        ),
        seconds=Histogram(
            "edgefleet_hub_http_request_seconds",
            "Time to answer a REST request, by method and route name.",
            ["method", "route"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10),
            registry=api_metrics,
        ),
    )
    return app


def _operation_id(route: APIRoute) -> str:
    return route.name


class RequestMetrics:
    """Count requests and time them, labelled by method, route name and status."""

    def __init__(self, app: ASGIApp, *, requests: Counter, seconds: Histogram) -> None:
        self.app = app
        self.requests = requests
        self.seconds = seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500
        started = time.perf_counter()

        async def watch(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, watch)
        finally:
            method = scope["method"] if scope["method"] in _METHODS else "OTHER"
            route = str(getattr(scope.get("route"), "name", None) or "unmatched")
            self.requests.labels(method, route, str(status)).inc()
            self.seconds.labels(method, route).observe(time.perf_counter() - started)
