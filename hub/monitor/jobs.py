"""The scheduler's drift jobs: score closed buckets and plan alerts; roll up and expire.

Both read buckets, never raw windows, and hold no state between runs: everything they
decide from is in the store, so a restarted hub (or a second one on the same store)
decides alike (:func:`hub.drift.evaluate` is stateless).

:func:`score_job` (every ``drift_score_interval_s``), per scope: every base bucket that
ended ``drift_grace_s`` ago and has no assessment (or a dirty one, after a late window)
is assessed from its device buckets; its cohort sums are stored beside it (the trend
per feature). If any bucket was scored, the newest ``policy.history`` assessments are
evaluated against the open alerts and the resulting actions applied in one
transaction, audited as ``drift.alert.open|update|resolve``. A ``StartRound`` action
(``retrain_on_alert`` in the model's policy) goes to ``request_round`` after the commit:
the hook the rounds service is wired through (``None``: the request is only audited).

:func:`maintain_job` (every ``drift_maintain_interval_s``): closed hours and days are
recomputed from their children whenever a child changed, device buckets up to an hour,
cohort buckets up to a day; buckets past :class:`hub.drift.buckets.Retention` are deleted.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from hub.context import HubContext
from hub.drift.aggregate import Aggregate, merge_all, seal
from hub.drift.alerts import Action, Alert, Open, Resolve, StartRound, Update, evaluate
from hub.drift.assess import Assessment, DeviceBucket, assess
from hub.drift.buckets import DAY_MS, HOUR_MS, Retention, cohorts_of
from hub.drift.policy import DriftPolicy
from hub.drift.reference import Reference
from hub.errors import HubError
from hub.metrics import DRIFT_SCORED
from hub.monitor import codec
from hub.monitor.references import References, policy
from hub.store import Store
from hub.store.drift_rows import (
    AggregateColumns,
    DriftAlertRecord,
    DriftAssessment,
    DriftCohortBucket,
    DriftDeviceBucket,
    DriftScope,
    StaleRollup,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RoundRequest:
    """A drift alert asking for a federated round of its model (``retrain_on_alert``)."""

    model_name: str
    model_version: int
    alert_id: str
    reason: str
    requested_by: str
    cohorts: tuple[str, ...] = ()  # the alert's, e.g. ("region=eu",): where the round goes


RequestRound = Callable[[RoundRequest], object]
"""The rounds service's entry point, as the integrator wires it into :data:`hub.service.JOBS`:
``partial(score_job, request_round=...)``."""


def score_job(ctx: HubContext, *, request_round: RequestRound | None = None) -> list[Action]:
    """Score what is due and apply the alert actions (module docstring); the actions."""
    now = ctx.now_ms()
    ended_by = now - round(ctx.settings.drift_grace_s * 1000)
    references = References(ctx.store)
    actions: list[Action] = []
    requests: list[RoundRequest] = []
    for scope in ctx.store.drift.scopes():
        try:
            baseline = references.of(scope.model_name, scope.model_version)
        except HubError as e:
            logger.warning("drift scope %s cannot be scored: %s", scope.scope[:16], e)
            continue
        rules = policy(ctx.store, scope.model_name)
        planned, asked = score_scope(ctx, scope, baseline.reference, rules, ended_by_ms=ended_by)
        actions += planned
        requests += asked
    for request in requests:
        _request(ctx, request, request_round)
    return actions


def score_scope(
    ctx: HubContext,
    scope: DriftScope,
    reference: Reference,
    rules: DriftPolicy,
    *,
    ended_by_ms: int,
) -> tuple[list[Action], list[RoundRequest]]:
    """One scope's turn of :func:`score_job`: score its due buckets, then plan and apply
    its alerts; the actions, and the rounds they ask for (not yet requested)."""
    now = ctx.now_ms()
    due = ctx.store.drift.due(scope.scope, rules.bucket_ms, ended_by_ms=ended_by_ms)
    for bucket in due:
        score_bucket(ctx.store, scope, reference, rules, bucket.start_ms, now)
    if not due:
        return [], []
    planned = _plan(ctx.store, scope, rules, now)
    return planned, _apply(ctx, scope, planned)


def score_bucket(
    store: Store,
    scope: DriftScope,
    reference: Reference,
    rules: DriftPolicy,
    start_ms: int,
    now_ms: int,
) -> Assessment:
    """Assess one base bucket from its device buckets; store it with its cohort sums."""
    rows = store.drift.device_buckets(scope.scope, rules.bucket_ms, start_ms)
    devices = [
        DeviceBucket.of(
            r.device_id, r.model_version, r.tags, codec.aggregate(r.aggregate, reference)
        )
        for r in rows
    ]
    assessment = assess(
        devices,
        reference,
        rules,
        start_ms=start_ms,
        width_ms=rules.bucket_ms,
        reference_accuracy=scope.reference_accuracy,
    )
    members: dict[str, list[Aggregate]] = {}
    for device in devices:
        for cohort in cohorts_of(device.version, dict(device.tags)):
            members.setdefault(str(cohort), []).append(device.aggregate)
    cohorts = [
        DriftCohortBucket(
            cohort=view.cohort,
            width_ms=rules.bucket_ms,
            start_ms=start_ms,
            aggregate=codec.columns(
                seal(merge_all(members.get(view.cohort, []), reference), (view.cohort, start_ms))
            ),
            updated_at=now_ms,
            view=codec.dumps(view),
        )
        for view in assessment.cohorts
    ]
    body = codec.dumps(assessment)
    store.drift.put_scored(
        DriftAssessment(scope.scope, rules.bucket_ms, start_ms, body, now_ms), cohorts
    )
    DRIFT_SCORED.inc()
    return assessment


def _plan(store: Store, scope: DriftScope, rules: DriftPolicy, now_ms: int) -> list[Action]:
    recent = [
        codec.loads(Assessment, row.body)
        for row in store.drift.assessments(scope.scope, rules.bucket_ms, limit=rules.history)
    ]
    current = [
        codec.loads(Alert, row.body)
        for row in store.drift.alerts(scope=scope.scope)
        if row.state != "resolved"
    ]
    return evaluate(recent, rules, current, now_ms)


def _apply(ctx: HubContext, scope: DriftScope, actions: Sequence[Action]) -> list[RoundRequest]:
    """Store and audit the alert actions together; the rounds they ask for."""
    requests = []
    now = ctx.now_ms()
    alerts = {a.alert.id: a.alert for a in actions if not isinstance(a, StartRound)}
    with ctx.store.atomic():
        for action in actions:
            if isinstance(action, StartRound):
                named = alerts.get(action.alert_id)
                requests.append(
                    RoundRequest(
                        scope.model_name,
                        scope.model_version,
                        action.alert_id,
                        action.reason,
                        f"drift:{action.alert_id}",
                        named.cohort_names if named is not None else (),
                    )
                )
                continue
            alert = action.alert
            ctx.store.drift.put_alert(record(alert, scope.model_name))
            verb = {Open: "open", Update: "update", Resolve: "resolve"}[type(action)]
            ctx.store.audit.append(
                at=now,
                actor="system",
                action=f"drift.alert.{verb}",
                target=alert.id,
                detail={
                    "model": scope.model_name,
                    "kind": alert.kind,
                    "severity": alert.severity,
                    "features": list(alert.feature_names),
                    "cohorts": list(alert.cohort_names),
                },
            )
    return requests


def record(alert: Alert, model_name: str) -> DriftAlertRecord:
    """The store's row of ``alert``."""
    return DriftAlertRecord(
        id=alert.id,
        scope=alert.scope,
        model_name=model_name,
        kind=alert.kind,
        state=alert.state,
        severity=alert.severity,
        body=codec.dumps(alert),
        opened_at=alert.opened_at_ms,
        updated_at=alert.updated_at_ms,
        resolved_at=alert.resolved_at_ms,
        round_requested=alert.round_requested,
    )


