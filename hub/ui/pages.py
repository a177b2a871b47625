"""The dashboard's reading pages: sign in and out, the fleet, a device, models, the audit log.

Each page asks the REST route's own function for its data (``devices.list_devices``,
``reports.get_twin``, ``models.get_lineage``...), so a page shows exactly what the REST
API answers and applies the same bounds to its query parameters; the few counts REST has
no call for (devices per status, version, health and tag) come from the store's typed
methods. Long listings are pages of :data:`~hub.ui.web.PAGE_SIZE`, ordered as REST orders
them, so the fleet page costs the same with 10 devices or 10,000.
"""

from __future__ import annotations

from collections import Counter
from typing import Annotated, Literal

from fastapi import APIRouter, Form, Path, Query, Request
from starlette.responses import RedirectResponse, Response

from hub.api import audit, devices, drift, models, reports
from hub.api.deps import MAX_OFFSET, get_services
from hub.api.schemas import NAME_PATTERN
from hub.errors import Unauthenticated
from hub.health import Health
from hub.ui import session
from hub.ui.charts import line_chart, top_series
from hub.ui.lineage import layout, lineage_svg, lineage_text
from hub.ui.web import PAGE_SIZE, CsrfField, PageRoute, SignedDep, back_to, render, safe_next

router = APIRouter(prefix="/ui", route_class=PageRoute, include_in_schema=False)

Offset = Annotated[int, Query(ge=0, le=MAX_OFFSET)]
HOUR_MS = 3_600_000
TOP_FEATURES = 5
TagFilter = Annotated[str, Query(pattern=f"^$|{devices.TAG_FILTER}")]  # "": any (a form sends it)
StatusFilter = Literal["", "pending", "active", "revoked"]
ModelFilter = Annotated[str, Query(pattern=f"^$|{devices.MODEL_FILTER}")]  # name or name:version
HealthFilter = Annotated[str, Query(pattern=f"^({'|'.join(h.value for h in Health)})?$")]
Text = Annotated[str | None, Query(max_length=200)]


@router.get("/signin", name="ui.signin")
def signin_page(request: Request, next: Annotated[str, Query(max_length=500)] = "") -> Response:
    found = session.current(request)
    if found is not None:
        return back_to(safe_next(next))
    return render(request, "signin.html", None, next=safe_next(next), error="")


@router.post("/signin", name="ui.signin.submit")
def signin(
    request: Request,
    token: Annotated[str, Form(max_length=session.MAX_TOKEN_CHARS)],
    next: Annotated[str, Form(max_length=500)] = "",
) -> Response:
    response = back_to(safe_next(next))
    try:
        session.sign_in(request, token, response)
    except Unauthenticated as exc:
        return render(
            request, "signin.html", None, status_code=401, next=safe_next(next), error=str(exc)
        )
    return response


@router.post("/signout", name="ui.signout")
def signout(request: Request, who: SignedDep, csrf: CsrfField = "") -> Response:
    session.check_csrf(request, who.session, who.principal, csrf)
    response = RedirectResponse("/ui/signin", status_code=303)
    session.sign_out(request, response)
    return response


@router.get("", name="ui.home")
def home() -> Response:
    return back_to("/ui/fleet")


@router.get("/fleet", name="ui.fleet")
def fleet(
    request: Request,
    who: SignedDep,
    status: StatusFilter = "",
    online: bool | None = None,
    tag: TagFilter = "",
    model: ModelFilter = "",
    health: HealthFilter = "",
    offset: Offset = 0,
) -> Response:
    store = who.hub.store
    page = devices.list_devices(
        who.principal, store, status=status or None, tag=tag or None, model=model or None,
        online=online, health=Health(health) if health else None, limit=PAGE_SIZE,
        offset=offset,
    )  # fmt: skip
    by: dict[str, Counter[str]] = {k: Counter() for k in ("status", "online", "version", "health")}
    for row in store.devices.census():
        by["status"][row.status] += row.count
        by["online"]["online" if row.online else "offline"] += row.count
        running = f"{row.model_name}:{row.model_version}" if row.model_name else ""
        by["version"][running] += row.count
        by["health"][row.health.value] += row.count
    since = who.hub.now_ms() - HOUR_MS
    changes = audit.list_audit(who.principal, store, since=since, limit=10)
    filters = {"status": status, "online": online, "tag": tag, "model": model, "health": health}
    return render(
        request, "fleet.html", who, page=page, counts={k: v.most_common() for k, v in by.items()},
        tags=store.devices.tag_counts(limit=20), changes=changes, offset=offset, size=PAGE_SIZE,
        healths=[h.value for h in Health],
        filters={k: v for k, v in filters.items() if v not in (None, "")},
    )  # fmt: skip


