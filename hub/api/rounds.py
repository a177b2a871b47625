"""Federated rounds over REST: open, list, read and cancel rounds; each model's FL policy
and validation set.

``POST /api/v1/rounds`` opens a round (:func:`hub.federated.rounds.open_round`: 409 when
one is live for the model, 422 naming a contradicting field); ``GET /api/v1/rounds`` and
``/rounds/{id}`` read them, the latter with its deltas counted by verdict and reason and
the candidate's judgement; ``POST /rounds/{id}/cancel`` ends a live one (409
``illegal_transition`` once it ended). A candidate's full lineage (every delta, used or
not, its weight and norm, the validation numbers) is the ``lineage`` of its version:
``GET /api/v1/models/{name}/versions/{v}`` or ``.../lineage``.

``GET``/``PUT /api/v1/models/{name}/fl-policy`` read and set the model's
:class:`hub.rounds.policy.ModelPolicy` (PUT checks it against the head's size, admin);
``PUT /api/v1/models/{name}/validation-set`` stores the hub's own labelled rows (``.npz``
with ``X`` and ``y``) that candidates are judged on.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from fastapi import APIRouter, File, Path, Query, UploadFile
from pydantic import BaseModel, ConfigDict, Field

from hub.api.deps import (
    AdminDep,
    ClockDep,
    GuardedRoute,
    HubDep,
    LimitQuery,
    OffsetQuery,
    OperatorDep,
    StoreDep,
    UploadRoute,
    ViewerDep,
)
from hub.api.errors import problem_responses
from hub.api.schemas import NAME_PATTERN
from hub.errors import InvalidRequest
from hub.federated import rounds as service
from hub.federated.models import check_validation_set, head_of, latest_released, policy_of
from hub.rounds.aggregate import PRESETS
from hub.rounds.layout import Layout
from hub.rounds.policy import ModelPolicy
from hub.store import NotFound
from hub.store.round_rows import RoundRecord
from protocol import canonical, schema
from protocol.errors import Oversize

router = APIRouter(route_class=GuardedRoute)
uploads = APIRouter(route_class=UploadRoute)

MAX_VALIDATION_BYTES = 64 * 1024 * 1024
MAX_DURATION_S = 30 * 24 * 3600
ModelName = Annotated[str, Path(pattern=NAME_PATTERN, description="The model's name")]
RoundId = Annotated[str, Path(pattern=NAME_PATTERN, description="The round's id")]
StrategyName = Literal["default", "fedavg", "fedavgm", "median", "trimmed_mean", "multikrum"]
RoundState = Literal["open", "closing", "aggregated", "accepted", "rejected", "failed", "cancelled"]
assert set(StrategyName.__args__) == set(PRESETS)  # type: ignore[attr-defined]


class RoundStart(BaseModel):
    """What to open; unset fields come from the model's FL policy."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(pattern=NAME_PATTERN)
    base_version: int | None = Field(None, ge=1, description="Default: the latest released")
    strategy: StrategyName | None = None
    min_deltas: int | None = Field(None, ge=1, le=1_000_000)
    target_deltas: int | None = Field(None, ge=1, le=1_000_000)
    duration_s: float | None = Field(None, gt=0, le=MAX_DURATION_S)


class RoundPublic(BaseModel):
    round_id: str
    model: str
    base_version: int
    state: RoundState
    trigger: str
    opened_at: int
    deadline_at: int
    closed_at: int | None
    ended_at: int | None
    candidate_version: int | None
    reason: str
    strategy: str
    min_deltas: int
    target_deltas: int
    created_by: str


class DeltaCounts(BaseModel):
    """The round's deltas by verdict; ``refused`` and ``flagged`` by reason."""

    accepted: int = 0
    used: int = 0
    unused: int = 0
    flagged: dict[str, int] = Field(default_factory=dict)
    refused: dict[str, int] = Field(default_factory=dict)


class RoundDetail(RoundPublic):
    deltas: DeltaCounts
    judgement: dict[str, Any] | None


class RoundPage(BaseModel):
    items: list[RoundPublic]
    total: int


def _public(r: RoundRecord) -> dict[str, Any]:
    return {
        "round_id": r.round_id,
        "model": r.model,
        "base_version": r.base_version,
        "state": r.state,
        "trigger": r.trigger,
        "opened_at": r.opened_ms,
        "deadline_at": r.deadline_ms,
        "closed_at": r.closed_ms,
        "ended_at": r.ended_ms,
        "candidate_version": r.candidate_version,
        "reason": r.reason,
        "strategy": r.strategy,
        "min_deltas": r.min_deltas,
        "target_deltas": r.target_deltas,
        "created_by": r.created_by,
    }


@router.post(
    "/rounds",
    name="round.start",
    summary="Open a federated round of a model on a released base",
    tags=["rounds"],
    status_code=201,
    response_model=RoundPublic,
    responses=problem_responses(404, 409),
)
def start_round(body: RoundStart, operator: OperatorDep, hub: HubDep) -> RoundPublic:
    record = service.open_round(
        hub,
        body.model,
        actor=operator.actor,
        base_version=body.base_version,
        strategy=body.strategy,
        min_deltas=body.min_deltas,
        target_deltas=body.target_deltas,
        duration_ms=round(body.duration_s * 1000) if body.duration_s is not None else None,
    )
    return RoundPublic(**_public(record))


