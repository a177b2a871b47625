"""SQLite: the ``leases`` table of migration 15 (see :class:`hub.store.lease_rows.Leases`).

Read-then-write in one statement each way; the caller holds ``immediate()``, which on
SQLite takes the write lock first, so two processes racing for a lease take turns.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from hub.store.lease_rows import Lease

if TYPE_CHECKING:
    from hub.store.sql import Connection

_COLUMNS = "name, holder, generation, acquired_ms, expires_ms"
_SELECT = f"SELECT {_COLUMNS} FROM leases WHERE name = ?"  # noqa: S608
# free, expired or the holder's own: take it (a new holder adds a generation)
_CLAIM = (
    f"INSERT INTO leases ({_COLUMNS}) VALUES (?, ?, 1, ?, ?) "  # noqa: S608
    "ON CONFLICT(name) DO UPDATE SET "
    "generation = CASE WHEN holder = excluded.holder THEN generation ELSE generation + 1 END, "
    "acquired_ms = CASE WHEN holder = excluded.holder "
    "THEN acquired_ms ELSE excluded.acquired_ms END, "
    "holder = excluded.holder, expires_ms = excluded.expires_ms "
    "WHERE holder = excluded.holder OR expires_ms <= ?"
)


class SqlLeases:
    def __init__(self, connection: Connection) -> None:
        self._c = connection

    def claim(self, name: str, holder: str, *, now_ms: int, ttl_ms: int) -> Lease:
        with self._c.atomic():
            self._c.write(
                _CLAIM,
                [name, holder, now_ms, now_ms + ttl_ms, now_ms],
            )
            lease = self.get(name)
        assert lease is not None  # inserted or kept above
        return lease

    def get(self, name: str) -> Lease | None:
        row = self._c.tuples(_SELECT, [name])
        return Lease(*row[0]) if row else None

    def release(self, name: str, holder: str, *, now_ms: int) -> bool:
        cursor = self._c.write(
            "UPDATE leases SET expires_ms = ? WHERE name = ? AND holder = ? AND expires_ms > ?",
            [now_ms, name, holder, now_ms],
        )
        return cursor.rowcount > 0
