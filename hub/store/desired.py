"""SQLite: the ``desired`` and ``assignments`` tables (see
:class:`hub.store.interface.DesiredStates`)."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import TYPE_CHECKING, Any

from hub.store.devices import PREFIXED, to_device
from hub.store.interface import NotFound
from hub.store.rows import AssignmentRecord, Desired, Twin

if TYPE_CHECKING:
    from hub.store.sql import Connection, Row

COLUMNS = (
    "device_id",
    "model_name",
    "model_version",
    "assignment_version",
    "config",
    "set_at",
    "set_by",
    "assignment_expires",
    "published_at",
    "nudged_at",
    "stuck_at",
    "shadow_version",
)
SELECT = ", ".join(COLUMNS)
_PUT = (
    f"INSERT INTO desired ({SELECT}) VALUES ({', '.join('?' for _ in COLUMNS)}) "  # noqa: S608
    "ON CONFLICT(device_id) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in COLUMNS if c != "device_id")
)
_TWINS = (
    f"SELECT {', '.join('d.' + c for c in COLUMNS)}, {PREFIXED} "  # noqa: S608
    "FROM desired d JOIN devices v ON v.id = d.device_id "
)
_ASSIGNMENT = "device_id, version, model_name, model_version, document, created_at"


def _desired(row: Sequence[Any]) -> Desired:
    """From the values of :data:`COLUMNS`, in that order."""
    return Desired(*row)


def _assignment(row: Row) -> AssignmentRecord:
    return AssignmentRecord(
        row["device_id"],
        row["version"],
        row["model_name"],
        row["model_version"],
        row["document"],
        row["created_at"],
    )


class SqlDesired:
    def __init__(self, connection: Connection) -> None:
        self._c = connection

    def get(self, device_id: str) -> Desired:
        found = self.find(device_id)
        if found is None:
            raise NotFound(f"device {device_id[:64]} has no desired state")
        return found

    def find(self, device_id: str) -> Desired | None:
        rows = self._c.tuples(f"SELECT {SELECT} FROM desired WHERE device_id = ?", [device_id])  # noqa: S608
        return _desired(rows[0]) if rows else None

    def put(self, desired: Desired) -> None:
        self._c.write(_PUT, [getattr(desired, c) for c in COLUMNS])

    def delete(self, device_id: str) -> bool:
        return bool(self._c.write("DELETE FROM desired WHERE device_id = ?", [device_id]).rowcount)

    def reissued(self, device_id: str, *, assignment_version: int, expires_ms: int) -> None:
        self._set(device_id, "assignment_version = ?, assignment_expires = ?",
                  [assignment_version, expires_ms])  # fmt: skip

    def mark_published(self, device_id: str, *, at_ms: int) -> None:
        self._set(device_id, "published_at = ?", [at_ms])

    def mark_nudged(self, device_id: str, *, at_ms: int) -> None:
        self._set(device_id, "nudged_at = ?", [at_ms])

    def set_stuck(self, device_id: str, *, at_ms: int | None) -> None:
        self._set(device_id, "stuck_at = ?", [at_ms])

    def set_shadow(self, device_id: str, version: int | None) -> None:
        self._set(device_id, "shadow_version = ?, published_at = NULL", [version])

    def _set(self, device_id: str, assignments: str, params: list[Any]) -> None:
        self._c.update_one(
            f"UPDATE desired SET {assignments} WHERE device_id = ?",  # noqa: S608
            [*params, device_id],
            f"desired state for {device_id[:64]!r}",
        )

    def twins(self, device_id: str | None = None) -> list[Twin]:
        if device_id is None:
            rows = self._c.tuples(_TWINS + "ORDER BY d.device_id")
        else:
            rows = self._c.tuples(_TWINS + "WHERE d.device_id = ?", [device_id])
        split = len(COLUMNS)
        return [Twin(_desired(row[:split]), to_device(row[split:])) for row in rows]

    def unconverged(self) -> int:
        return int(
            self._c.scalar(
                "SELECT count(*) FROM desired d JOIN devices v ON v.id = d.device_id "
                "WHERE v.status = 'active' AND (v.active_name IS NOT d.model_name "
                "OR v.active_version IS NOT d.model_version)"
            )
        )

    def stuck_among(self, device_ids: Collection[str]) -> set[str]:
        if not device_ids:
            return set()
        ids = list(device_ids)
        marks = ", ".join("?" for _ in ids)
        rows = self._c.rows(
            f"SELECT device_id FROM desired WHERE stuck_at IS NOT NULL AND device_id IN ({marks})",  # noqa: S608
            ids,
        )
        return {row["device_id"] for row in rows}

    def next_assignment_version(self, device_id: str) -> int:
        highest = self._c.scalar(
            "SELECT max(version) FROM assignments WHERE device_id = ?", [device_id]
        )
        return int(highest or 0) + 1

    def add_assignment(self, assignment: AssignmentRecord) -> None:
        self._c.write(
            f"INSERT INTO assignments ({_ASSIGNMENT}) VALUES (?, ?, ?, ?, ?, ?)",  # noqa: S608
            [
                assignment.device_id,
                assignment.version,
                assignment.model_name,
                assignment.model_version,
                assignment.document,
                assignment.created_at,
            ],
        )

    def assignment(self, device_id: str, version: int) -> AssignmentRecord | None:
        row = self._c.row(
            f"SELECT {_ASSIGNMENT} FROM assignments WHERE device_id = ? AND version = ?",  # noqa: S608
            [device_id, version],
        )
        return None if row is None else _assignment(row)

    def current_assignment(self, device_id: str) -> AssignmentRecord | None:
        row = self._c.row(
            f"SELECT {', '.join('a.' + c for c in _ASSIGNMENT.split(', '))} "  # noqa: S608
            "FROM desired d JOIN devices v ON v.id = d.device_id "
            "JOIN assignments a ON a.device_id = d.device_id AND a.version = d.assignment_version "
            "WHERE d.device_id = ? AND v.status = 'active'",
            [device_id],
        )
        return None if row is None else _assignment(row)