def _request(ctx: HubContext, request: RoundRequest, hook: RequestRound | None) -> None:
    outcome, reason = "ok", ""
    if hook is None:
        outcome, reason = "rejected", "no rounds service is wired to drift"
    else:
        try:
            hook(request)
        except HubError as e:
            outcome, reason = "rejected", e.reason
    ctx.store.audit.append(
        at=ctx.now_ms(),
        actor=request.requested_by,
        action="drift.round.request",
        target=f"{request.model_name}/{request.model_version}",
        outcome=outcome,
        reason=reason,
        detail={"alert": request.alert_id, "why": request.reason},
    )


# ---------------------------------------------------------------------- roll-ups, retention


def maintain_job(ctx: HubContext, *, retention: Retention | None = None) -> int:
    """Roll up closed hours and days, then delete expired buckets; rows written or deleted."""
    keep = retention or Retention()
    store = ctx.store
    now = ctx.now_ms()
    ended_by = now - round(ctx.settings.drift_grace_s * 1000)
    references = References(store)
    scopes = {s.scope: s for s in store.drift.scopes()}
    bases = sorted({policy(store, s.model_name).bucket_ms for s in scopes.values()})
    done = 0
    for device, steps in ((True, [(b, HOUR_MS) for b in bases]), (False, _cohort_steps(bases))):
        for child_ms, width_ms in steps:
            for stale in store.drift.stale_rollups(
                device=device, child_ms=child_ms, width_ms=width_ms, ended_by_ms=ended_by
            ):
                scope = scopes.get(stale.scope)
                if scope is None:
                    continue
                try:
                    reference = references.of(scope.model_name, scope.model_version).reference
                except HubError:
                    continue
                done += _rollup(store, stale, reference, child_ms, device=device, now_ms=now)
    for base in bases:
        done += store.drift.delete_ended(
            device=True, width_ms=base, ended_before_ms=now - keep.device_base_ms
        )
        done += store.drift.delete_ended(
            device=False, width_ms=base, ended_before_ms=now - keep.cohort_base_ms
        )
    for device, width in ((True, HOUR_MS), (False, HOUR_MS), (False, DAY_MS)):
        ended_before = now - keep.keep_ms(device=device, width_ms=width)
        done += store.drift.delete_ended(
            device=device, width_ms=width, ended_before_ms=ended_before
        )
    return done


