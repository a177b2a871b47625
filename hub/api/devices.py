"""Devices: list and read them (viewer), tag, approve and direct them (operator), revoke (admin).

Listing filters combine with AND: ``status``, ``tag=key:value``, ``model=name`` or
``model=name:version`` (the model a device *reports* running) and ``online``; pages are
``limit`` (1-1000) and ``offset``, ordered by device id. Tags change by JSON merge
patch (a value sets a tag, null removes it). The desired state (``PUT .../desired``) is
a released model version and optional device configuration: :mod:`hub.fleet.desired` signs
the assignment and publishes it, or stores it for the running hub to publish.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Response

from hub.api.deps import (
    AdminDep,
    ClockDep,
    GuardedRoute,
    HubDep,
    LimitQuery,
    OffsetQuery,
    OperatorDep,
    StoreDep,
    ViewerDep,
)
from hub.api.errors import problem_responses
from hub.api.schemas import (
    MAX_TAGS,
    NAME_PATTERN,
    ActiveModel,
    Desired,
    DesiredIn,
    Device,
    DeviceConfigIn,
    DeviceDetail,
    DevicePage,
    DeviceStatus,
    DeviceUpdate,
)
from hub.errors import InvalidRequest
from hub.fleet import desired, enrollment
from hub.health import Health
from hub.store import Store
from hub.store.rows import Desired as DesiredRow
from hub.store.rows import Device as DeviceRow
from protocol.errors import Malformed
from protocol.messages import DeviceConfig

router = APIRouter(prefix="/devices", tags=["devices"], route_class=GuardedRoute)

DeviceId = Annotated[str, Path(pattern=NAME_PATTERN, description="The device's id")]
TAG_FILTER = r"^[a-z0-9][a-z0-9_-]{0,63}:[^\x00-\x1f\x7f]{0,128}$"
MODEL_FILTER = r"^[a-z0-9][a-z0-9._-]{0,63}(:[1-9][0-9]{0,9})?$"


@router.get(
    "",
    name="device.list",
    summary="List devices, filtered by status, tag, reported model and online state",
    response_model=DevicePage,
)
def list_devices(
    _: ViewerDep,
    store: StoreDep,
    status: DeviceStatus | None = None,
    tag: Annotated[str | None, Query(pattern=TAG_FILTER, description="key:value")] = None,
    model: Annotated[
        str | None, Query(pattern=MODEL_FILTER, description="name or name:version")
    ] = None,
    online: bool | None = None,
    health: Health | None = None,
    limit: LimitQuery = 100,
    offset: OffsetQuery = 0,
) -> DevicePage:
    tag_filter = None
    if tag is not None:
        key, _colon, value = tag.partition(":")
        tag_filter = (key, value)
    model_filter = None
    if model is not None:
        name, _colon, version = model.partition(":")
        model_filter = (name, int(version) if version else None)
    page = store.devices.page(
        status=status,
        tag=tag_filter,
        model=model_filter,
        online=online,
        health=health,
        limit=limit,
        offset=offset,
    )
    return DevicePage(items=[_device(row) for row in page.items], total=page.total)


@router.get(
    "/{device_id}",
    name="device.get",
    summary="Read a device: identity, tags, reported state and desired state",
    response_model=DeviceDetail,
    responses=problem_responses(404),
)
def get_device(device_id: DeviceId, _: ViewerDep, store: StoreDep) -> DeviceDetail:
    return _detail(store, device_id)


@router.patch(
    "/{device_id}",
    name="device.update",
    summary="Change a device's tags (JSON merge patch: null removes a tag)",
    response_model=DeviceDetail,
    responses=problem_responses(404),
)
def update_device(
    device_id: DeviceId, body: DeviceUpdate, operator: OperatorDep, store: StoreDep, clock: ClockDep
) -> DeviceDetail:
    """A value sets a tag, null removes it; a device keeps at most 32 tags.
    \f
    Raises:
        NotFound: no such device.
        InvalidRequest: the result would have more than ``MAX_TAGS`` tags.
    """
    with store.atomic():
        tags = dict(store.devices.get(device_id).tags)
        for key, value in body.tags.items():
            if value is None:
                tags.pop(key, None)
            else:
                tags[key] = value
        if len(tags) > MAX_TAGS:
            raise InvalidRequest(f"a device has at most {MAX_TAGS} tags; this makes {len(tags)}")
        store.devices.set_tags(device_id, tags)
        store.audit.append(
            at=clock.now_ms(),
            actor=operator.actor,
            action="device.update",
            target=device_id,
            detail={"tags": body.tags},
        )
    return _detail(store, device_id)


@router.post(
    "/{device_id}/approve",
    name="device.approve",
    summary="Approve a pending device: it becomes active",
    response_model=DeviceDetail,
    responses=problem_responses(404, 409),
)
def approve_device(
    device_id: DeviceId, operator: OperatorDep, store: StoreDep, clock: ClockDep
) -> DeviceDetail:
    enrollment.approve(store, device_id, by=operator.actor, now_ms=clock.now_ms())
    return _detail(store, device_id)


@router.post(
    "/{device_id}/revoke",
    name="device.revoke",
    summary="Revoke a device: the hub refuses its key from now on",
    response_model=DeviceDetail,
    responses=problem_responses(404, 409),
)
def revoke_device(
    device_id: DeviceId, admin: AdminDep, store: StoreDep, clock: ClockDep
) -> DeviceDetail:
    enrollment.revoke(store, device_id, by=admin.actor, now_ms=clock.now_ms())
    return _detail(store, device_id)


@router.get(
    "/{device_id}/desired",
    name="desired.get",
    summary="Read a device's desired state",
    response_model=Desired,
    responses=problem_responses(404),
)
def get_desired(device_id: DeviceId, _: ViewerDep, store: StoreDep) -> Desired:
    store.devices.get(device_id)
    return _desired(store, store.desired.get(device_id))


@router.put(
    "/{device_id}/desired",
    name="desired.set",
    summary="Set the released model version (and configuration) a device should run",
    response_model=Desired,
    responses=problem_responses(404, 409),
)
def set_desired(
    device_id: DeviceId,
    body: DesiredIn,
    operator: OperatorDep,
    hub: HubDep,
) -> Desired:
    desired.set_desired(
        hub,
        device_id=device_id,
        model_name=body.model,
        model_version=body.version,
        config=_config(body.config) if body.config is not None else None,
        actor=operator.actor,
    )
    return _desired(hub.store, hub.store.desired.get(device_id))


@router.delete(
    "/{device_id}/desired",
    name="desired.clear",
    summary="Stop directing a device: it keeps the model it runs",
    status_code=204,
    response_class=Response,
    responses=problem_responses(404),
)
def clear_desired(device_id: DeviceId, operator: OperatorDep, hub: HubDep) -> Response:
    desired.clear_desired(hub, device_id=device_id, actor=operator.actor)
    return Response(status_code=204)


def _device(row: DeviceRow) -> Device:
    active = None
    if row.active_name is not None and row.active_version is not None:
        active = ActiveModel(
            name=row.active_name, version=row.active_version, sha256=row.active_sha256
        )
    return Device(
        id=row.id,
        status=row.status,
        tags=dict(row.tags),
        agent_version=row.agent_version,
        enrolled_at=row.enrolled_at,
        first_seen=row.first_seen,
        last_seen=row.last_seen,
        online=row.online,
        active=active,
        health=row.health,
        stale=row.stale,
        reported_at=row.reported_at,
        refusal=row.refusal,
        refusal_at=row.refusal_at,
        pending_reason=row.pending_reason,
    )


def _detail(store: Store, device_id: str) -> DeviceDetail:
    row = store.devices.get(device_id)
    wanted = store.desired.find(device_id)
    return DeviceDetail(
        **_device(row).model_dump(),
        desired=_desired(store, wanted) if wanted is not None else None,
        reported=_object(row.reported),
    )


def _desired(store: Store, row: DesiredRow) -> Desired:
    shadow = None
    if row.shadow_version is not None:
        found = store.desired.assignment(row.device_id, row.shadow_version)
        shadow = found.model_version if found is not None else None
    return Desired(
        device_id=row.device_id,
        model=row.model_name,
        version=row.model_version,
        config=_object(row.config),
        assignment_version=row.assignment_version,
        set_at=row.set_at,
        set_by=row.set_by,
        published_at=row.published_at,
        shadow_version=shadow,
    )


def _config(config: DeviceConfigIn) -> DeviceConfig:
    """Raises InvalidRequest: a value DeviceConfig refuses."""
    try:
        return DeviceConfig(**config.model_dump(exclude_none=True))
    except Malformed as e:
        raise InvalidRequest(f"config: {e}") from e


def _object(text: str | None) -> dict[str, Any] | None:
    """A JSON object column; None when empty, and when not an object (never a crash)."""
    if not text:
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None
