"""``GET /api/v1/audit``: who did what to what, and how it ended, newest first."""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query

from hub.api.deps import GuardedRoute, LimitQuery, OffsetQuery, StoreDep, ViewerDep
from hub.api.schemas import MAX_MS, AuditEntry, AuditPage
from hub.store.rows import AuditEntry as AuditRow

router = APIRouter(prefix="/audit", tags=["audit"], route_class=GuardedRoute)


def _text(description: str) -> Any:
    return Query(min_length=1, max_length=200, description=description)


@router.get(
    "",
    name="audit.list",
    summary="List audit rows, newest first, filtered by actor, action, outcome, target, time",
    response_model=AuditPage,
)
def list_audit(
    _: ViewerDep,
    store: StoreDep,
    actor: Annotated[str | None, _text("token:<id>, device:<id>, cli, system...")] = None,
    action: Annotated[str | None, _text("e.g. device.revoke, model.register")] = None,
    outcome: Literal["ok", "rejected"] | None = None,
    target: Annotated[str | None, _text("a device id, name/version, token id...")] = None,
    since: Annotated[int | None, Query(ge=0, le=MAX_MS, description="at or after, ms")] = None,
    limit: LimitQuery = 100,
    offset: OffsetQuery = 0,
) -> AuditPage:
    page = store.audit.page(
        actor=actor,
        action=action,
        outcome=outcome,
        target=target,
        since_ms=since,
        limit=limit,
        offset=offset,
    )
    return AuditPage(items=[_entry(row) for row in page.items], total=page.total)


def _entry(row: AuditRow) -> AuditEntry:
    return AuditEntry(
        id=row.id,
        at=row.at,
        actor=row.actor,
        action=row.action,
        target=row.target,
        outcome=row.outcome,
        reason=row.reason,
        detail=_detail(row.detail),
    )


def _detail(text: str | None) -> dict[str, Any]:
    """The row's JSON detail; anything that is not a JSON object is kept as text."""
    try:
        value = json.loads(text or "{}")
    except ValueError:
        return {"text": text}
    return value if isinstance(value, dict) else {"value": value}
