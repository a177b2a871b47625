"""Fleet drift: trends per model, cohort and feature, a device's scores, alerts, policies.

Everything reads what the scheduler's drift jobs stored (:mod:`hub.monitor.jobs`): a
cohort's scores per bucket (``GET /drift``: the trend per feature), a device's own buckets
scored on read (``GET /drift/devices/{id}``), alerts (list, read, acknowledge: operator),
and the per-model thresholds (``GET|PUT /models/{name}/drift-policy``; PUT: operator).
Bodies are the drift core's values as JSON (docs/drift.md); the alert's names (features,
cohorts) are up front, the whole alert under ``detail``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Path, Query
from pydantic import BaseModel, Field

from hub.api.deps import ClockDep, GuardedRoute, HubDep, OperatorDep, StoreDep, ViewerDep
from hub.api.errors import problem_responses
from hub.api.schemas import MAX_MS, NAME_PATTERN, _In
from hub.monitor import views
from protocol import schema

router = APIRouter(tags=["drift"], route_class=GuardedRoute)

ModelName = Annotated[str, Path(pattern=NAME_PATTERN, description="The model's name")]
AlertId = Annotated[
    str, Path(pattern=r"^[0-9a-f]{16}-(drift|performance)-[0-9]{1,16}$", description="Alert id")
]
COHORT = r"^(fleet|[A-Za-z0-9._-]{1,64}=[^\x00-\x1f\x7f]{0,128})$"
DAY_MS = 86_400_000


class DriftTrend(BaseModel):
    """A cohort's scores per bucket, oldest first (``buckets``: a CohortView each)."""

    model: str
    version: int | None = Field(description="The version whose profile is the reference")
    scope: str | None = Field(description="The reference digest the scores compare with")
    cohort: str
    buckets: list[dict[str, Any]]


class DeviceDrift(BaseModel):
    """A device's own buckets, scored on read (``features``: a FeatureScore each)."""

    device_id: str
    buckets: list[dict[str, Any]]


class DriftAlert(BaseModel):
    """An alert: what it names (ranked), its state, and the whole alert under ``detail``."""

    id: str
    model: str
    scope: str
    kind: Literal["drift", "performance"]
    state: Literal["open", "acknowledged", "resolved"]
    severity: Literal["warning", "alert"]
    features: list[str]
    cohorts: list[str]
    opened_at: int
    updated_at: int
    resolved_at: int | None
    acknowledged_by: str | None
    round_requested: bool
    detail: dict[str, Any]


class AckIn(_In):
    note: Annotated[str | None, Field(max_length=500)] = None


def _window(since: int | None, until: int | None, now_ms: int) -> tuple[int, int]:
    until_ms = until if until is not None else now_ms + 1
    return (since if since is not None else until_ms - DAY_MS), until_ms


Since = Annotated[int | None, Query(ge=0, le=MAX_MS, description="buckets starting at/after, ms")]
Until = Annotated[int | None, Query(ge=0, le=MAX_MS, description="buckets starting before, ms")]


@router.get(
    "/drift",
    name="drift.trend",
    summary="A model's drift per feature over time, for one cohort (default: the fleet, 24 h)",
    response_model=DriftTrend,
    responses=problem_responses(404),
)
def drift_trend(
    _: ViewerDep,
    store: StoreDep,
    clock: ClockDep,
    model: Annotated[str, Query(pattern=NAME_PATTERN, description="The model's name")],
    version: Annotated[int | None, Query(ge=1, le=2**31, description="Its version")] = None,
    cohort: Annotated[str, Query(pattern=COHORT, description="fleet, version=3, region=eu")] = (
        "fleet"
    ),
    width: Literal["5m", "1h", "1d"] = "5m",
    since: Since = None,
    until: Until = None,
) -> DriftTrend:
    since_ms, until_ms = _window(since, until, clock.now_ms())
    found = views.trend(
        store,
        model,
        version=version,
        cohort=cohort,
        width=width,
        since_ms=since_ms,
        until_ms=until_ms,
    )
    return DriftTrend(**found)


@router.get(
    "/drift/devices/{device_id}",
    name="drift.device",
    summary="One device's drift buckets, scored on read (default: the last 24 h)",
    response_model=DeviceDrift,
    responses=problem_responses(404),
)
def drift_device(
    device_id: Annotated[str, Path(pattern=NAME_PATTERN, description="The device's id")],
    _: ViewerDep,
    store: StoreDep,
    clock: ClockDep,
    since: Since = None,
    until: Until = None,
) -> DeviceDrift:
    since_ms, until_ms = _window(since, until, clock.now_ms())
    return DeviceDrift(**views.device(store, device_id, since_ms=since_ms, until_ms=until_ms))


@router.get(
    "/drift/alerts",
    name="drift.alerts",
    summary="List drift and performance alerts, newest update first",
    response_model=list[DriftAlert],
)
def drift_alerts(
    _: ViewerDep,
    store: StoreDep,
    state: Literal["open", "acknowledged", "resolved"] | None = None,
    model: Annotated[str | None, Query(pattern=NAME_PATTERN, description="A model")] = None,
) -> list[DriftAlert]:
    return [DriftAlert(**a) for a in views.alerts(store, state=state, model=model)]


@router.get(
    "/drift/alerts/{alert_id}",
    name="drift.alert",
    summary="Read one alert: the features and cohorts it names, with their scores",
    response_model=DriftAlert,
    responses=problem_responses(404),
)
def drift_alert(alert_id: AlertId, _: ViewerDep, store: StoreDep) -> DriftAlert:
    return DriftAlert(**views.get_alert(store, alert_id))


@router.post(
    "/drift/alerts/{alert_id}/ack",
    name="drift.alert.ack",
    summary="Acknowledge an alert (it re-opens if it escalates; a resolved one is 409)",
    response_model=DriftAlert,
    responses=problem_responses(404, 409),
)
def ack_alert(alert_id: AlertId, operator: OperatorDep, ctx: HubDep, body: AckIn) -> DriftAlert:
    found = views.acknowledge(ctx, alert_id, by=operator.actor, note=body.note)
    return DriftAlert(**found)


@router.get(
    "/models/{name}/drift-policy",
    name="drift.policy.get",
    summary="Read a model's drift thresholds (the defaults until one is set)",
    response_model=dict[str, Any],
    responses=problem_responses(404),
)
def get_policy(name: ModelName, _: ViewerDep, store: StoreDep) -> dict[str, Any]:
    return _policy(views.get_policy(store, name))


@router.put(
    "/models/{name}/drift-policy",
    name="drift.policy.set",
    summary="Set a model's drift thresholds (fields left out take their defaults)",
    response_model=dict[str, Any],
    responses=problem_responses(404, 422),
)
def put_policy(
    name: ModelName,
    operator: OperatorDep,
    ctx: HubDep,
    body: Annotated[dict[str, Any], Body(description="DriftPolicy fields (docs/drift.md)")],
) -> dict[str, Any]:
    return _policy(views.put_policy(ctx, name, body, by=operator.actor))


def _policy(rules: object) -> dict[str, Any]:
    found: dict[str, Any] = schema.to_json(rules)
    return found
