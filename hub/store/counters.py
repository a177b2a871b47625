"""SQLite: the ``meta`` table of named counters (see :class:`hub.store.interface.Counters`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from hub.store.rows import Counter

if TYPE_CHECKING:
    from hub.store.sql import Connection


class SqlCounters:
    def __init__(self, connection: Connection) -> None:
        self._c = connection

    def bump(self, key: Counter, by: int = 1) -> int:
        with self._c.atomic():
            self._c.write(
                "INSERT INTO meta(key, value) VALUES (?, ?) "
                "ON CONFLICT(key) DO UPDATE SET value = value + excluded.value",
                [key, by],
            )
            return int(self._c.scalar("SELECT value FROM meta WHERE key = ?", [key]))

    def get(self, key: Counter) -> int:
        return int(self._c.scalar("SELECT value FROM meta WHERE key = ?", [key]) or 0)

    def set(self, key: Counter, value: int) -> None:
        self._c.write(
            "INSERT INTO meta(key, value) VALUES (?, ?) "
            "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            [key, value],
        )
