"""The drift concern's typed rows (pure values; docs/drift.md, "Integration plan").

An aggregate crosses the store as :class:`AggregateColumns`, the columns of
:func:`hub.drift.aggregate.to_columns`: arrays as little-endian bytes, the part set as
canonical JSON. The store never decodes them (it cannot: the shape comes from the
scope's reference, which the store does not know), so a second dialect stores them as
opaque blobs too. Assessments, cohort views, alerts and policies are canonical JSON of
the pure core's dataclasses for the same reason.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

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