@router.get(
    "/rounds",
    name="round.list",
    summary="List rounds, newest first",
    tags=["rounds"],
    response_model=RoundPage,
)
def list_rounds(
    _: ViewerDep,
    store: StoreDep,
    model: Annotated[str | None, Query(pattern=NAME_PATTERN)] = None,
    state: RoundState | None = None,
    limit: LimitQuery = 100,
    offset: OffsetQuery = 0,
) -> RoundPage:
    page = store.rounds.rounds(model=model, state=state, limit=limit, offset=offset)
    return RoundPage(items=[RoundPublic(**_public(r)) for r in page.items], total=page.total)


@router.get(
    "/rounds/{round_id}",
    name="round.get",
    summary="Read a round: its state, deltas by verdict and reason, the judgement",
    tags=["rounds"],
    response_model=RoundDetail,
    responses=problem_responses(404),
)
def get_round(round_id: RoundId, _: ViewerDep, store: StoreDep) -> RoundDetail:
    record = store.rounds.round(round_id)
    if record is None:
        raise NotFound(f"no round {round_id!r}")
    counts = DeltaCounts()
    for status, reason, n in store.rounds.verdict_counts(round_id):
        if status in ("flagged", "refused"):
            getattr(counts, status)[reason or ""] = n
        elif status in ("accepted", "used", "unused"):
            setattr(counts, status, n)
    judgement = json.loads(record.judgement) if record.judgement else None
    return RoundDetail(**_public(record), deltas=counts, judgement=judgement)


@router.post(
    "/rounds/{round_id}/cancel",
    name="round.cancel",
    summary="Cancel a live round (its deltas are kept, never aggregated)",
    tags=["rounds"],
    response_model=RoundPublic,
    responses=problem_responses(404, 409),
)
def cancel_round(round_id: RoundId, operator: OperatorDep, hub: HubDep) -> RoundPublic:
    return RoundPublic(**_public(service.cancel_round(hub, round_id, actor=operator.actor)))


@router.get(
    "/models/{name}/fl-policy",
    name="fl_policy.get",
    summary="Read a model's federated-learning policy (the defaults if never set)",
    tags=["rounds"],
    responses=problem_responses(404),
)
def get_policy(name: ModelName, _: ViewerDep, store: StoreDep) -> dict[str, Any]:
    if not store.registry.has_model(name):
        raise NotFound(f"no model {name!r}")
    return policy_of(store, name).to_json()


@router.put(
    "/models/{name}/fl-policy",
    name="fl_policy.set",
    summary="Set a model's federated-learning policy (checked against its head's size)",
    tags=["rounds"],
    responses=problem_responses(404),
)
def set_policy(
    name: ModelName, body: dict[str, Any], admin: AdminDep, store: StoreDep, clock: ClockDep
) -> dict[str, Any]:
    """The body is a ``ModelPolicy`` as JSON (what GET answers); fields left out keep
    their defaults, and ``strategy`` may be a preset's name (``"median"``).
    \f
    Raises:
        InvalidPolicy, Malformed (422): a contradicting or ill-formed policy.
    """
    if not store.registry.has_model(name):
        raise NotFound(f"no model {name!r}")
    strategy = body.get("strategy")
    if isinstance(strategy, str):
        if strategy not in PRESETS:
            raise InvalidRequest(f"strategy {strategy[:40]!r} is not one of {', '.join(PRESETS)}")
        body = {**body, "strategy": schema.to_json(PRESETS[strategy])}
    policy = ModelPolicy.from_json({**ModelPolicy().to_json(), **body})
    policy.check(Layout.of_head(head_of(latest_released(store, name))).size)
    text = canonical.dumps(policy.to_json()).decode()
    store.rounds.put_policy(name, text, at_ms=clock.now_ms(), by=admin.actor)
    store.audit.append(at=clock.now_ms(), actor=admin.actor, action="fl_policy.set", target=name)
    return policy.to_json()


@uploads.put(
    "/models/{name}/validation-set",
    name="validation_set.put",
    summary="Store the hub's validation rows for a model (multipart: .npz with X and y)",
    tags=["rounds"],
    responses=problem_responses(404),
)
def put_validation_set(
    name: ModelName,
    validation: Annotated[UploadFile, File(description=".npz with X and y, at most 64 MiB")],
    operator: OperatorDep,
    store: StoreDep,
    clock: ClockDep,
) -> dict[str, int]:
    if not store.registry.has_model(name):
        raise NotFound(f"no model {name!r}")
    data = validation.file.read(MAX_VALIDATION_BYTES + 1)
    if len(data) > MAX_VALIDATION_BYTES:
        raise Oversize(f"validation set over {MAX_VALIDATION_BYTES} bytes")
    if not data:
        raise InvalidRequest("the validation set is empty")
    rows = check_validation_set(data)
    store.rounds.put_validation_set(name, data, rows=rows, at_ms=clock.now_ms(), by=operator.actor)
    store.audit.append(
        at=clock.now_ms(), actor=operator.actor, action="validation_set.put", target=name
    )
    return {"rows": rows}
