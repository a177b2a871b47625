"""The store's ``ui_sessions`` (see :class:`hub.store.interface.UiSessions`).

A row is keyed by the sha256 of a session id, never the id: a copy of the database signs
nobody in. :meth:`SqlUiSessions.prune` keeps the table bounded (the dashboard calls it
at each sign-in), deleting expired rows first and then the oldest.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from hub.store.rows import UiSession

if TYPE_CHECKING:
    from hub.store.sql import Connection


class SqlUiSessions:
    def __init__(self, connection: Connection) -> None:
        self._c = connection

    def add(self, session: UiSession) -> None:
        self._c.write(
            "INSERT INTO ui_sessions (digest, token_id, created_ms, expires_ms) "
            "VALUES (?, ?, ?, ?)",
            [session.digest, session.token_id, session.created_ms, session.expires_ms],
        )

    def get(self, digest: str) -> UiSession | None:
        row = self._c.row(
            "SELECT digest, token_id, created_ms, expires_ms FROM ui_sessions WHERE digest = ?",
            [digest],
        )
        if row is None:
            return None
        return UiSession(row["digest"], row["token_id"], row["created_ms"], row["expires_ms"])

    def delete(self, digest: str) -> None:
        self._c.write("DELETE FROM ui_sessions WHERE digest = ?", [digest])

    def prune(self, *, now_ms: int, keep: int) -> int:
        with self._c.atomic():
            gone = self._c.write("DELETE FROM ui_sessions WHERE expires_ms <= ?", [now_ms]).rowcount
            over = int(self._c.scalar("SELECT count(*) FROM ui_sessions")) - keep
            if over > 0:
                gone += self._c.write(
                    "DELETE FROM ui_sessions WHERE digest IN (SELECT digest FROM ui_sessions "
                    "ORDER BY created_ms, digest LIMIT ?)",
                    [over],
                ).rowcount
        return int(gone)
