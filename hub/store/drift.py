"""SQLite: the drift tables (see :class:`hub.store.interface.Drift`, migration 10).

Ingest upserts device buckets inside its batch transaction; a late window marks the
bucket's assessment ``dirty`` in the same statement batch, so the scoring job scores
it again. Roll-ups are found by comparing a parent's ``updated_at`` with its children's
newest, so a roll-up is recomputed from its children whenever one of them changed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from hub.store.devices import decode_tags, encode_tags
from hub.store.drift_rows import (
    AggregateColumns,
    DriftAlertRecord,
    DriftAlertState,
    DriftAssessment,
    DriftCohortBucket,
    DriftDeviceBucket,
    DriftScope,
    DueBucket,
    StaleRollup,
)

if TYPE_CHECKING:
    from hub.store.sql import Connection, Row

_AGG = "scope, counts, moments, performance, inferences, errors, windows, parts"
_AGG_MARKS = ", ".join("?" for _ in _AGG.split(", "))
_DEVICE = f"device_id, width_ms, start_ms, model_name, model_version, tags, updated_at, {_AGG}"
_COHORT = f"cohort, width_ms, start_ms, view, updated_at, {_AGG}"
_ALERT = (
    "id, scope, model_name, kind, state, severity, body, opened_at, updated_at, "
    "resolved_at, round_requested"
)
_KIND = {True: ("drift_device_buckets", "device_id"), False: ("drift_cohort_buckets", "cohort")}


def _agg_values(a: AggregateColumns) -> tuple[Any, ...]:
    return (a.scope, a.counts, a.moments, a.performance, a.inferences, a.errors, a.windows, a.parts)


def _agg(row: Row) -> AggregateColumns:
    return AggregateColumns(
        row["scope"],
        row["counts"],
        row["moments"],
        row["performance"],
        row["inferences"],
        row["errors"],
        row["windows"],
        row["parts"],
    )


def _device(row: Row) -> DriftDeviceBucket:
    return DriftDeviceBucket(
        device_id=row["device_id"],
        width_ms=row["width_ms"],
        start_ms=row["start_ms"],
        model_name=row["model_name"],
        model_version=row["model_version"],
        aggregate=_agg(row),
        updated_at=row["updated_at"],
        tags=decode_tags(row["tags"]),
    )


def _cohort(row: Row) -> DriftCohortBucket:
    return DriftCohortBucket(
        cohort=row["cohort"],
        width_ms=row["width_ms"],
        start_ms=row["start_ms"],
        aggregate=_agg(row),
        updated_at=row["updated_at"],
        view=row["view"],
    )


def _assessment(row: Row) -> DriftAssessment:
    return DriftAssessment(
        row["scope"],
        row["width_ms"],
        row["start_ms"],
        row["body"],
        row["scored_at"],
        bool(row["dirty"]),
    )


def _alert(row: Row) -> DriftAlertRecord:
    return DriftAlertRecord(
        id=row["id"],
        scope=row["scope"],
        model_name=row["model_name"],
        kind=row["kind"],
        state=row["state"],
        severity=row["severity"],
        body=row["body"],
        opened_at=row["opened_at"],
        updated_at=row["updated_at"],
        resolved_at=row["resolved_at"],
        round_requested=bool(row["round_requested"]),
    )


class SqlDrift:
    def __init__(self, connection: Connection) -> None:
        self._c = connection

    # ------------------------------------------------------------------ scopes

    def add_scope(self, scope: DriftScope) -> None:
        self._c.write(
            "INSERT OR IGNORE INTO drift_scopes "
            "(scope, model_name, model_version, reference_accuracy, created_at) "
            "VALUES (?, ?, ?, ?, ?)",
            [
                scope.scope,
                scope.model_name,
                scope.model_version,
                scope.reference_accuracy,
                scope.created_at,
            ],
        )

    def scope(self, scope: str) -> DriftScope | None:
        row = self._c.row("SELECT * FROM drift_scopes WHERE scope = ?", [scope])
        return None if row is None else _scope(row)

    def scopes(self, model_name: str | None = None) -> list[DriftScope]:
        if model_name is None:
            rows = self._c.rows("SELECT * FROM drift_scopes ORDER BY created_at, scope")
        else:
            rows = self._c.rows(
                "SELECT * FROM drift_scopes WHERE model_name = ? ORDER BY created_at, scope",
                [model_name],
            )
        return [_scope(r) for r in rows]

    # ------------------------------------------------------------------ device buckets

    def device_bucket(
        self, scope: str, device_id: str, width_ms: int, start_ms: int
    ) -> DriftDeviceBucket | None:
        row = self._c.row(
            f"SELECT {_DEVICE} FROM drift_device_buckets "  # noqa: S608
            "WHERE scope = ? AND device_id = ? AND width_ms = ? AND start_ms = ?",
            [scope, device_id, width_ms, start_ms],
        )
        return None if row is None else _device(row)

    def put_device_buckets(self, buckets: Sequence[DriftDeviceBucket]) -> None:
        if not buckets:
            return
        with self._c.atomic():
            self._c.many(
                f"INSERT OR REPLACE INTO drift_device_buckets ({_DEVICE}) "  # noqa: S608
                f"VALUES (?, ?, ?, ?, ?, ?, ?, {_AGG_MARKS})",
                [
                    (
                        b.device_id,
                        b.width_ms,
                        b.start_ms,
                        b.model_name,
                        b.model_version,
                        encode_tags(b.tags),
                        b.updated_at,
                        *_agg_values(b.aggregate),
                    )
                    for b in buckets
                ],
            )
            self._c.many(
                "UPDATE drift_assessments SET dirty = 1 "
                "WHERE scope = ? AND width_ms = ? AND start_ms = ? AND dirty = 0",
                sorted({(b.aggregate.scope, b.width_ms, b.start_ms) for b in buckets}),
            )

    def device_buckets(self, scope: str, width_ms: int, start_ms: int) -> list[DriftDeviceBucket]:
        rows = self._c.rows(
            f"SELECT {_DEVICE} FROM drift_device_buckets "  # noqa: S608
            "WHERE scope = ? AND width_ms = ? AND start_ms = ? ORDER BY device_id",
            [scope, width_ms, start_ms],
        )
        return [_device(r) for r in rows]

    def device_history(
        self, device_id: str, width_ms: int, since_ms: int, until_ms: int
    ) -> list[DriftDeviceBucket]:
        rows = self._c.rows(
            f"SELECT {_DEVICE} FROM drift_device_buckets "  # noqa: S608
            "WHERE device_id = ? AND width_ms = ? AND start_ms >= ? AND start_ms < ? "
            "ORDER BY start_ms, scope",
            [device_id, width_ms, since_ms, until_ms],
        )
        return [_device(r) for r in rows]

    def device_children(
        self, scope: str, device_id: str, child_ms: int, start_ms: int, end_ms: int
    ) -> list[DriftDeviceBucket]:
        rows = self._c.rows(
            f"SELECT {_DEVICE} FROM drift_device_buckets "  # noqa: S608
            "WHERE scope = ? AND device_id = ? AND width_ms = ? AND start_ms >= ? "
            "AND start_ms < ? ORDER BY start_ms",
            [scope, device_id, child_ms, start_ms, end_ms],
        )
        return [_device(r) for r in rows]

    # ------------------------------------------------------------------ scoring

    def due(self, scope: str, width_ms: int, *, ended_by_ms: int) -> list[DueBucket]:
        rows = self._c.tuples(
            "SELECT DISTINCT b.start_ms FROM drift_device_buckets b "
            "LEFT JOIN drift_assessments a ON a.scope = b.scope AND a.width_ms = b.width_ms "
            "AND a.start_ms = b.start_ms "
            "WHERE b.scope = ? AND b.width_ms = ? AND b.start_ms + b.width_ms <= ? "
            "AND (a.scope IS NULL OR a.dirty = 1) ORDER BY b.start_ms",
            [scope, width_ms, ended_by_ms],
        )
        return [DueBucket(scope, width_ms, start) for (start,) in rows]

    def put_scored(self, assessment: DriftAssessment, cohorts: Sequence[DriftCohortBucket]) -> None:
        with self._c.atomic():
            self._c.write(
                "INSERT OR REPLACE INTO drift_assessments "
                "(scope, width_ms, start_ms, body, scored_at, dirty) VALUES (?, ?, ?, ?, ?, 0)",
                [
                    assessment.scope,
                    assessment.width_ms,
                    assessment.start_ms,
                    assessment.body,
                    assessment.scored_at,
                ],
            )
            self.put_cohort_buckets(cohorts)

    def assessments(
        self, scope: str, width_ms: int, *, limit: int, until_ms: int | None = None
    ) -> list[DriftAssessment]:
        rows = self._c.rows(
            "SELECT * FROM drift_assessments WHERE scope = ? AND width_ms = ? "
            "AND start_ms < ? ORDER BY start_ms DESC LIMIT ?",
            [scope, width_ms, until_ms if until_ms is not None else 2**62, limit],
        )
        return [_assessment(r) for r in reversed(rows)]

    # ------------------------------------------------------------------ cohorts, roll-ups

    def put_cohort_buckets(self, buckets: Sequence[DriftCohortBucket]) -> None:
        if not buckets:
            return
        self._c.write_many(
            f"INSERT OR REPLACE INTO drift_cohort_buckets ({_COHORT}) "  # noqa: S608
            f"VALUES (?, ?, ?, ?, ?, {_AGG_MARKS})",
            [
                (b.cohort, b.width_ms, b.start_ms, b.view, b.updated_at, *_agg_values(b.aggregate))
                for b in buckets
            ],
        )

    def cohort_buckets(
        self, scope: str, cohort: str, width_ms: int, since_ms: int, until_ms: int
    ) -> list[DriftCohortBucket]:
        rows = self._c.rows(
            f"SELECT {_COHORT} FROM drift_cohort_buckets "  # noqa: S608
            "WHERE scope = ? AND cohort = ? AND width_ms = ? AND start_ms >= ? AND start_ms < ? "
            "ORDER BY start_ms",
            [scope, cohort, width_ms, since_ms, until_ms],
        )
        return [_cohort(r) for r in rows]

    def stale_rollups(
        self, *, device: bool, child_ms: int, width_ms: int, ended_by_ms: int
    ) -> list[StaleRollup]:
        table, key = _KIND[device]
        rows = self._c.tuples(
            "SELECT g.scope, g.k, g.parent FROM (SELECT scope, "  # noqa: S608
            f"{key} AS k, start_ms - start_ms % ? AS parent, max(updated_at) AS newest "
            f"FROM {table} WHERE width_ms = ? GROUP BY scope, k, parent) g "
            f"WHERE g.parent + ? <= ? AND NOT EXISTS (SELECT 1 FROM {table} p "
            f"WHERE p.scope = g.scope AND p.{key} = g.k AND p.width_ms = ? "
            "AND p.start_ms = g.parent AND p.updated_at >= g.newest) "
            "ORDER BY g.parent, g.scope, g.k",
            [width_ms, child_ms, width_ms, ended_by_ms, width_ms],
        )
        return [StaleRollup(scope, k, width_ms, start) for scope, k, start in rows]

    def delete_ended(self, *, device: bool, width_ms: int, ended_before_ms: int) -> int:
        table, _ = _KIND[device]
        with self._c.atomic():
            deleted = self._c.write(
                f"DELETE FROM {table} WHERE width_ms = ? AND start_ms + width_ms < ?",  # noqa: S608
                [width_ms, ended_before_ms],
            ).rowcount
            if device:  # an assessment outlives its device buckets only as a cohort trend
                self._c.write(
                    "DELETE FROM drift_assessments WHERE width_ms = ? AND start_ms + width_ms < ?",
                    [width_ms, ended_before_ms],
                )
        return int(deleted)

    # ------------------------------------------------------------------ alerts, policies

    def put_alert(self, alert: DriftAlertRecord) -> None:
        self._c.write(
            f"INSERT OR REPLACE INTO drift_alerts ({_ALERT}) "  # noqa: S608
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                alert.id,
                alert.scope,
                alert.model_name,
                alert.kind,
                alert.state,
                alert.severity,
                alert.body,
                alert.opened_at,
                alert.updated_at,
                alert.resolved_at,
                int(alert.round_requested),
            ],
        )

    def alert(self, alert_id: str) -> DriftAlertRecord | None:
        row = self._c.row(
            f"SELECT {_ALERT} FROM drift_alerts WHERE id = ?",  # noqa: S608
            [alert_id],
        )
        return None if row is None else _alert(row)

    def alerts(
        self,
        *,
        scope: str | None = None,
        model_name: str | None = None,
        state: DriftAlertState | None = None,
        limit: int = 1000,
    ) -> list[DriftAlertRecord]:
        clauses, values = [], []
        for fragment, value in (
            ("scope = ?", scope),
            ("model_name = ?", model_name),
            ("state = ?", state),
        ):
            if value is not None:
                clauses.append(fragment)
                values.append(value)
        where = " AND ".join(clauses) or "1"
        rows = self._c.rows(
            f"SELECT {_ALERT} FROM drift_alerts WHERE {where} "  # noqa: S608
            "ORDER BY updated_at DESC, id LIMIT ?",
            [*values, limit],
        )
        return [_alert(r) for r in rows]

    def policy(self, model_name: str) -> str | None:
        found = self._c.scalar("SELECT body FROM drift_policies WHERE model_name = ?", [model_name])
        return None if found is None else str(found)

    def put_policy(self, model_name: str, body: str, *, at_ms: int) -> None:
        self._c.write(
            "INSERT OR REPLACE INTO drift_policies (model_name, body, updated_at) VALUES (?, ?, ?)",
            [model_name, body, at_ms],
        )


def _scope(row: Row) -> DriftScope:
    return DriftScope(
        row["scope"],
        row["model_name"],
        row["model_version"],
        row["reference_accuracy"],
        row["created_at"],
    )
