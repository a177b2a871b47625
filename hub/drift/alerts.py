"""Drift alerts: when an assessment run opens, updates or resolves one, as a pure plan.

:func:`evaluate` reads the latest assessments of one scope (newest last, at least
``policy.history`` of them once a scope is old enough), the alerts of that scope that are
not resolved, and ``now_ms``; it returns actions for the store to apply. It holds no
state of its own, so a hub restart, or two hubs evaluating the same run, decide alike.

Rules, per scope and kind (``drift``: the features and predictions; ``performance``:
the label-free estimate and the feedback):

- **alert** when a row is at alert level in ``alert_hits`` of the last ``alert_window``
  buckets (PSI ≥ 0.25 and significant, or a significant drifting-device fraction, in 2
  of 3 by default); **warning** when a row is at warning level in the newest bucket;
- an open alert is **updated** when the rows or cohorts it names, or its severity,
  change (a warning that escalates to an alert re-opens an acknowledged one);
- an open alert **resolves** only after ``resolve_after`` buckets in a row in which none
  of its rows is active even under the relaxed thresholds (p < ``resolve_alpha`` and effect ≥
  ``hysteresis`` × the warning threshold) *and* the rows it names had enough data: a
  score hovering at its threshold does not flap, and a cohort that went silent keeps
  its alert (no data is not good news);
- per policy, an alert opening (or escalating) at alert severity asks for one
  federated round for the model (``StartRound``), once per alert.

The lifecycle is a table (:data:`TRANSITIONS`): ``open → acknowledged`` by a person,
``open | acknowledged → resolved`` by evaluation, ``acknowledged → open`` on escalation;
a resolved alert is final (new evidence opens a new alert).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal

from hub.drift.assess import Assessment, CohortShare, Finding
from hub.drift.errors import IllegalTransition
from hub.drift.performance import PerformanceEstimate
from hub.drift.policy import DriftPolicy

AlertState = Literal["open", "acknowledged", "resolved"]
Severity = Literal["warning", "alert"]
Kind = Literal["drift", "performance"]
Event = Literal["update", "escalate", "acknowledge", "resolve"]
SEVERITIES: tuple[Severity, ...] = ("warning", "alert")

TRANSITIONS: dict[tuple[AlertState, Event], AlertState] = {
    ("open", "update"): "open",
    ("open", "escalate"): "open",
    ("open", "acknowledge"): "acknowledged",
    ("open", "resolve"): "resolved",
    ("acknowledged", "update"): "acknowledged",
    ("acknowledged", "escalate"): "open",
    ("acknowledged", "acknowledge"): "acknowledged",
    ("acknowledged", "resolve"): "resolved",
}


@dataclass(frozen=True)
class Alert:
    """One alert of one scope and kind, naming its rows and cohorts, ranked."""

    id: str
    scope: str
    kind: Kind
    state: AlertState
    severity: Severity
    features: tuple[Finding, ...]
    cohorts: tuple[CohortShare, ...]
    performance: PerformanceEstimate | None
    opened_at_ms: int
    updated_at_ms: int
    first_bucket_ms: int
    last_bucket_ms: int
    acknowledged_by: str | None = None
    acknowledged_at_ms: int | None = None
    resolved_at_ms: int | None = None
    round_requested: bool = False

    @property
    def feature_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.features)

    @property
    def cohort_names(self) -> tuple[str, ...]:
        return tuple(c.cohort for c in self.cohorts)


def step(alert: Alert, event: Event, now_ms: int, *, by: str | None = None) -> Alert:
    """``alert`` after ``event`` at ``now_ms``.

    Raises:
        IllegalTransition: the table holds no move for ``event`` in ``alert.state``.
    """
    state = TRANSITIONS.get((alert.state, event))
    if state is None:
        raise IllegalTransition(alert.state, event, what="alert")
    changed = replace(alert, state=state, updated_at_ms=now_ms)
    if event == "acknowledge" and alert.state == "open":
        changed = replace(changed, acknowledged_by=by, acknowledged_at_ms=now_ms)
    if event == "resolve":
        changed = replace(changed, resolved_at_ms=now_ms)
    return changed


@dataclass(frozen=True)
class Open:
    alert: Alert


@dataclass(frozen=True)
class Update:
    alert: Alert


@dataclass(frozen=True)
class Resolve:
    alert: Alert


@dataclass(frozen=True)
class StartRound:
    """Ask the rounds service for a federated round of the scope's model."""

    scope: str
    alert_id: str
    reason: str


Action = Open | Update | Resolve | StartRound


@dataclass(frozen=True)
class _Signal:
    """What the newest buckets say for one kind: named rows, cohorts, severity, quiet."""

    severity: Severity | None
    features: tuple[Finding, ...]
    cohorts: tuple[CohortShare, ...]
    performance: PerformanceEstimate | None


def evaluate(
    assessments: Sequence[Assessment],
    policy: DriftPolicy,
    open_alerts: Sequence[Alert],
    now_ms: int,
) -> list[Action]:
    """The actions the newest closed assessments call for (module docstring)."""
    closed = sorted((a for a in assessments if a.end_ms <= now_ms), key=lambda a: a.start_ms)
    recent = closed[-policy.history :]
    if not recent:
        return []
    actions: list[Action] = []
    for kind in ("drift", "performance"):
        signal = _drift(recent, policy) if kind == "drift" else _performance(recent, policy)
        current = [a for a in open_alerts if a.kind == kind and a.state != "resolved"]
        actions += _plan(kind, signal, current[0] if current else None, recent, policy, now_ms)
    return actions


