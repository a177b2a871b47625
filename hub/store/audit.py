"""SQLite: the ``audit`` table (see :class:`hub.store.interface.Audit`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from hub.store.rows import AuditEntry, AuditRecord, Page
from protocol import canonical

if TYPE_CHECKING:
    from hub.store.sql import Connection

_INSERT = (
    "INSERT INTO audit (at, actor, action, target, outcome, reason, detail) "
    "VALUES (?, ?, ?, ?, ?, ?, ?)"
)
_SELECT = "SELECT id, at, actor, action, target, outcome, reason, detail FROM audit"


def _where(values: Mapping[str, object]) -> tuple[str, list[Any]]:
    """``column = ?`` for each value given; the names are this module's own."""
    where, params = [], []
    for column, value in values.items():
        if value is not None:
            where.append(f"{column} = ?")
            params.append(value)
    return " AND ".join(where) or "1", params


class SqlAudit:
    def __init__(self, connection: Connection) -> None:
        self._c = connection

    def append(
        self,
        *,
        at: int,
        actor: str,
        action: str,
        target: str = "",
        outcome: str = "ok",
        reason: str = "",
        detail: Mapping[str, object] | None = None,
    ) -> None:
        text = canonical.dumps(dict(detail or {})).decode()
        self._c.write(_INSERT, [at, actor, action, target, outcome, reason, text])

    def append_many(self, records: Sequence[AuditRecord]) -> None:
        self._c.write_many(
            _INSERT,
            [(r.at, r.actor, r.action, r.target, r.outcome, r.reason, r.detail) for r in records],
        )

    def page(
        self,
        *,
        actor: str | None = None,
        action: str | None = None,
        outcome: str | None = None,
        target: str | None = None,
        since_ms: int | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> Page[AuditEntry]:
        clause, params = _where(
            {"actor": actor, "action": action, "outcome": outcome, "target": target}
        )
        if since_ms is not None:
            clause += " AND at >= ?"
            params.append(since_ms)
        total = self._c.scalar(f"SELECT count(*) FROM audit WHERE {clause}", params)  # noqa: S608
        rows = self._c.rows(
            f"{_SELECT} WHERE {clause} ORDER BY id DESC LIMIT ? OFFSET ?",
            [*params, limit, offset],
        )
        return Page([AuditEntry(*row) for row in rows], int(total))

    def count(
        self,
        *,
        actor: str | None = None,
        action: str | None = None,
        outcome: str | None = None,
        target: str | None = None,
    ) -> int:
        clause, params = _where(
            {"actor": actor, "action": action, "outcome": outcome, "target": target}
        )
        return int(self._c.scalar(f"SELECT count(*) FROM audit WHERE {clause}", params))  # noqa: S608

    def prune(self, *, outcome: str, keep: int) -> int:
        cursor = self._c.write(
            "DELETE FROM audit WHERE outcome = ? AND id NOT IN "
            "(SELECT id FROM audit WHERE outcome = ? ORDER BY id DESC LIMIT ?)",
            [outcome, outcome, keep],
        )
        return cursor.rowcount
