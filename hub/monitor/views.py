"""What REST, the CLI and ``/metrics`` read about drift: trends, device scores, alerts.

Trends come from the cohort buckets: a scored base bucket carries its
:class:`hub.drift.assess.CohortView` (scores, drifting devices, the label-free estimate);
a roll-up (1 h, 1 day) is scored on read from its summed counts, which is all a cohort
keeps once its device buckets have expired. A device's own buckets are scored on read.
Acknowledging an alert is the lifecycle's ``acknowledge`` (:func:`hub.drift.step`),
read and written under the store's write lock, and audited.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hub.context import HubContext
from hub.drift.alerts import Alert, step
from hub.drift.assess import CohortView
from hub.drift.buckets import DAY_MS, HOUR_MS
from hub.drift.performance import estimate
from hub.drift.policy import DriftPolicy
from hub.drift.reference import Reference
from hub.drift.scores import score
from hub.errors import HubError, InvalidRequest
from hub.monitor import codec
from hub.monitor.jobs import record
from hub.monitor.references import References, policy
from hub.store import Store
from hub.store.drift_rows import AggregateColumns, DriftAlertRecord, DriftAlertState, DriftScope
from hub.store.interface import NotFound
from protocol import schema
from protocol.errors import Malformed

WIDTHS = {"5m": None, "1h": HOUR_MS, "1d": DAY_MS}
"""Trend widths by name; ``5m`` is the model's base bucket (``policy.bucket_ms``)."""


@dataclass(frozen=True)
class Scoped:
    """A model's scope, its reference and policy, as a trend is read against them."""

    scope: DriftScope
    reference: Reference
    policy: DriftPolicy


def scoped(store: Store, model: str, version: int | None = None) -> Scoped:
    """The scope of ``model`` (at ``version``, else the newest scope seen).

    Raises:
        NotFound: no windows of that model (version) were merged yet, or no such version.
    """
    references = References(store)
    scopes = store.drift.scopes(model)
    if version is not None:
        digest = references.of(model, version).reference.digest
        scopes = [s for s in scopes if s.scope == digest]
    if not scopes:
        which = f"{model[:64]} v{version}" if version is not None else model[:64]
        raise NotFound(f"no drift data for {which} yet")
    scope = scopes[-1]
    reference = references.of(scope.model_name, scope.model_version).reference
    return Scoped(scope, reference, policy(store, model))


def width_ms(name: str, rules: DriftPolicy) -> int:
    if name not in WIDTHS:
        raise InvalidRequest(f"width must be one of {', '.join(WIDTHS)}")
    return WIDTHS[name] or rules.bucket_ms


def trend(
    store: Store,
    model: str,
    *,
    version: int | None = None,
    cohort: str = "fleet",
    width: str = "5m",
    since_ms: int,
    until_ms: int,
) -> dict[str, Any]:
    """A cohort's scores per feature over time (module docstring); no buckets yet for a
    model no window was merged for.

    Raises:
        NotFound: no such model (or version).
    """
    if not store.registry.has_model(model):
        raise NotFound(f"no model {model[:64]!r}")
    if not store.drift.scopes(model) and version is None:
        return {"model": model, "version": None, "scope": None, "cohort": cohort, "buckets": []}
    found = scoped(store, model, version)
    ms = width_ms(width, found.policy)
    buckets = []
    for row in store.drift.cohort_buckets(found.scope.scope, cohort, ms, since_ms, until_ms):
        if row.view is not None:
            view = schema.to_json(codec.loads(CohortView, row.view))
        else:
            view = _scored(row.aggregate, cohort, found)
        buckets.append({"start_ms": row.start_ms, "width_ms": ms, **view})
    return {
        "model": model,
        "version": found.scope.model_version,
        "scope": found.scope.scope,
        "cohort": cohort,
        "buckets": buckets,
    }


def _scored(stored: AggregateColumns, cohort: str, found: Scoped) -> dict[str, Any]:
    """A roll-up's view, scored on read (no device counts: its devices are gone)."""
    aggregate = codec.aggregate(stored, found.reference)
    rows = len(found.reference.names)
    scores = score(aggregate.counts[None], found.reference, found.policy)
    perf = estimate(aggregate.performance, found.scope.reference_accuracy, found.policy)
    return {
        "cohort": cohort,
        "devices": None,
        "scores": [schema.to_json(scores.at((0, r), found.reference)) for r in range(rows)],
        "drifting_devices": [],
        "scored_devices": [],
        "fraction_p": [],
        "performance": schema.to_json(perf),
    }