def _quiet(alert: Alert, assessment: Assessment) -> bool:
    """Nothing active under the relaxed thresholds, with enough data on what it names."""
    if alert.kind == "performance":
        estimate = assessment.performance
        known = estimate.estimated_accuracy is not None or estimate.feedback_p is not None
        return estimate.level == 0 and known
    named = [f for f in assessment.findings if f.name in alert.feature_names]
    return all(f.sufficient and not f.active for f in named)


def _plan(
    kind: Kind,
    signal: _Signal,
    existing: Alert | None,
    recent: Sequence[Assessment],
    policy: DriftPolicy,
    now_ms: int,
) -> list[Action]:
    latest = recent[-1]
    if existing is None:
        if signal.severity is None:
            return []
        alert = Alert(
            id=f"{latest.scope[:16]}-{kind}-{latest.start_ms}",
            scope=latest.scope,
            kind=kind,
            state="open",
            severity=signal.severity,
            features=signal.features,
            cohorts=signal.cohorts,
            performance=signal.performance,
            opened_at_ms=now_ms,
            updated_at_ms=now_ms,
            first_bucket_ms=latest.start_ms,
            last_bucket_ms=latest.start_ms,
        )
        return _with_round(Open(alert), policy)
    quiet = [_quiet(existing, a) for a in recent[-policy.resolve_after :]]
    if len(quiet) >= policy.resolve_after and all(quiet) and signal.severity is None:
        return [Resolve(replace(step(existing, "resolve", now_ms), last_bucket_ms=latest.start_ms))]
    if signal.severity is None:
        return []
    severity = max(existing.severity, signal.severity, key=SEVERITIES.index)
    features = _union_features(existing.features, signal.features)
    cohorts = _union_cohorts(existing.cohorts, signal.cohorts)
    names = (tuple(f.name for f in features), tuple(c.cohort for c in cohorts))
    if severity == existing.severity and names == (existing.feature_names, existing.cohort_names):
        return []
    event: Event = "escalate" if severity != existing.severity else "update"
    alert = replace(
        step(existing, event, now_ms),
        severity=severity,
        features=features,
        cohorts=cohorts,
        performance=signal.performance or existing.performance,
        last_bucket_ms=latest.start_ms,
    )
    return _with_round(Update(alert), policy)


def _with_round(action: Open | Update, policy: DriftPolicy) -> list[Action]:
    alert = action.alert
    if not policy.retrain_on_alert or alert.severity != "alert" or alert.round_requested:
        return [action]
    marked = replace(alert, round_requested=True)
    reason = f"{alert.kind} alert on {', '.join(alert.feature_names or alert.cohort_names)}"
    return [type(action)(marked), StartRound(alert.scope, alert.id, reason[:200])]


def _drift(recent: Sequence[Assessment], policy: DriftPolicy) -> _Signal:
    window = recent[-policy.alert_window :]
    latest = recent[-1]
    chosen: list[Finding] = []
    alerting = False
    for row, finding in enumerate(latest.findings):
        hits = [a.findings[row] for a in window if a.findings[row].level == "alert"]
        if len(hits) >= policy.alert_hits:
            alerting = True
            chosen.append(finding if finding.level == "alert" else hits[-1])
        elif finding.level in ("warn", "alert"):
            chosen.append(finding)
    chosen.sort(key=lambda f: (-f.rank, -max((c.share for c in f.cohorts), default=0.0), f.name))
    severity: Severity | None = "alert" if alerting else ("warning" if chosen else None)
    cohorts = _union_cohorts((), tuple(c for f in chosen for c in f.cohorts))
    return _Signal(severity, tuple(chosen), cohorts, None)


def _performance(recent: Sequence[Assessment], policy: DriftPolicy) -> _Signal:
    window = recent[-policy.alert_window :]
    latest = recent[-1]
    hits = sum(a.performance.level >= 2 for a in window)
    severity: Severity | None = None
    if hits >= policy.alert_hits:
        severity = "alert"
    elif latest.performance.level >= 1:
        severity = "warning"
    return _Signal(severity, (), latest.performance_cohorts, latest.performance)


def _union_features(old: tuple[Finding, ...], new: tuple[Finding, ...]) -> tuple[Finding, ...]:
    """The new findings, then old rows not in them (an open alert keeps what it named)."""
    names = {f.name for f in new}
    return new + tuple(f for f in old if f.name not in names)


def _union_cohorts(
    old: tuple[CohortShare, ...], new: tuple[CohortShare, ...]
) -> tuple[CohortShare, ...]:
    best: dict[str, CohortShare] = {}
    for share in (*old, *new):
        if share.cohort not in best or share.share > best[share.cohort].share:
            best[share.cohort] = share
    return tuple(sorted(best.values(), key=lambda c: (-c.share, c.cohort)))


__all__ = [
    "TRANSITIONS",
    "Action",
    "Alert",
    "Open",
    "Resolve",
    "StartRound",
    "Update",
    "evaluate",
    "step",
]
