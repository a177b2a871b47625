"""The hub's store: one SQLite file (WAL) behind a narrow interface.

Everything the hub knows lives here, so a restart resumes from it and a PostgreSQL store
can later stand beside this one with the same methods. Rows go in and out as plain
dicts keyed by column name (see :mod:`hub.migrations`); JSON columns are canonical JSON
text and the store does not interpret them.

Concurrency: one connection shared by the hub's threads (ingest, scheduler jobs, REST),
serialised by a re-entrant lock. :meth:`Store.atomic` holds the lock for a whole
transaction, so a batch of ingested frames, its replay-window updates and its audit rows
commit together or not at all.

Raises :class:`StoreError` (a ``HubError``) for integrity violations the caller
can act on; anything else from SQLite is a bug or a broken disk and propagates.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar

from sqlite_utils import Database
from sqlite_utils.db import NotFoundError, Table

from hub.errors import HubError
from hub.migrations import migrations

Row = dict[str, Any]


class StoreError(HubError):
    """A write the store's constraints refuse (duplicate key, unknown row)."""

    reason: ClassVar[str] = "store"
    status_hint: ClassVar[int] = 409


class NotFound(StoreError):
    """No row with that key."""

    reason = "not_found"
    status_hint = 404


class Store:
    """The hub's tables and the few queries over them that the hub needs."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._lock = threading.RLock()

    @classmethod
    def open(cls, path: str | Path) -> Store:
        """Open (creating and migrating) the store at ``path``, or ``":memory:"`` for tests."""
        if str(path) == ":memory:":
            conn = sqlite3.connect(":memory:", check_same_thread=False)
        else:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(str(path), check_same_thread=False, timeout=30)
        db = Database(conn)
        if str(path) != ":memory:":
            db.enable_wal()
            db.execute("PRAGMA synchronous=NORMAL")
        db.execute("PRAGMA foreign_keys=ON")
        migrations.apply(db)
        return cls(db)

    def close(self) -> None:
        with self._lock:
            self.db.close()

    @contextmanager
    def atomic(self) -> Iterator[Store]:
        """Hold the store for one transaction: everything inside commits, or nothing does."""
        with self._lock, self.db.atomic():
            yield self

    def table(self, name: str) -> Table:
        return self.db.table(name)

    def query(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> list[Row]:
        with self._lock:
            return list(self.db.query(sql, params))

    # ------------------------------------------------------------------ counters

    def bump(self, key: str, by: int = 1) -> int:
        """Add ``by`` to counter ``key`` (starting from 0) and return the new value."""
        with self.atomic():
            self.db.execute(
                "INSERT INTO meta(key, value) VALUES (?, ?) "
                "ON CONFLICT(key) DO UPDATE SET value = value + excluded.value",
                [key, by],
            )
            value: int = self.db.execute("SELECT value FROM meta WHERE key = ?", [key]).fetchone()[
                0
            ]
            return value

    def counter(self, key: str) -> int:
        rows = self.query("SELECT value FROM meta WHERE key = ?", [key])
        return int(rows[0]["value"]) if rows else 0

    # ------------------------------------------------------------------ generic rows

    def get(self, table: str, key: Any) -> Row:
        """The row with primary key ``key``.

        Raises:
            NotFound: no such row.
        """
        with self._lock:
            try:
                return dict(self.db.table(table).get(key))
            except NotFoundError as e:
                raise NotFound(f"no {table} row {key!r}") from e

    def find(self, table: str, key: Any) -> Row | None:
        try:
            return self.get(table, key)
        except NotFound:
            return None

    def insert(self, table: str, row: Row) -> None:
        """Insert one row.

        Raises:
            StoreError: a row with that primary key (or unique value) exists.
        """
        with self._lock:
            try:
                self.db.table(table).insert(row)
            except sqlite3.IntegrityError as e:
                raise StoreError(f"{table}: {e}") from e

    def insert_many(self, table: str, rows: Sequence[Row]) -> None:
        """Insert rows in one statement batch (the caller usually holds :meth:`atomic`).

        Raises:
            StoreError: a duplicate primary key.
        """
        if not rows:
            return
        with self._lock:
            try:
                self.db.table(table).insert_all(rows, batch_size=500)
            except sqlite3.IntegrityError as e:
                raise StoreError(f"{table}: {e}") from e

    def upsert(self, table: str, row: Row, pk: str | tuple[str, ...]) -> None:
        with self._lock:
            self.db.table(table).upsert(row, pk=pk)

    def update(self, table: str, key: Any, changes: Row) -> None:
        """Change columns of one row.

        Raises:
            NotFound: no such row.
        """
        with self._lock:
            try:
                self.db.table(table).update(key, changes)
            except NotFoundError as e:
                raise NotFound(f"no {table} row {key!r}") from e

    def count(self, table: str, where: str = "", params: Sequence[Any] = ()) -> int:
        # table and where come from code, never from input; values are bound parameters
        sql = f"SELECT count(*) AS n FROM [{table}]" + (f" WHERE {where}" if where else "")  # noqa: S608
        return int(self.query(sql, params)[0]["n"])

    # ------------------------------------------------------------------ audit

    def audit(
        self,
        *,
        at: int,
        actor: str,
        action: str,
        target: str = "",
        outcome: str = "ok",
        reason: str = "",
        detail: str = "{}",
    ) -> None:
        """Append to the audit log (who did what to what, and how it ended)."""
        self.insert(
            "audit",
            {
                "at": at,
                "actor": actor,
                "action": action,
                "target": target,
                "outcome": outcome,
                "reason": reason,
                "detail": detail,
            },
        )

    def list_audit(
        self,
        *,
        actor: str | None = None,
        action: str | None = None,
        outcome: str | None = None,
        target: str | None = None,
        since: int | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> tuple[list[Row], int]:
        """Audit rows, newest first, with the total count matching the filters."""
        where, params = _filters(
            {"actor": actor, "action": action, "outcome": outcome, "target": target}
        )
        if since is not None:
            where.append("at >= ?")
            params.append(since)
        clause = " AND ".join(where) or "1"
        total = self.count("audit", clause, params)
        rows = self.query(
            f"SELECT * FROM audit WHERE {clause} ORDER BY id DESC LIMIT ? OFFSET ?",  # noqa: S608
            [*params, limit, offset],
        )
        return rows, total

    def prune_audit(self, *, outcome: str, keep: int) -> int:
        """Delete all but the newest ``keep`` rows with ``outcome``; returns how many went."""
        with self.atomic():
            cursor = self.db.execute(
                "DELETE FROM audit WHERE outcome = ? AND id NOT IN "
                "(SELECT id FROM audit WHERE outcome = ? ORDER BY id DESC LIMIT ?)",
                [outcome, outcome, keep],
            )
            return cursor.rowcount

    # ------------------------------------------------------------------ devices

    def list_devices(
        self,
        *,
        status: str | None = None,
        tag: tuple[str, str] | None = None,
        model: tuple[str, int | None] | None = None,
        online: bool | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> tuple[list[Row], int]:
        """Devices matching the filters, ordered by id, with the total count."""
        where, params = _filters({"status": status})
        if tag is not None:
            where.append("json_extract(tags, '$.' || ?) = ?")
            params.extend(tag)
        if model is not None:
            where.append("active_name = ?")
            params.append(model[0])
            if model[1] is not None:
                where.append("active_version = ?")
                params.append(model[1])
        if online is not None:
            where.append("online = ?")
            params.append(int(online))
        clause = " AND ".join(where) or "1"
        total = self.count("devices", clause, params)
        columns = ", ".join(DEVICE_COLUMNS)
        rows = self.query(
            f"SELECT {columns} FROM devices WHERE {clause} ORDER BY id LIMIT ? OFFSET ?",  # noqa: S608
            [*params, limit, offset],
        )
        return rows, total


DEVICE_COLUMNS = (
    "id",
    "status",
    "tags",
    "agent_version",
    "enrolled_at",
    "first_seen",
    "last_seen",
    "online",
    "active_name",
    "active_version",
    "active_sha256",
    "health",
    "stale",
    "reported_at",
)
"""Columns a device listing returns (not the replay window or the raw report)."""


def _filters(values: dict[str, Any]) -> tuple[list[str], list[Any]]:
    where, params = [], []
    for column, value in values.items():
        if value is not None:
            where.append(f"{column} = ?")
            params.append(value)
    return where, params