def device(store: Store, device_id: str, *, since_ms: int, until_ms: int) -> dict[str, Any]:
    """One device's base buckets, scored on read, oldest first."""
    if store.devices.find(device_id) is None:
        raise NotFound(f"no device {device_id[:64]!r}")
    references = References(store)
    scopes = {s.scope: s for s in store.drift.scopes()}
    buckets = []
    for width in sorted({policy(store, s.model_name).bucket_ms for s in scopes.values()}):
        for row in store.drift.device_history(device_id, width, since_ms, until_ms):
            scope = scopes.get(row.aggregate.scope)
            if scope is None:
                continue
            reference = references.of(scope.model_name, scope.model_version).reference
            aggregate = codec.aggregate(row.aggregate, reference)
            scores = score(aggregate.counts[None], reference, policy(store, scope.model_name))
            buckets.append(
                {
                    "start_ms": row.start_ms,
                    "width_ms": row.width_ms,
                    "model": row.model_name,
                    "version": row.model_version,
                    "windows": aggregate.windows,
                    "features": [
                        schema.to_json(scores.at((0, r), reference))
                        for r in range(len(reference.names))
                    ],
                }
            )
    buckets.sort(key=lambda b: (b["start_ms"], b["model"]))
    return {"device_id": device_id, "buckets": buckets}


def alert_json(row: DriftAlertRecord) -> dict[str, Any]:
    """An alert for REST and the CLI: its names up front, the whole record under ``detail``."""
    alert = codec.loads(Alert, row.body)
    return {
        "id": row.id,
        "model": row.model_name,
        "scope": row.scope,
        "kind": row.kind,
        "state": row.state,
        "severity": row.severity,
        "features": list(alert.feature_names),
        "cohorts": list(alert.cohort_names),
        "opened_at": row.opened_at,
        "updated_at": row.updated_at,
        "resolved_at": row.resolved_at,
        "acknowledged_by": alert.acknowledged_by,
        "round_requested": row.round_requested,
        "detail": schema.to_json(alert),
    }


def alerts(
    store: Store, *, state: DriftAlertState | None = None, model: str | None = None
) -> list[dict[str, Any]]:
    return [alert_json(r) for r in store.drift.alerts(state=state, model_name=model)]


def get_alert(store: Store, alert_id: str) -> dict[str, Any]:
    row = store.drift.alert(alert_id)
    if row is None:
        raise NotFound(f"no drift alert {alert_id[:80]!r}")
    return alert_json(row)


def acknowledge(ctx: HubContext, alert_id: str, *, by: str, note: str | None) -> dict[str, Any]:
    """Raises: NotFound; hub.errors.IllegalTransition: a resolved alert (409)."""
    with ctx.store.immediate():
        row = ctx.store.drift.alert(alert_id)
        if row is None:
            raise NotFound(f"no drift alert {alert_id[:80]!r}")
        acked = step(codec.loads(Alert, row.body), "acknowledge", ctx.now_ms(), by=by)
        ctx.store.drift.put_alert(record(acked, row.model_name))
        ctx.store.audit.append(
            at=ctx.now_ms(),
            actor=by,
            action="drift.alert.ack",
            target=alert_id,
            detail={"note": note} if note else None,
        )
        return alert_json(record(acked, row.model_name))


def get_policy(store: Store, model: str) -> DriftPolicy:
    if not store.registry.has_model(model):
        raise NotFound(f"no model {model[:64]!r}")
    return policy(store, model)


def put_policy(ctx: HubContext, model: str, body: dict[str, Any], *, by: str) -> DriftPolicy:
    """Raises: NotFound; InvalidRequest: a field the policy refuses (422)."""
    if not ctx.store.registry.has_model(model):
        raise NotFound(f"no model {model[:64]!r}")
    try:
        rules = schema.from_json(DriftPolicy, body)
    except Malformed as e:  # a wrong type, an unknown field, or a value __post_init__ refuses
        raise InvalidRequest(f"drift policy: {e}") from e
    with ctx.store.atomic():
        ctx.store.drift.put_policy(model, codec.dumps(rules), at_ms=ctx.now_ms())
        ctx.store.audit.append(
            at=ctx.now_ms(), actor=by, action="drift.policy.set", target=model, detail=body
        )
    return rules


def fleet_gauges(store: Store) -> list[tuple[str, int, Reference, CohortView]]:
    """The newest scored fleet view of every scope: ``(model, version, reference, view)``."""
    gauges = []
    references = References(store)
    for scope in store.drift.scopes():
        rows = store.drift.assessments(
            scope.scope, policy(store, scope.model_name).bucket_ms, limit=1
        )
        if not rows:
            continue
        try:
            reference = references.of(scope.model_name, scope.model_version).reference
        except HubError:  # a scope whose version went away shows nothing
            continue
        found = store.drift.cohort_buckets(
            scope.scope, "fleet", rows[0].width_ms, rows[0].start_ms, rows[0].start_ms + 1
        )
        if found and found[0].view is not None:
            view = codec.loads(CohortView, found[0].view)
            gauges.append((scope.model_name, scope.model_version, reference, view))
    return gauges


__all__ = [
    "WIDTHS",
    "acknowledge",
    "alert_json",
    "alerts",
    "device",
    "fleet_gauges",
    "get_alert",
    "get_policy",
    "put_policy",
    "trend",
]
