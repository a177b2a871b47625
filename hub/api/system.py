"""``GET /healthz`` (no token) and ``GET /metrics`` (viewer token).

``/healthz`` answers whether this process can still query its store: what a load
balancer or a container runtime needs, and nothing an anonymous caller could learn the
fleet from. ``/metrics`` needs a viewer token: its series (the fleet's gauges counted from
the store, devices rejected by reason, request counts, ingest queue depth) describe the
fleet and its traffic (docs/operations.md says why no separate setting), and Prometheus
sends a bearer token with ``authorization: {credentials_file: ...}`` in its scrape
config. Give it a token of its own (``edgefleet hub token create --role viewer
--name prometheus``) so it can be revoked alone.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from hub.api.deps import GuardedRoute, StoreDep, ViewerDep, get_context
from hub.api.errors import problem_responses
from hub.api.schemas import Health
from hub.errors import HubError

router = APIRouter(tags=["system"], route_class=GuardedRoute)


class StoreUnavailable(HubError):
    """The store did not answer a trivial query."""

    reason = "store_unavailable"
    status_hint = 503


@router.get(
    "/healthz",
    name="system.health",
    summary="Is the hub up and its store reachable (no token needed)",
    response_model=Health,
    responses=problem_responses(503),
)
def health(store: StoreDep, request: Request) -> Health:
    """For load balancers and container runtimes: says nothing about the fleet, only
    whether this process is a lone hub, the replicas' leader or a follower.
    \f
    Raises:
        StoreUnavailable: the store did not answer (503).
    """
    if not store.ping():
        raise StoreUnavailable("the store did not answer")
    role = get_context(request).hub.role
    return Health(status="ok", store=True, role=role)


class MetricsResponse(PlainTextResponse):
    media_type = CONTENT_TYPE_LATEST


@router.get(
    "/metrics",
    name="system.metrics",
    summary="Prometheus metrics of the hub and of this API",
    response_class=MetricsResponse,
)
def metrics(_: ViewerDep, request: Request) -> MetricsResponse:
    context = get_context(request)
    body = generate_latest(context.services.metrics) + generate_latest(context.api_metrics)
    return MetricsResponse(body)
