"""The drift concern's typed rows (pure values; docs/drift.md, "Integration plan").

An aggregate crosses the store as :class:`AggregateColumns`, the columns of
:func:`hub.drift.aggregate.to_columns`: arrays as little-endian bytes, the part set as
canonical JSON. The store never decodes them (it cannot: the shape comes from the
scope's reference, which the store does not know), so a second dialect stores them as
opaque blobs too. Assessments, cohort views, alerts and policies are canonical JSON of
the pure core's dataclasses for the same reason.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

DriftAlertState = Literal["open", "acknowledged", "resolved"]


@dataclass(frozen=True, slots=True)
class AggregateColumns:
    """One :class:`hub.drift.aggregate.Aggregate` as stored."""

    scope: str
    counts: bytes
    moments: bytes
    performance: bytes
    inferences: int
    errors: int
    windows: int
    parts: str


@dataclass(frozen=True, slots=True)
class DriftScope:
    """A reference digest the hub has seen windows for, and where its reference lives:
    the profile of ``model_name`` version ``model_version`` (the first version seen)."""

    scope: str
    model_name: str
    model_version: int
    reference_accuracy: float | None
    created_at: int


@dataclass(frozen=True, slots=True)
class DriftDeviceBucket:
    """One device's bucket: its aggregate, and the version and tags that place it in
    cohorts (as they were when its newest window was merged)."""

    device_id: str
    width_ms: int
    start_ms: int
    model_name: str
    model_version: int
    aggregate: AggregateColumns
    updated_at: int
    tags: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class DriftCohortBucket:
    """One cohort's bucket: the sum of its devices' buckets and, for scored base
    buckets, its :class:`hub.drift.assess.CohortView` as canonical JSON (``view``;
    None for roll-ups, which are scored on read)."""

    cohort: str
    width_ms: int
    start_ms: int
    aggregate: AggregateColumns
    updated_at: int
    view: str | None = None


@dataclass(frozen=True, slots=True)
class DriftAssessment:
    """A scored bucket: :class:`hub.drift.assess.Assessment` as canonical JSON. ``dirty``:
    a window arrived after it was scored, so it is scored again."""

    scope: str
    width_ms: int
    start_ms: int
    body: str
    scored_at: int
    dirty: bool = False


@dataclass(frozen=True, slots=True)
class DriftAlertRecord:
    """An alert: :class:`hub.drift.alerts.Alert` as canonical JSON, with the columns
    listings filter on."""

    id: str
    scope: str
    model_name: str
    kind: str
    state: DriftAlertState
    severity: str
    body: str
    opened_at: int
    updated_at: int
    resolved_at: int | None = None
    round_requested: bool = False


@dataclass(frozen=True, slots=True)
class DueBucket:
    """A base bucket that is closed and not scored (or scored before a late window)."""

    scope: str
    width_ms: int
    start_ms: int


@dataclass(frozen=True, slots=True)
class StaleRollup:
    """A closed roll-up bucket whose children changed after it was last computed (or
    that was never computed): ``key`` is the device id or the cohort."""

    scope: str
    key: str
    width_ms: int
    start_ms: int


__all__ = [
    "AggregateColumns",
    "DriftAlertRecord",
    "DriftAlertState",
    "DriftAssessment",
    "DriftCohortBucket",
    "DriftDeviceBucket",
    "DriftScope",
    "DueBucket",
    "StaleRollup",
]


class Drift(Protocol):
    """Fleet drift (docs/drift.md): buckets merged at ingest, scored buckets, alerts.

    Buckets are keyed by scope (the reference digest), device or cohort, width and start;
    aggregates are opaque to the store (:class:`~hub.store.drift_rows.AggregateColumns`).
    """

    def add_scope(self, scope: DriftScope) -> None:
        """Remember a scope the first time a window of it arrives (later calls: no-op)."""
        ...

    def scope(self, scope: str) -> DriftScope | None: ...

    def scopes(self, model_name: str | None = None) -> list[DriftScope]: ...

    def device_bucket(
        self, scope: str, device_id: str, width_ms: int, start_ms: int
    ) -> DriftDeviceBucket | None: ...

    def put_device_buckets(self, buckets: Sequence[DriftDeviceBucket]) -> None:
        """Upsert; a base bucket already scored is marked for a re-score (``dirty``)."""
        ...

    def device_buckets(self, scope: str, width_ms: int, start_ms: int) -> list[DriftDeviceBucket]:
        """Every device's bucket of one start, by device id."""
        ...

    def device_history(
        self, device_id: str, width_ms: int, since_ms: int, until_ms: int
    ) -> list[DriftDeviceBucket]:
        """One device's buckets starting in ``[since, until)``, oldest first."""
        ...

    def due(self, scope: str, width_ms: int, *, ended_by_ms: int) -> list[DueBucket]:
        """Buckets ending by ``ended_by_ms`` with no assessment, or a dirty one; oldest first."""
        ...

    def put_scored(self, assessment: DriftAssessment, cohorts: Sequence[DriftCohortBucket]) -> None:
        """Write a bucket's assessment (clean) and its cohort buckets, together."""
        ...

    def assessments(
        self, scope: str, width_ms: int, *, limit: int, until_ms: int | None = None
    ) -> list[DriftAssessment]:
        """The newest ``limit`` assessments starting before ``until_ms``, oldest first."""
        ...

    def cohort_buckets(
        self, scope: str, cohort: str, width_ms: int, since_ms: int, until_ms: int
    ) -> list[DriftCohortBucket]:
        """One cohort's buckets starting in ``[since, until)``, oldest first."""
        ...

    def stale_rollups(
        self, *, device: bool, child_ms: int, width_ms: int, ended_by_ms: int
    ) -> list[StaleRollup]:
        """Closed ``width_ms`` buckets (device or cohort) a child changed under, or new."""
        ...

    def device_children(
        self, scope: str, device_id: str, child_ms: int, start_ms: int, end_ms: int
    ) -> list[DriftDeviceBucket]:
        """One device's ``child_ms`` buckets starting in ``[start, end)``."""
        ...

    def put_cohort_buckets(self, buckets: Sequence[DriftCohortBucket]) -> None: ...

    def delete_ended(self, *, device: bool, width_ms: int, ended_before_ms: int) -> int:
        """Delete buckets of one kind and width that ended before a time; how many."""
        ...

    def put_alert(self, alert: DriftAlertRecord) -> None:
        """Insert or replace an alert by id."""
        ...

    def alert(self, alert_id: str) -> DriftAlertRecord | None: ...

    def alerts(
        self,
        *,
        scope: str | None = None,
        model_name: str | None = None,
        state: DriftAlertState | None = None,
        limit: int = 1000,
    ) -> list[DriftAlertRecord]:
        """Alerts, newest update first."""
        ...

    def policy(self, model_name: str) -> str | None:
        """A model's :class:`hub.drift.policy.DriftPolicy` as canonical JSON, if set."""
        ...

    def put_policy(self, model_name: str, body: str, *, at_ms: int) -> None: ...
