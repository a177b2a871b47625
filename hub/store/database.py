"""The hub's store: one SQLite file (WAL) behind a narrow interface.

Everything the hub knows lives here, so a restart resumes from it and a PostgreSQL store
can later stand beside this one with the same methods. Rows go in and out as plain
dicts keyed by column name (see :mod:`hub.store.migrations`); JSON columns are canonical JSON
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
from hub.store.migrations import migrations

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
            # FULL: an acknowledged frame must survive a power cut, not only a crash,
            # since the agent deletes it once acked; at 500-row batches it costs nothing
            # measurable (bench/hub.py prints both).
            db.execute("PRAGMA synchronous=FULL")
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
            # quoted: tag keys may hold '.' or '-', which a bare JSON path would misread
            where.append("json_extract(tags, '$.\"' || ? || '\"') = ?")
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

    # --- registry & desired (hub.registry, hub.fleet)

    @contextmanager
    def immediate(self) -> Iterator[Store]:
        """A transaction that takes SQLite's write lock at its start (``BEGIN IMMEDIATE``).

        For read-then-write steps (next version number, next assignment version) that
        another process on the same file (the CLI beside a running hub) may race: a
        deferred transaction would fail to upgrade its read lock instead of waiting.
        Inside another transaction it is a savepoint, like :meth:`atomic`.
        """
        with self._lock:
            if self.db.conn.in_transaction:
                with self.db.atomic():
                    yield self
                return
            self.db.execute("BEGIN IMMEDIATE")
            try:
                yield self
                self.db.execute("COMMIT")
            except BaseException:
                self.db.conn.rollback()
                raise

    def set_counter(self, key: str, value: int) -> None:
        """Set counter ``key`` to ``value`` (what was last published, say)."""
        with self.atomic():
            self.db.execute(
                "INSERT INTO meta(key, value) VALUES (?, ?) "
                "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                [key, value],
            )

    def next_model_version(self, name: str) -> int:
        """One more than the highest version of model ``name`` (1 for a new model)."""
        rows = self.query("SELECT max(version) AS v FROM versions WHERE name = ?", [name])
        return int(rows[0]["v"] or 0) + 1

    def next_release_counter(self) -> int:
        """One more than the highest release counter ever assigned."""
        rows = self.query("SELECT max(release_counter) AS c FROM versions")
        return int(rows[0]["c"] or 0) + 1

    def latest_release_list(self, *, signed: bool | None = None) -> Row | None:
        """The release list row with the highest version (only signed or unsigned ones
        when ``signed`` is given)."""
        where = "" if signed is None else "WHERE signed = ?"
        params = [] if signed is None else [int(signed)]
        rows = self.query(
            f"SELECT * FROM release_lists {where} ORDER BY version DESC LIMIT 1",  # noqa: S608
            params,
        )
        return rows[0] if rows else None

    def next_assignment_version(self, device_id: str) -> int:
        """One more than the highest assignment version signed for ``device_id``."""
        rows = self.query(
            "SELECT max(version) AS v FROM assignments WHERE device_id = ?", [device_id]
        )
        return int(rows[0]["v"] or 0) + 1

    def desired_twins(self, device_id: str | None = None) -> list[Row]:
        """Each desired row joined with its device's reported state, ordered by device id.

        Columns: every ``desired`` column, then ``status``, ``last_seen``, ``online``,
        ``active_name``, ``active_version``, ``active_sha256``, ``health`` of the device.
        """
        sql = (
            "SELECT d.*, v.status, v.last_seen, v.online, v.active_name, v.active_version, "
            "v.active_sha256, v.health FROM desired d JOIN devices v ON v.id = d.device_id "
        )
        if device_id is None:
            return self.query(sql + "ORDER BY d.device_id")
        return self.query(sql + "WHERE d.device_id = ?", [device_id])

    # --- ingest & enrollment (hub.ingest.worker, hub.fleet.enrollment, hub.transport.downlink)

    def device_status(self, device_id: str) -> str | None:
        """The device's status (pending | active | revoked), or None if it is unknown."""
        rows = self.query("SELECT status FROM devices WHERE id = ?", [device_id])
        return str(rows[0]["status"]) if rows else None

    def insert_new(self, table: str, rows: Sequence[Row]) -> int:
        """Insert rows whose primary key is not taken yet; skip the others (one statement
        batch, all rows with the columns of the first). Returns how many were inserted.

        For idempotent writes: an uplink row that is already stored is stored.
        """
        if not rows:
            return 0
        columns = list(rows[0])
        sql = (
            f"INSERT OR IGNORE INTO [{table}] ({', '.join(f'[{c}]' for c in columns)}) "  # noqa: S608
            f"VALUES ({', '.join('?' for _ in columns)})"
        )
        with self.atomic():
            cursor = self.db.conn.executemany(sql, [[row[c] for c in columns] for row in rows])
            return int(cursor.rowcount)

    def note_uplink(self, seen: Sequence[tuple[str, bytes, int, int]]) -> None:
        """Record accepted uplink per device: ``(device_id, up_window, last_seen, online)``.

        ``last_seen`` never moves backwards.
        """
        with self.atomic():
            self.db.conn.executemany(
                "UPDATE devices SET up_window = ?, online = ?, "
                "last_seen = max(coalesce(last_seen, 0), ?) WHERE id = ?",
                [(window, online, last_seen, device) for device, window, last_seen, online in seen],
            )

    def report_twin(self, device_id: str, seq: int, changes: Row) -> bool:
        """Apply a state report's ``changes`` to the device row unless a state report with
        a higher seq is already stored (reports may arrive out of order). True if applied.
        """
        columns = ", ".join(f"[{c}] = ?" for c in changes)
        with self.atomic():
            cursor = self.db.execute(
                f"UPDATE devices SET {columns} WHERE id = ? AND NOT EXISTS "  # noqa: S608
                "(SELECT 1 FROM states WHERE device_id = ? AND seq > ?)",
                [*changes.values(), device_id, device_id, seq],
            )
            return bool(cursor.rowcount)

    def use_token(self, token_id: str) -> bool:
        """Count one use of an enrollment token; False (nothing changed) when it is revoked
        or a single-use token already used."""
        with self.atomic():
            cursor = self.db.execute(
                "UPDATE enrollment_tokens SET uses = uses + 1 WHERE id = ? AND revoked = 0 "
                "AND (kind != 'single' OR uses = 0)",
                [token_id],
            )
            return bool(cursor.rowcount)

    def mark_offline(self, seen_before: int) -> list[str]:
        """Set ``online = 0`` on online devices last seen before ``seen_before`` (ms);
        returns their ids."""
        with self.atomic():
            rows = self.db.execute(
                "UPDATE devices SET online = 0 WHERE online = 1 AND "
                "coalesce(last_seen, 0) < ? RETURNING id",
                [seen_before],
            ).fetchall()
            return sorted(row[0] for row in rows)


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
