"""Admin-only: enrollment tokens (how devices join) and API tokens (how people and tools call).

Both kinds of secret are shown once, in the ``201`` answer that creates them, and kept
only as digests; listings never include them. Revoking is ``DELETE`` and is idempotent:
revoking a revoked token answers ``204`` again (404 only for an unknown id). Every
creation and revocation is audited with the admin token's id.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Response

from hub.api import auth
from hub.api.deps import (
    AdminDep,
    ClockDep,
    GuardedRoute,
    LimitQuery,
    OffsetQuery,
    StoreDep,
)
from hub.api.errors import problem_responses
from hub.api.schemas import (
    ApiToken,
    ApiTokenCreate,
    ApiTokenCreated,
    ApiTokenPage,
    EnrollmentToken,
    EnrollmentTokenCreate,
    EnrollmentTokenCreated,
    EnrollmentTokenPage,
)
from hub.fleet import enrollment
from hub.store import rows

router = APIRouter(route_class=GuardedRoute)

ApiTokenId = Annotated[str, Path(pattern=r"^[0-9a-f]{12}$", description="The token's id")]
EnrollmentTokenId = Annotated[
    str, Path(pattern=r"^tok-[0-9a-f]{16}$", description="The enrollment token's id")
]


# ---------------------------------------------------------------------- API tokens


@router.post(
    "/tokens",
    name="api_token.create",
    summary="Create an API token with a role (the token is shown only in this answer)",
    tags=["tokens"],
    status_code=201,
    response_model=ApiTokenCreated,
)
def create_api_token(
    body: ApiTokenCreate, admin: AdminDep, store: StoreDep, clock: ClockDep
) -> ApiTokenCreated:
    issued = auth.create_token(
        store, role=body.role, name=body.name, actor=admin.actor, now_ms=clock.now_ms()
    )
    return ApiTokenCreated(
        id=issued.id,
        role=issued.role,
        name=issued.name,
        created_at=issued.created_at,
        created_by=admin.actor,
        revoked=False,
        token=issued.token,
    )


@router.get(
    "/tokens",
    name="api_token.list",
    summary="List API tokens (never their secrets)",
    tags=["tokens"],
    response_model=ApiTokenPage,
)
def list_api_tokens(
    _: AdminDep, store: StoreDep, limit: LimitQuery = 100, offset: OffsetQuery = 0
) -> ApiTokenPage:
    rows = auth.list_tokens(store)
    return ApiTokenPage(
        items=[_api_token(r) for r in rows[offset : offset + limit]], total=len(rows)
    )


@router.delete(
    "/tokens/{token_id}",
    name="api_token.revoke",
    summary="Revoke an API token for good",
    tags=["tokens"],
    status_code=204,
    response_class=Response,
    responses=problem_responses(404),
)
def revoke_api_token(
    token_id: ApiTokenId, admin: AdminDep, store: StoreDep, clock: ClockDep
) -> Response:
    auth.revoke_token(store, token_id, actor=admin.actor, now_ms=clock.now_ms())
    return Response(status_code=204)


def _api_token(row: rows.ApiToken) -> ApiToken:
    return ApiToken(
        id=row.id,
        role=row.role,
        name=row.name,
        created_at=row.created_at,
        created_by=row.created_by,
        revoked=row.revoked,
    )


# ---------------------------------------------------------------------- enrollment tokens


@router.post(
    "/enrollment-tokens",
    name="enrollment_token.create",
    summary="Create an enrollment token for devices (the secret is shown only in this answer)",
    tags=["enrollment"],
    status_code=201,
    response_model=EnrollmentTokenCreated,
)
def create_enrollment_token(
    body: EnrollmentTokenCreate, admin: AdminDep, store: StoreDep, clock: ClockDep
) -> EnrollmentTokenCreated:
    now_ms = clock.now_ms()
    expires_at = None if body.expires_in_s is None else now_ms + body.expires_in_s * 1000
    issued = enrollment.create_token(
        store, kind=body.kind, by=admin.actor, now_ms=now_ms, expires_at=expires_at, tags=body.tags
    )
    return EnrollmentTokenCreated(
        id=issued.id,
        kind=issued.kind,
        created_at=now_ms,
        created_by=admin.actor,
        expires_at=issued.expires_at,
        uses=0,
        revoked=False,
        tags=issued.tags,
        token=issued.secret,
    )


@router.get(
    "/enrollment-tokens",
    name="enrollment_token.list",
    summary="List enrollment tokens, newest first (never their secrets)",
    tags=["enrollment"],
    response_model=EnrollmentTokenPage,
)
def list_enrollment_tokens(
    _: AdminDep, store: StoreDep, limit: LimitQuery = 100, offset: OffsetQuery = 0
) -> EnrollmentTokenPage:
    rows = enrollment.list_tokens(store)
    return EnrollmentTokenPage(
        items=[_enrollment_token(r) for r in rows[offset : offset + limit]], total=len(rows)
    )


@router.delete(
    "/enrollment-tokens/{token_id}",
    name="enrollment_token.revoke",
    summary="Revoke an enrollment token: no device can enrol with it any more",
    tags=["enrollment"],
    status_code=204,
    response_class=Response,
    responses=problem_responses(404),
)
def revoke_enrollment_token(
    token_id: EnrollmentTokenId, admin: AdminDep, store: StoreDep, clock: ClockDep
) -> Response:
    enrollment.revoke_token(store, token_id, by=admin.actor, now_ms=clock.now_ms())
    return Response(status_code=204)


def _enrollment_token(row: rows.EnrollmentToken) -> EnrollmentToken:
    return EnrollmentToken(
        id=row.id,
        kind=row.kind,
        created_at=row.created_at,
        created_by=row.created_by,
        expires_at=row.expires_at,
        uses=row.uses,
        revoked=row.revoked,
        tags=dict(row.tags),
    )
