"""The dashboard's operating pages: rollouts, drift, rounds, and the actions on them.

Rollouts: each stage's progress, each gate's value, threshold and verdict, the timeline,
and the operator's approve, pause, resume, abort and roll back. Drift: alerts with their
lifecycle (acknowledge from the page), a feature x cohort heatmap of the latest scores,
the fleet's drift over time and the label-free accuracy estimate beside feedback accuracy.
Rounds: state, contributors' verdicts, and why deltas were flagged.

An action is a POST form: :func:`hub.ui.web.act` checks the CSRF token and the role (both
refusals audited), then the REST route's function does the work and writes its audit row,
so nothing here decides whether an action is allowed.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Form, Path, Query, Request
from starlette.responses import Response

from hub.api import drift, models, rollouts, rounds
from hub.api.deps import get_services
from hub.api.drift import AckIn, AlertId
from hub.api.rollouts import ReasonIn, ResumeIn, RolloutId
from hub.api.schemas import NAME_PATTERN
from hub.ui.charts import clock_label, heatmap, line_chart, top_series
from hub.ui.web import CsrfField, PageRoute, Signed, SignedDep, act, back_to, render

router = APIRouter(prefix="/ui", route_class=PageRoute, include_in_schema=False)

Reason = Annotated[str, Form(max_length=500)]
RolloutAction = Literal["approve", "pause", "resume", "abort", "rollback"]
MAX_COHORTS = 6
MAX_BUCKETS = 12
TOP_FEATURES = 5


@router.get("/rollouts", name="ui.rollouts")
def rollout_list(request: Request, who: SignedDep) -> Response:
    found = rollouts.list_rollouts(who.principal, who.hub)
    return render(request, "rollouts.html", who, rollouts=found)


@router.get("/rollouts/{rollout_id}", name="ui.rollout")
def rollout(request: Request, who: SignedDep, rollout_id: RolloutId) -> Response:
    view = rollouts.get_rollout(rollout_id, who.principal, who.hub)
    return render(request, "rollout.html", who, r=view, actions=_actions(view.phase))


def _actions(phase: str) -> list[RolloutAction]:
    """The buttons worth showing in ``phase``; the server's state table still decides."""
    shown: list[RolloutAction] = []
    if phase == "awaiting_approval":
        shown.append("approve")
    if phase in ("pending", "shadow", "baking", "awaiting_approval"):
        shown.append("pause")
    if phase == "paused":
        shown.append("resume")
    if phase not in ("completed", "aborted", "rolled_back", "rolling_back"):
        shown.append("abort")
    if phase not in ("rolled_back", "rolling_back"):
        shown.append("rollback")
    return shown


@router.post("/rollouts/{rollout_id}/{action}", name="ui.rollout.act")
def rollout_act(
    request: Request,
    who: SignedDep,
    rollout_id: RolloutId,
    action: RolloutAction,
    csrf: CsrfField = "",
    reason: Reason = "",
    accept_inconclusive: Annotated[bool, Form()] = False,
) -> Response:
    actor = act(request, who, csrf, "operator", f"rollout.{action}")
    hub = who.hub
    if action == "approve":
        rollouts.approve(rollout_id, actor, hub)
    elif action == "pause":
        rollouts.pause(rollout_id, ReasonIn(reason=reason), actor, hub)
    elif action == "resume":
        rollouts.resume(rollout_id, ResumeIn(accept_inconclusive=accept_inconclusive), actor, hub)
    elif action == "abort":
        rollouts.abort(rollout_id, ReasonIn(reason=reason), actor, hub)
    else:
        rollouts.rollback(rollout_id, ReasonIn(reason=reason), actor, hub)
    return back_to(f"/ui/rollouts/{rollout_id}")


@router.get("/drift", name="ui.drift")
def drift_page(
    request: Request,
    who: SignedDep,
    model: Annotated[str | None, Query(pattern=NAME_PATTERN)] = None,
    state: Literal["", "open", "acknowledged", "resolved"] = "",
    cohort: Annotated[str, Query(pattern=drift.COHORT)] = "fleet",
) -> Response:
    store = who.hub.store
    alerts = drift.drift_alerts(who.principal, store, state=state or None, model=model)
    names = [m.name for m in store.registry.models()]
    shown = model or (alerts[0].model if alerts else (names[0] if names else None))
    charts: dict[str, Any] = {}
    if shown is not None:
        charts = _drift_charts(who, shown, cohort)
    return render(
        request, "drift.html", who, alerts=alerts, models=names, model=shown, state=state,
        cohort=cohort, **charts,
    )  # fmt: skip