def _cohort_steps(bases: Sequence[int]) -> list[tuple[int, int]]:
    return [*((b, HOUR_MS) for b in bases if b < HOUR_MS), (HOUR_MS, DAY_MS)]


def _rollup(
    store: Store,
    stale: StaleRollup,
    reference: Reference,
    child_ms: int,
    *,
    device: bool,
    now_ms: int,
) -> int:
    end = stale.start_ms + stale.width_ms
    if device:
        kids = store.drift.device_children(stale.scope, stale.key, child_ms, stale.start_ms, end)
        if not kids:
            return 0
        newest: DriftDeviceBucket = kids[-1]
        merged = _sum([(k.aggregate, k.start_ms) for k in kids], reference, child_ms)
        store.drift.put_device_buckets(
            [
                DriftDeviceBucket(
                    device_id=stale.key,
                    width_ms=stale.width_ms,
                    start_ms=stale.start_ms,
                    model_name=newest.model_name,
                    model_version=newest.model_version,
                    aggregate=merged,
                    updated_at=now_ms,
                    tags=newest.tags,
                )
            ]
        )
        return 1
    cohort = store.drift.cohort_buckets(stale.scope, stale.key, child_ms, stale.start_ms, end)
    if not cohort:
        return 0
    store.drift.put_cohort_buckets(
        [
            DriftCohortBucket(
                cohort=stale.key,
                width_ms=stale.width_ms,
                start_ms=stale.start_ms,
                aggregate=_sum([(c.aggregate, c.start_ms) for c in cohort], reference, child_ms),
                updated_at=now_ms,
            )
        ]
    )
    return 1


def _sum(
    children: Sequence[tuple[AggregateColumns, int]], reference: Reference, child_ms: int
) -> AggregateColumns:
    """A roll-up: its children sealed as one part each, summed (recomputed, never patched)."""
    sealed = [
        seal(codec.aggregate(stored, reference), (str(child_ms), start))
        for stored, start in children
    ]
    return codec.columns(merge_all(sealed, reference))
