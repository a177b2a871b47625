"""Staged rollouts over REST: start or dry-run one (operator: every POST here is an
operator's, so a viewer token changes nothing and sees no 2xx on a POST), list and read
them (viewer), approve, pause, resume, abort or roll one back (operator).

The request body of ``POST /rollouts`` and ``/rollouts/dry-run`` is the rollout spec's own
JSON (docs/rollouts.md, "The spec"), validated by :meth:`RolloutSpec.from_json`, whose
errors name the JSON path (422). The shell is :mod:`hub.fleet.rollouts`; an operator's
action is refused with 409 when the rollout's phase does not allow it.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Path, Query
from pydantic import BaseModel, Field

from hub.api.deps import GuardedRoute, HubDep, OperatorDep, ViewerDep
from hub.api.errors import problem_responses
from hub.api.schemas import NAME_PATTERN
from hub.context import HubContext
from hub.fleet import rollouts
from hub.rollouts import (
    Abort,
    Approve,
    DeviceView,
    Pause,
    Resume,
    RollBack,
    RolloutSpec,
    dry_run,
)
from hub.rollouts.gates import GateVerdict
from hub.rollouts.machine import OperatorEvent
from hub.store.rollout_rows import RolloutRecord

router = APIRouter(prefix="/rollouts", tags=["rollouts"], route_class=GuardedRoute)

RolloutId = Annotated[str, Path(pattern=r"^r-[1-9][0-9]{0,17}$", description="r-<n>")]
SpecBody = Annotated[
    dict[str, Any], Body(description="The rollout spec (docs/rollouts.md, 'The spec')")
]
PHASES = "pending|shadow|baking|awaiting_approval|paused|rolling_back|rolled_back|completed|aborted"


class RolloutSummary(BaseModel):
    id: str
    model: str
    version: int
    phase: str
    stage: int = Field(description="Index of the running stage; -1: the shadow stage")
    percent: float | None = Field(description="The running stage's share of the target")
    changed_ms: int
    created_at: int
    created_by: str


class StageCountsOut(BaseModel):
    stage: int
    percent: float
    pending: int
    updating: int
    succeeded: int
    failed: int
    timed_out: int
    reverting: int
    rolled_back: int
    watching: int = Field(
        0,
        description="Of the updating: already running the version, in the agent's watch window "
        "(it ends after so many predicted rows or minutes)",
    )


class GateOut(BaseModel):
    stage: int
    at_ms: int
    metric: str
    outcome: str
    estimate: float | None
    lower: float | None
    upper: float | None
    tolerance: float
    effect: float
    alpha: float
    test: str
    canaries: int
    controls: int
    reason: str


class TimelineOut(BaseModel):
    at_ms: int
    actor: str
    line: str


class RolloutView(RolloutSummary):
    spec: dict[str, Any]
    paused_from: str | None
    reason: str
    stage_started_ms: int
    bake_started_ms: int | None
    counts: list[StageCountsOut]
    gates: list[GateOut]
    timeline: list[TimelineOut]


class DryRunOut(BaseModel):
    target_size: int
    pinned: int
    shadow: list[str]
    stages: list[list[str]]
    warnings: list[str]


class ReasonIn(BaseModel):
    reason: str = Field(default="", max_length=500)


class ResumeIn(BaseModel):
    accept_inconclusive: bool = Field(
        default=False, description="Accept the stage's inconclusive gates as they stand"
    )


@router.post(
    "",
    name="rollout.create",
    summary="Start a staged rollout of a released model version",
    status_code=201,
    response_model=RolloutView,
    responses=problem_responses(404, 409, 422),
)
def create_rollout(body: SpecBody, operator: OperatorDep, hub: HubDep) -> RolloutView:
    record = rollouts.create(hub, RolloutSpec.from_json(body), actor=operator.actor)
    rollouts.tick_one(hub, record.rollout.rollout_id)
    return _view(hub, record.rollout.rollout_id)


@router.post(
    "/dry-run",
    name="rollout.dry_run",
    summary="Which devices each stage of a rollout would take, and warnings",
    response_model=DryRunOut,
    responses=problem_responses(422),
)
def dry_run_rollout(body: SpecBody, _: OperatorDep, hub: HubDep) -> DryRunOut:
    spec = RolloutSpec.from_json(body)
    devices = [DeviceView(d.id, d.tags) for d in hub.store.rollouts.active_devices()]
    found = dry_run(spec, devices)
    return DryRunOut(
        target_size=found.target_size,
        pinned=found.pinned,
        shadow=list(found.shadow),
        stages=[list(stage) for stage in found.stages],
        warnings=list(found.warnings),
    )


@router.get(
    "",
    name="rollout.list",
    summary="List rollouts, newest first",
    response_model=list[RolloutSummary],
)
def list_rollouts(
    _: ViewerDep,
    hub: HubDep,
    model: Annotated[str | None, Query(pattern=NAME_PATTERN)] = None,
    phase: Annotated[str | None, Query(pattern=f"^({PHASES})$")] = None,
) -> list[RolloutSummary]:
    return [_summary(r) for r in hub.store.rollouts.listing(model=model, phase=phase)]


@router.get(
    "/{rollout_id}",
    name="rollout.get",
    summary="A rollout: its stage, counts per stage, each gate's verdict, the timeline",
    response_model=RolloutView,
    responses=problem_responses(404),
)
def get_rollout(rollout_id: RolloutId, _: ViewerDep, hub: HubDep) -> RolloutView:
    return _view(hub, rollout_id)


def _operate(hub: HubContext, rollout_id: str, event: OperatorEvent, actor: str) -> RolloutView:
    rollouts.operate(hub, rollout_id, event, actor=actor)
    return _view(hub, rollout_id)


@router.post(
    "/{rollout_id}/approve",
    name="rollout.approve",
    summary="Approve the stage that waits for approval",
    response_model=RolloutView,
    responses=problem_responses(404, 409),
)
def approve(rollout_id: RolloutId, operator: OperatorDep, hub: HubDep) -> RolloutView:
    return _operate(hub, rollout_id, Approve(), operator.actor)


@router.post(
    "/{rollout_id}/pause",
    name="rollout.pause",
    summary="Pause: no new devices until resumed (a failing gate still halts)",
    response_model=RolloutView,
    responses=problem_responses(404, 409),
)
def pause(rollout_id: RolloutId, body: ReasonIn, operator: OperatorDep, hub: HubDep) -> RolloutView:
    return _operate(hub, rollout_id, Pause(body.reason), operator.actor)


@router.post(
    "/{rollout_id}/resume",
    name="rollout.resume",
    summary="Resume a paused rollout (restarts the stage's bake)",
    response_model=RolloutView,
    responses=problem_responses(404, 409),
)
def resume(
    rollout_id: RolloutId, body: ResumeIn, operator: OperatorDep, hub: HubDep
) -> RolloutView:
    return _operate(hub, rollout_id, Resume(override=body.accept_inconclusive), operator.actor)


@router.post(
    "/{rollout_id}/abort",
    name="rollout.abort",
    summary="Stop the rollout where it is: devices keep what they have",
    response_model=RolloutView,
    responses=problem_responses(404, 409),
)
def abort(rollout_id: RolloutId, body: ReasonIn, operator: OperatorDep, hub: HubDep) -> RolloutView:
    return _operate(hub, rollout_id, Abort(body.reason), operator.actor)


@router.post(
    "/{rollout_id}/rollback",
    name="rollout.rollback",
    summary="Send every device the rollout touched back to the version it ran before",
    response_model=RolloutView,
    responses=problem_responses(404, 409),
)
def rollback(
    rollout_id: RolloutId, body: ReasonIn, operator: OperatorDep, hub: HubDep
) -> RolloutView:
    return _operate(hub, rollout_id, RollBack(body.reason), operator.actor)


def _summary(record: RolloutRecord) -> RolloutSummary:
    rollout = record.rollout
    stages = rollout.spec.stages
    percent = stages[rollout.stage].percent if 0 <= rollout.stage < len(stages) else None
    if rollout.stage < 0 and rollout.spec.shadow is not None:
        percent = rollout.spec.shadow.percent
    return RolloutSummary(
        id=rollout.rollout_id,
        model=rollout.spec.model,
        version=rollout.spec.version,
        phase=rollout.phase,
        stage=rollout.stage,
        percent=percent,
        changed_ms=rollout.changed_ms,
        created_at=record.created_at,
        created_by=record.created_by,
    )


def _view(hub: HubContext, rollout_id: str) -> RolloutView:
    described = rollouts.describe(hub, rollout_id)
    rollout = described.record.rollout
    stages = rollout.spec.stages
    return RolloutView(
        **_summary(described.record).model_dump(),
        spec=rollout.spec.to_json(),
        paused_from=rollout.paused_from,
        reason=rollout.reason,
        stage_started_ms=rollout.stage_started_ms,
        bake_started_ms=rollout.bake_started_ms,
        counts=[
            StageCountsOut(
                stage=c.stage, percent=stages[c.stage].percent, watching=c.watching, **c.counts
            )
            for c in described.counts
        ],
        gates=[
            GateOut(stage=v.stage, at_ms=v.at_ms, **_fields(v.verdict)) for v in described.verdicts
        ],
        timeline=[
            TimelineOut(at_ms=t.at_ms, actor=t.actor, line=t.line) for t in described.timeline
        ],
    )


def _fields(verdict: GateVerdict) -> dict[str, Any]:
    return {
        name: getattr(verdict, name)
        for name in GateOut.model_fields
        if name not in ("stage", "at_ms")
    }