def _drift_charts(who: Signed, model: str, cohort: str) -> dict[str, Any]:
    """Two heatmaps, red from the model's own alert threshold: the latest PSI per feature and
    cohort, and ``cohort``'s PSI per feature over its last buckets; then ``cohort``'s PSI per
    feature over time, and its label-free accuracy estimate beside feedback accuracy."""
    store, clock = who.hub.store, who.hub.clock
    psi_alert = float(drift.get_policy(model, who.principal, store)["psi_alert"])
    tagged = [f"{t.key}={t.value}" for t in store.devices.tag_counts(limit=MAX_COHORTS)]
    cohorts = ["fleet", *(c for c in tagged if c != "fleet")][:MAX_COHORTS]
    latest: dict[tuple[str, str], float] = {}
    features: list[str] = []
    trends = {c: drift.drift_trend(who.principal, store, clock, model=model, cohort=c)
              for c in dict.fromkeys([*cohorts, cohort])}  # fmt: skip
    for name in cohorts:
        buckets = trends[name].buckets
        for score in buckets[-1].get("scores", []) if buckets else []:
            if score["name"] not in features:
                features.append(score["name"])
            if score.get("psi") is not None:
                latest[(score["name"], name)] = score["psi"]
    chosen = trends[cohort].model_dump()
    recent = chosen["buckets"][-MAX_BUCKETS:]
    times = [clock_label(b["start_ms"]) for b in recent]
    over_time = {
        (score["name"], clock_label(b["start_ms"])): score["psi"]
        for b in recent
        for score in b.get("scores", [])
        if score.get("psi") is not None
    }
    psi: dict[str, list[tuple[float, float]]] = {}
    accuracy: dict[str, list[tuple[float, float]]] = {"estimated": [], "feedback": []}
    for bucket in chosen["buckets"]:
        for score in bucket.get("scores", []):
            if score.get("psi") is not None:
                psi.setdefault(score["name"], []).append((bucket["start_ms"], score["psi"]))
        found = bucket.get("performance") or {}
        for line, key in (("estimated", "estimated_accuracy"), ("feedback", "feedback_accuracy")):
            if found.get(key) is not None:
                accuracy[line].append((bucket["start_ms"], found[key]))
    used = [c for c in cohorts if any(k[1] == c for k in latest)] or ["fleet"]
    rows = features or sorted({name for name, _ in over_time})
    return {
        "cohorts": cohorts,
        "heat": heatmap(
            rows, used, latest, title=f"Latest drift of {model}, feature x cohort",
            unit="PSI", high=psi_alert,
        ),
        "heat_time": heatmap(
            rows, times, over_time, title=f"Drift of {model} in {cohort}, feature x time (UTC)",
            unit="PSI", high=psi_alert,
        ),
        "psi_chart": line_chart(
            top_series(psi, TOP_FEATURES), title=f"Drift of {model} in {cohort}", y_label="PSI"
        ),
        "accuracy_chart": line_chart(
            accuracy, title=f"Accuracy of {model} in {cohort}", y_label="accuracy (0-1)"
        ),
    }  # fmt: skip


@router.post("/drift/alerts/{alert_id}/ack", name="ui.alert.ack")
def ack(
    request: Request,
    who: SignedDep,
    alert_id: AlertId,
    csrf: CsrfField = "",
    note: Reason = "",
) -> Response:
    actor = act(request, who, csrf, "operator", "drift.alert.ack")
    drift.ack_alert(alert_id, actor, who.hub, AckIn(note=note or None))
    return back_to("/ui/drift")


@router.get("/rounds", name="ui.rounds")
def round_list(
    request: Request,
    who: SignedDep,
    model: Annotated[str | None, Query(pattern=NAME_PATTERN)] = None,
    offset: Annotated[int, Query(ge=0, le=10**9)] = 0,
) -> Response:
    page = rounds.list_rounds(who.principal, who.hub.store, model=model, limit=50, offset=offset)
    return render(request, "rounds.html", who, page=page, offset=offset, size=50)


@router.get("/rounds/{round_id}", name="ui.round")
def round_detail(
    request: Request, who: SignedDep, round_id: Annotated[str, Path(pattern=NAME_PATTERN)]
) -> Response:
    found = rounds.get_round(round_id, who.principal, who.hub.store)
    contributions: list[dict[str, Any]] = []
    if found.candidate_version is not None:
        services = get_services(request)
        made = models.get_version(found.model, found.candidate_version, who.principal, services)
        listed = made.lineage.get("contributions", [])
        contributions = [c for c in listed if isinstance(c, dict)]
    return render(request, "round.html", who, r=found, contributions=contributions)
