"""SQLite: the rollout tables of migration 11 (see :class:`hub.store.rollout_rows.Rollouts`).

The spec is stored as canonical JSON and parsed back with ``RolloutSpec.from_json``, so a
row holds exactly what was validated when the rollout was created.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from hub.rollouts import DeviceProgress, GateVerdict, Rollout, RolloutSpec, ShadowProgress
from hub.rollouts.machine import LIVE
from hub.store.devices import SELECT as DEVICE_COLUMNS
from hub.store.devices import to_device
from hub.store.rollout_rows import RolloutRecord, StoredVerdict, TimelineLine
from hub.store.rows import DataWindowRecord, Device
from protocol import canonical

if TYPE_CHECKING:
    from hub.store.sql import Connection

_ROLLOUT = (
    "id", "model_name", "model_version", "spec", "phase", "stage", "stage_started_ms",
    "bake_started_ms", "paused_from", "override_stage", "reason", "changed_ms", "created_at",
    "created_by", "superseded_by",
)  # fmt: skip
_STATE = (
    "phase", "stage", "stage_started_ms", "bake_started_ms", "paused_from", "override_stage",
    "reason", "changed_ms",
)  # fmt: skip
_PROGRESS = (
    "device_id", "state", "target_version", "previous_version", "stage", "attempts",
    "since_ms", "reason", "retryable", "back",
)  # fmt: skip
_VERDICT = (
    "metric", "outcome", "estimate", "lower", "upper", "tolerance", "effect", "alpha", "test",
    "canaries", "controls", "reason",
)  # fmt: skip
_LIVE = ", ".join(f"'{phase}'" for phase in sorted(LIVE))
_WINDOW = (
    "device_id, seq, sent_at, received_at, window_start, window_end, model_name, "
    "model_version, body"
)


def _upsert(table: str, columns: Sequence[str], key: Sequence[str]) -> str:
    marks = ", ".join("?" for _ in columns)
    updates = ", ".join(f"{c} = excluded.{c}" for c in columns if c not in key)
    return (
        f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks}) "  # noqa: S608
        f"ON CONFLICT({', '.join(key)}) DO UPDATE SET {updates}"
    )


_PUT_PROGRESS = _upsert("rollout_devices", ("rollout_id", *_PROGRESS), ("rollout_id", "device_id"))
_PUT_SHADOW = _upsert(
    "rollout_shadows", ("rollout_id", "device_id", "state", "since_ms"), ("rollout_id", "device_id")
)
_PUT_VERDICT = _upsert(
    "rollout_verdicts",
    ("rollout_id", "stage", "at_ms", *_VERDICT),
    ("rollout_id", "stage", "metric"),
)


def _record(row: Any) -> RolloutRecord:
    spec = RolloutSpec.from_json(canonical.loads(row["spec"].encode()))
    rollout = Rollout(
        rollout_id=row["id"],
        spec=spec,
        phase=row["phase"],
        stage=row["stage"],
        stage_started_ms=row["stage_started_ms"] or 0,
        bake_started_ms=row["bake_started_ms"],
        paused_from=row["paused_from"],
        override_stage=row["override_stage"],
        reason=row["reason"] or "",
        changed_ms=row["changed_ms"] or 0,
    )
    return RolloutRecord(rollout, row["created_at"], row["created_by"], row["superseded_by"])


def _state(rollout: Rollout) -> list[Any]:
    return [getattr(rollout, c) for c in _STATE]


class SqlRollouts:
    def __init__(self, connection: Connection) -> None:
        self._c = connection

    def next_id(self) -> str:
        highest = self._c.scalar("SELECT max(CAST(substr(id, 3) AS INTEGER)) FROM rollouts")
        return f"r-{int(highest or 0) + 1}"

    def add(self, record: RolloutRecord) -> None:
        rollout = record.rollout
        spec = rollout.spec
        values = [
            rollout.rollout_id,
            spec.model,
            spec.version,
            canonical.dumps(spec.to_json()).decode(),
            *_state(rollout),
            record.created_at,
            record.created_by,
            record.superseded_by,
        ]
        marks = ", ".join("?" for _ in _ROLLOUT)
        self._c.write(f"INSERT INTO rollouts ({', '.join(_ROLLOUT)}) VALUES ({marks})", values)  # noqa: S608

    def find(self, rollout_id: str) -> RolloutRecord | None:
        row = self._c.row(f"SELECT {', '.join(_ROLLOUT)} FROM rollouts WHERE id = ?", [rollout_id])  # noqa: S608
        return None if row is None else _record(row)

    def listing(self, *, model: str | None = None, phase: str | None = None) -> list[RolloutRecord]:
        where, params = ["1"], []
        if model is not None:
            where.append("model_name = ?")
            params.append(model)
        if phase is not None:
            where.append("phase = ?")
            params.append(phase)
        rows = self._c.rows(
            f"SELECT {', '.join(_ROLLOUT)} FROM rollouts WHERE {' AND '.join(where)} "  # noqa: S608
            "ORDER BY created_at DESC, CAST(substr(id, 3) AS INTEGER) DESC",
            params,
        )
        return [_record(row) for row in rows]

    def ticking(self) -> list[RolloutRecord]:
        rows = self._c.rows(
            f"SELECT {', '.join(_ROLLOUT)} FROM rollouts WHERE phase IN ({_LIVE}) "  # noqa: S608
            "OR (phase = 'completed' AND superseded_by IS NULL) "
            "ORDER BY CAST(substr(id, 3) AS INTEGER)"
        )
        return [_record(row) for row in rows]

    def put_state(self, rollout: Rollout) -> None:
        sets = ", ".join(f"{c} = ?" for c in _STATE)
        self._c.update_one(
            f"UPDATE rollouts SET {sets} WHERE id = ?",  # noqa: S608
            [*_state(rollout), rollout.rollout_id],
            f"rollout {rollout.rollout_id[:64]!r}",
        )

    def supersede(self, model: str, *, by: str) -> int:
        cursor = self._c.write(
            "UPDATE rollouts SET superseded_by = ? WHERE model_name = ? AND phase = 'completed' "
            "AND superseded_by IS NULL AND id != ?",
            [by, model, by],
        )
        return int(cursor.rowcount)

    def progress(self, rollout_id: str) -> list[DeviceProgress]:
        rows = self._c.tuples(
            f"SELECT {', '.join(_PROGRESS)} FROM rollout_devices WHERE rollout_id = ? "  # noqa: S608
            "ORDER BY device_id",
            [rollout_id],
        )
        return [
            DeviceProgress(d, s, t, p, k, a, since, r or "", bool(retry), bool(back))
            for (d, s, t, p, k, a, since, r, retry, back) in rows
        ]

    def put_progress(self, rollout_id: str, progress: Sequence[DeviceProgress]) -> None:
        self._c.write_many(
            _PUT_PROGRESS,
            [
                [
                    rollout_id,
                    p.device_id,
                    p.state,
                    p.target_version,
                    p.previous_version,
                    p.stage,
                    p.attempts,
                    p.since_ms,
                    p.reason,
                    int(p.retryable),
                    int(p.back),
                ]
                for p in progress
            ],
        )

    def shadows(self, rollout_id: str) -> list[ShadowProgress]:
        rows = self._c.tuples(
            "SELECT device_id, state, since_ms FROM rollout_shadows WHERE rollout_id = ? "
            "ORDER BY device_id",
            [rollout_id],
        )
        return [ShadowProgress(d, s, since) for (d, s, since) in rows]

    def put_shadows(self, rollout_id: str, shadows: Sequence[ShadowProgress]) -> None:
        self._c.write_many(
            _PUT_SHADOW, [[rollout_id, s.device_id, s.state, s.since_ms] for s in shadows]
        )

    def verdicts(self, rollout_id: str) -> list[StoredVerdict]:
        rows = self._c.rows(
            f"SELECT stage, at_ms, {', '.join(_VERDICT)} FROM rollout_verdicts "  # noqa: S608
            "WHERE rollout_id = ? ORDER BY stage, metric",
            [rollout_id],
        )
        return [
            StoredVerdict(row["stage"], row["at_ms"], GateVerdict(*(row[c] for c in _VERDICT)))
            for row in rows
        ]

    def put_verdicts(
        self, rollout_id: str, stage: int, at_ms: int, verdicts: Sequence[GateVerdict]
    ) -> None:
        self._c.write_many(
            _PUT_VERDICT,
            [[rollout_id, stage, at_ms, *(getattr(v, c) for c in _VERDICT)] for v in verdicts],
        )

    def add_timeline(self, rollout_id: str, at_ms: int, actor: str, lines: Sequence[str]) -> None:
        self._c.write_many(
            "INSERT INTO rollout_timeline (rollout_id, at_ms, actor, line) VALUES (?, ?, ?, ?)",
            [[rollout_id, at_ms, actor, line] for line in lines],
        )

    def timeline(self, rollout_id: str) -> list[TimelineLine]:
        rows = self._c.tuples(
            "SELECT at_ms, actor, line FROM rollout_timeline WHERE rollout_id = ? ORDER BY id",
            [rollout_id],
        )
        return [TimelineLine(*row) for row in rows]

    def active_devices(self) -> list[Device]:
        rows = self._c.tuples(
            f"SELECT {DEVICE_COLUMNS} FROM devices WHERE status = 'active' ORDER BY id"  # noqa: S608
        )
        return [to_device(row) for row in rows]

    def windows(self, model_name: str, *, since_ms: int) -> list[DataWindowRecord]:
        rows = self._c.tuples(
            f"SELECT {_WINDOW} FROM data_windows WHERE model_name = ? AND window_start >= ? "  # noqa: S608
            "ORDER BY device_id, seq",
            [model_name, since_ms],
        )
        return [DataWindowRecord(*row) for row in rows]
