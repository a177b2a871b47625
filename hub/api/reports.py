"""What devices reported: deltas, data windows, telemetry, state history, and the twin.

Every listing is newest first (the hub's ``received_at``), paginated with ``limit`` and
``offset``, and filtered (AND) by ``device``, ``model`` (``name`` or ``name:version``:
a delta's base, a window's or telemetry report's model, a state report's active model)
and time: ``since`` (inclusive) and ``until`` (exclusive), milliseconds on the hub's
clock, which unlike the devices' clocks is one clock for the whole fleet.

Deltas list their metadata; ``include=tensors`` adds the decoded tensors (float32, as
nested JSON lists with name, dtype and shape), at most :data:`MAX_TENSOR_VALUES`
values per answer (413 beyond: ask for fewer with ``limit``). The twin
(``GET /devices/{id}/twin``) sets the desired state beside the reported one, says
whether they agree, and names what stands between them: the newest install the device
refused, failed or rolled back (with its reason), and for a pending device why its hello
did not enrol it.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query

from hub.api.deps import GuardedRoute, LimitQuery, OffsetQuery, StoreDep, ViewerDep
from hub.api.errors import problem_responses
from hub.api.report_schemas import (
    Delta,
    DeltaPage,
    DesiredSide,
    EnrollmentRefusal,
    ModelRef,
    Refusal,
    Report,
    ReportedSide,
    ReportPage,
    Tensor,
    Twin,
    Window,
    WindowPage,
)
from hub.api.schemas import MAX_MS, NAME_PATTERN
from hub.store import Store
from hub.store.rows import (
    DataWindowRecord,
    DeltaRecord,
    DeltaSummary,
    StateRecord,
    TelemetryRecord,
    UplinkQuery,
    UplinkRecord,
)
from hub.store.rows import Device as DeviceRow
from protocol.errors import Oversize
from protocol.tensors import decode_tensors

router = APIRouter(route_class=GuardedRoute, tags=["reports"])

MAX_TENSOR_VALUES = 1_000_000
MODEL_FILTER = r"^[a-z0-9][a-z0-9._-]{0,63}(:[1-9][0-9]{0,9})?$"
REFUSED = ("refused", "failed", "rolled_back")

DeviceFilter = Annotated[
    str | None, Query(pattern=NAME_PATTERN, description="Only this device's records")
]
ModelFilter = Annotated[str | None, Query(pattern=MODEL_FILTER, description="name or name:version")]
Since = Annotated[int | None, Query(ge=0, le=MAX_MS, description="received at or after, ms")]
Until = Annotated[int | None, Query(ge=0, le=MAX_MS, description="received before, ms")]
DeviceId = Annotated[str, Path(pattern=NAME_PATTERN, description="The device's id")]


def _query(
    device: str | None, model: str | None, since: int | None, until: int | None, limit: int,
    offset: int,
) -> UplinkQuery:  # fmt: skip
    name, version = None, None
    if model is not None:
        name, _, number = model.partition(":")
        version = int(number) if number else None
    return UplinkQuery(device, name, version, since, until, limit, offset)


@router.get(
    "/deltas",
    name="delta.list",
    summary="List model deltas devices sent, newest first (tensors with include=tensors)",
    response_model=DeltaPage,
    responses=problem_responses(413),
)
def list_deltas(
    _: ViewerDep,
    store: StoreDep,
    device: DeviceFilter = None,
    model: ModelFilter = None,
    since: Since = None,
    until: Until = None,
    include: Annotated[
        Literal["tensors"] | None, Query(description="tensors: decode and include them")
    ] = None,
    limit: LimitQuery = 100,
    offset: OffsetQuery = 0,
) -> DeltaPage:
    """\f
    Raises:
        Oversize: the page's tensors hold more than ``MAX_TENSOR_VALUES`` values (413).
    """
    query = _query(device, model, since, until, limit, offset)
    if include is None:
        page = store.uplink.delta_page(query)
        return DeltaPage(items=[_delta(row, None) for row in page.items], total=page.total)
    full = store.uplink.page(DeltaRecord, query)
    budget = MAX_TENSOR_VALUES
    items = []
    for record in full.items:
        tensors = _tensors(record.tensors, budget)
        budget -= sum(_count(t.shape) for t in tensors)
        items.append(_delta(_summary(record), tensors))
    return DeltaPage(items=items, total=full.total)


@router.get(
    "/windows",
    name="window.list",
    summary="List data windows (input and prediction sketches) devices sent, newest first",
    response_model=WindowPage,
)
def list_windows(
    _: ViewerDep,
    store: StoreDep,
    device: DeviceFilter = None,
    model: ModelFilter = None,
    since: Since = None,
    until: Until = None,
    limit: LimitQuery = 100,
    offset: OffsetQuery = 0,
) -> WindowPage:
    page = store.uplink.page(DataWindowRecord, _query(device, model, since, until, limit, offset))
    items = [
        Window(
            **_meta(row),
            window_start=row.window_start,
            window_end=row.window_end,
            model=ModelRef(name=row.model_name, version=row.model_version)
            if row.model_name
            else None,
            report=_object(row.body),
        )
        for row in page.items
    ]
    return WindowPage(items=items, total=page.total)


@router.get(
    "/telemetry",
    name="telemetry.list",
    summary="List telemetry reports (counters, latency, outbox) devices sent, newest first",
    response_model=ReportPage,
)
def list_telemetry(
    _: ViewerDep,
    store: StoreDep,
    device: DeviceFilter = None,
    model: ModelFilter = None,
    since: Since = None,
    until: Until = None,
    limit: LimitQuery = 100,
    offset: OffsetQuery = 0,
) -> ReportPage:
    query = _query(device, model, since, until, limit, offset)
    return _reports(store, TelemetryRecord, query)


@router.get(
    "/states",
    name="state.list",
    summary="List state reports (the reported twin's history), newest first",
    response_model=ReportPage,
)
def list_states(
    _: ViewerDep,
    store: StoreDep,
    device: DeviceFilter = None,
    model: ModelFilter = None,
    since: Since = None,
    until: Until = None,
    limit: LimitQuery = 100,
    offset: OffsetQuery = 0,
) -> ReportPage:
    return _reports(store, StateRecord, _query(device, model, since, until, limit, offset))


@router.get(
    "/devices/{device_id}/twin",
    name="device.twin",
    summary="A device's twin: desired against reported, and its last refusal with the reason",
    tags=["devices"],
    response_model=Twin,
    responses=problem_responses(404),
)
def get_twin(device_id: DeviceId, _: ViewerDep, store: StoreDep) -> Twin:
    return twin(store, device_id)


def twin(store: Store, device_id: str) -> Twin:
    """Raises NotFound: no such device."""
    device = store.devices.get(device_id)
    wanted = store.desired.find(device_id)
    desired = None
    if wanted is not None:
        desired = DesiredSide(
            model=ModelRef(name=wanted.model_name, version=wanted.model_version),
            assignment_version=wanted.assignment_version,
            set_at=wanted.set_at,
            set_by=wanted.set_by,
            published_at=wanted.published_at,
        )
    running = None
    if device.active_name is not None:
        running = ModelRef(
            name=device.active_name, version=device.active_version, sha256=device.active_sha256
        )
    in_sync = wanted is not None and (device.active_name, device.active_version) == (
        wanted.model_name,
        wanted.model_version,
    )
    return Twin(
        device_id=device.id,
        status=device.status,
        health=device.health,
        online=device.online,
        last_seen=device.last_seen,
        desired=desired,
        reported=ReportedSide(
            model=running,
            at=device.reported_at,
            report=_object(device.reported) if device.reported else None,
        ),
        in_sync=in_sync,
        last_refusal=_refusal(device, store.uplink.last_install_refusal(device_id)),
        enrollment_refusal=_enrollment_refusal(store, device)
        if device.status == "pending"
        else None,
    )


def _refusal(device: DeviceRow, record: StateRecord | None) -> Refusal | None:
    """What ingest kept of the device's last refusal (``devices.refusal``, which also
    covers a desired state refused outright), with the version named by the newest state
    report that refused, failed or rolled back an install; the report alone before
    ingest kept refusals."""
    install: dict[str, Any] = {}
    if record is not None:
        found = _object(record.body).get("install")
        install = found if isinstance(found, dict) else {}
    ref = install.get("model") if isinstance(install.get("model"), dict) else None
    model = None
    if ref is not None:
        model = ModelRef(
            name=str(ref.get("name", "")), version=ref.get("version"), sha256=ref.get("sha256")
        )
    if device.refusal is not None:  # "failed: slow_retrieval" or "refused desired: ..."
        outcome, _, reason = device.refusal.partition(": ")
        if outcome in REFUSED:
            return Refusal(at=device.refusal_at, outcome=outcome, reason=reason, model=model)
        what = outcome.removeprefix("refused ")
        return Refusal(
            at=device.refusal_at, outcome="refused", reason=f"{what}: {reason}", model=None
        )
    if record is None:
        return None
    return Refusal(
        at=record.received_at,
        outcome=str(install.get("status", "")),
        reason=str(install.get("reason", "")),
        model=model,
    )


def _enrollment_refusal(store: Store, device: DeviceRow) -> EnrollmentRefusal | None:
    """Why a pending device waits: ``devices.pending_reason`` as ingest keeps it, dated
    by the audit row of the hello it answered."""
    entries = store.audit.page(action="device.pending", target=device.id, limit=1).items
    reason = device.pending_reason or (entries[0].reason if entries else None)
    if not reason:
        return None
    return EnrollmentRefusal(at=entries[0].at if entries else None, reason=reason)


def _reports(
    store: Store, kind: type[TelemetryRecord | StateRecord], query: UplinkQuery
) -> ReportPage:
    page = store.uplink.page(kind, query)
    items = [Report(**_meta(row), report=_object(row.body)) for row in page.items]
    return ReportPage(items=items, total=page.total)


def _meta(row: UplinkRecord | DeltaSummary) -> dict[str, Any]:
    return {
        "device_id": row.device_id,
        "seq": row.seq,
        "sent_at": row.sent_at,
        "received_at": row.received_at,
    }


def _summary(record: DeltaRecord) -> DeltaSummary:
    return DeltaSummary(
        record.device_id, record.seq, record.sent_at, record.received_at, record.base_name,
        record.base_version, record.base_sha256, record.round_id, record.num_samples,
        record.metric, record.before, record.after, record.clip_norm, record.status,
        len(record.tensors),
    )  # fmt: skip


def _delta(row: DeltaSummary, tensors: list[Tensor] | None) -> Delta:
    return Delta(
        **_meta(row),
        base=ModelRef(name=row.base_name, version=row.base_version, sha256=row.base_sha256),
        round_id=row.round_id,
        num_samples=row.num_samples,
        metric=row.metric,
        before=row.before,
        after=row.after,
        clip_norm=row.clip_norm,
        status=row.status,
        tensors_bytes=row.tensors_bytes,
        tensors=tensors,
    )


def _tensors(container: bytes, budget: int) -> list[Tensor]:
    """Raises Oversize: more than ``budget`` values (ingest decoded it once: it is valid)."""
    if budget <= 0:
        raise Oversize(f"the deltas' tensors exceed {MAX_TENSOR_VALUES} values: lower limit")
    try:
        arrays = decode_tensors(container, max_elements=budget)
    except Oversize:
        raise Oversize(
            f"the deltas' tensors exceed {MAX_TENSOR_VALUES} values: lower limit"
        ) from None
    return [
        Tensor(name=name, dtype=str(a.dtype), shape=list(a.shape), values=a.tolist())
        for name, a in arrays.items()
    ]


def _count(shape: list[int]) -> int:
    total = 1
    for n in shape:
        total *= n
    return total


def _object(text: str) -> dict[str, Any]:
    """A stored JSON body; anything but an object reads as empty (never a crash)."""
    try:
        value = json.loads(text)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}