@router.get("/devices/{device_id}", name="ui.device")
def device(
    request: Request,
    who: SignedDep,
    device_id: Annotated[str, Path(pattern=NAME_PATTERN)],
) -> Response:
    store = who.hub.store
    detail = devices.get_device(device_id, who.principal, store)
    twin = reports.get_twin(device_id, who.principal, store)
    telemetry = reports.list_telemetry(who.principal, store, device=device_id, limit=60).items
    latency = line_chart(
        {
            "p50": [(t.received_at, float(t.report.get("latency_p50_ms", 0))) for t in telemetry],
            "p95": [(t.received_at, float(t.report.get("latency_p95_ms", 0))) for t in telemetry],
        },
        title=f"Inference latency of {device_id}",
        y_label="latency (ms)",
    )
    scored = drift.drift_device(device_id, who.principal, store, who.hub.clock).buckets
    trend: dict[str, list[tuple[float, float]]] = {}
    for bucket in scored:
        for feature in bucket["features"]:
            if feature.get("psi") is not None:
                trend.setdefault(feature["name"], []).append((bucket["start_ms"], feature["psi"]))
    drift_chart = line_chart(
        top_series(trend, TOP_FEATURES), title=f"Drift of {device_id}", y_label="PSI"
    )
    deltas = reports.list_deltas(who.principal, store, device=device_id, limit=20)
    return render(
        request, "device.html", who, device=detail, twin=twin, latency=latency,
        drift_chart=drift_chart, deltas=deltas, telemetry=telemetry[:10],
    )  # fmt: skip


@router.get("/models", name="ui.models")
def model_list(request: Request, who: SignedDep) -> Response:
    services = get_services(request)
    found = models.list_models(who.principal, services, limit=1000, offset=0)
    return render(request, "models.html", who, models=found.items)


@router.get("/models/{name}", name="ui.model")
def model(
    request: Request, who: SignedDep, name: Annotated[str, Path(pattern=NAME_PATTERN)]
) -> Response:
    services = get_services(request)
    versions = models.list_versions(name, who.principal, services, limit=1000, offset=0)
    graph = layout(versions.items)
    return render(
        request, "model.html", who, name=name, versions=list(reversed(versions.items)),
        graph=lineage_svg(name, graph), graph_text=lineage_text(graph),
    )  # fmt: skip


@router.get("/models/{name}/versions/{version}", name="ui.version")
def version(
    request: Request,
    who: SignedDep,
    name: Annotated[str, Path(pattern=NAME_PATTERN)],
    version: Annotated[int, Path(ge=1, le=2**31)],
) -> Response:
    services = get_services(request)
    chain = models.get_lineage(name, version, who.principal, services).items
    graph = layout(chain)
    return render(
        request, "version.html", who, name=name, chain=chain, shown=chain[0],
        graph=lineage_svg(name, graph, current=version), graph_text=lineage_text(graph),
    )  # fmt: skip


@router.get("/audit", name="ui.audit")
def audit_log(
    request: Request,
    who: SignedDep,
    actor: Text = None,
    action: Text = None,
    outcome: Literal["", "ok", "rejected"] = "",
    target: Text = None,
    offset: Offset = 0,
) -> Response:
    page = audit.list_audit(
        who.principal, who.hub.store, actor=actor or None, action=action or None,
        outcome=outcome or None, target=target or None, limit=PAGE_SIZE, offset=offset,
    )  # fmt: skip
    filters = {"actor": actor, "action": action, "outcome": outcome, "target": target}
    kept = {k: v for k, v in filters.items() if v}
    return render(
        request, "audit.html", who, page=page, filters=kept, offset=offset, size=PAGE_SIZE
    )
