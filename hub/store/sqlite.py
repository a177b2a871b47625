"""The SQLite dialect of the store: one file in WAL mode, one connection, one lock.

:class:`SqliteStore` implements :class:`hub.store.interface.Store` with the concern objects
of :class:`hub.store.concerns.Concerns` (one per table group, the statements written once
for both dialects), all sharing one :class:`Connection`. The schema is
:mod:`hub.store.migrations`, applied on open.

Concurrency: one connection shared by the hub's threads (ingest, scheduler jobs, REST),
serialised by a re-entrant lock. :meth:`Connection.atomic` holds the lock for a whole
transaction, so a batch of ingested frames, its replay-window updates and its audit rows
commit together or not at all. Other processes on the same file (the CLI) are
serialised by SQLite's own locks; ``timeout=30`` makes them wait rather than fail.
"""

from __future__ import annotations

import fcntl
import logging
import os
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlite_utils import Database

from hub.store.concerns import Concerns
from hub.store.interface import (
    NotFound,
    StoreError,
)
from hub.store.migrations import migrations

logger = logging.getLogger(__name__)

Params = Sequence[Any]


class Connection:
    """The shared connection, its lock, and the few ways the concern modules use it."""

    row_locks = False  # one writer at a time: nothing to lock row by row

    def __init__(self, db: Database) -> None:
        self.db = db
        self.conn: sqlite3.Connection = db.conn
        self.lock = threading.RLock()

    def rows(self, sql: str, params: Params = ()) -> list[sqlite3.Row]:
        """Every row of a query, readable by column name."""
        with self.lock:
            cursor = self.conn.cursor()
            cursor.row_factory = sqlite3.Row
            return cursor.execute(sql, params).fetchall()

    def tuples(self, sql: str, params: Params = ()) -> list[tuple[Any, ...]]:
        """Every row of a query as a plain tuple: for hot listings that read by position."""
        with self.lock:
            found: list[tuple[Any, ...]] = self.conn.execute(sql, params).fetchall()
            return found

    def row(self, sql: str, params: Params = ()) -> sqlite3.Row | None:
        with self.lock:
            cursor = self.conn.cursor()
            cursor.row_factory = sqlite3.Row
            found: sqlite3.Row | None = cursor.execute(sql, params).fetchone()
            return found

    def scalar(self, sql: str, params: Params = ()) -> Any:
        """The first column of the first row, None when there is none."""
        with self.lock:
            found = self.conn.execute(sql, params).fetchone()
            return None if found is None else found[0]

    def write(self, sql: str, params: Params = ()) -> sqlite3.Cursor:
        """One statement in its own transaction, or in the caller's.

        Raises:
            StoreError: a constraint refuses it.
        """
        with self.lock:
            if self.conn.in_transaction:  # one statement is atomic by itself
                return self._execute(sql, params)
            with self.db.atomic():
                return self._execute(sql, params)

    def _execute(self, sql: str, params: Params) -> sqlite3.Cursor:
        try:
            return self.conn.execute(sql, params)
        except sqlite3.IntegrityError as e:
            raise StoreError(str(e)) from e

    def write_many(self, sql: str, rows: Sequence[Params]) -> int:
        """One statement for each of ``rows``, together; how many rows they changed."""
        if not rows:
            return 0
        with self.atomic():
            return self.many(sql, rows)

    def many(self, sql: str, rows: Sequence[Params]) -> int:
        """:meth:`write_many` inside a transaction the caller holds (no savepoint)."""
        try:
            return int(self.conn.executemany(sql, rows).rowcount)
        except sqlite3.IntegrityError as e:
            raise StoreError(str(e)) from e

    def update_one(self, sql: str, params: Params, what: str) -> None:
        """An UPDATE of one row by key.

        Raises:
            NotFound: it changed no row.
        """
        if self.write(sql, params).rowcount == 0:
            raise NotFound(f"no {what}")

    @contextmanager
    def atomic(self) -> Iterator[None]:
        with self.lock, self.db.atomic():
            yield

    @contextmanager
    def immediate(self) -> Iterator[None]:
        with self.lock:
            if self.conn.in_transaction:
                with self.db.atomic():
                    yield
                return
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                yield
                self.conn.execute("COMMIT")
            except BaseException:
                self.conn.rollback()
                raise


class SqliteStore(Concerns):
    """The hub's store in one SQLite file; see :mod:`hub.store.interface` for the methods."""

    def __init__(self, db: Database) -> None:
        self.connection = Connection(db)
        super().__init__(self.connection)

    @classmethod
    def open(cls, path: str | Path) -> SqliteStore:
        """Open (creating and migrating) the store at ``path``, or ``":memory:"`` for tests."""
        if str(path) == ":memory:":
            db = Database(sqlite3.connect(":memory:", check_same_thread=False))
            db.execute("PRAGMA foreign_keys=ON")
            migrations.apply(db)
            return cls(db)
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        # One opener at a time sets the file up: `hub serve` and a `--data` command started
        # together on a fresh directory both switched it to WAL and migrated it, and the
        # loser died of "database is locked" (a lock file beside it, held for the set-up).
        with _setup_lock(Path(path)):
            db = Database(sqlite3.connect(str(path), check_same_thread=False, timeout=30))
            db.enable_wal()
            # FULL: an acknowledged frame must survive a power cut, not only a crash,
            # since the agent deletes it once acked; at 500-row batches it costs nothing
            # measurable (bench/hub.py prints both).
            db.execute("PRAGMA synchronous=FULL")
            db.execute("PRAGMA foreign_keys=ON")
            migrations.apply(db)
        return cls(db)

    @property
    def db(self) -> Database:
        """The sqlite-utils database: for this dialect's own tests and benchmarks only."""
        return self.connection.db

    def ping(self) -> bool:
        try:
            self.connection.scalar("SELECT 1")
        except sqlite3.Error as e:
            logger.error("the store did not answer: %s", e)
            return False
        return True

    def close(self) -> None:
        with self.connection.lock:
            self.connection.db.close()


@contextmanager
def _setup_lock(path: Path) -> Iterator[None]:
    """Wait for, then hold, an exclusive ``flock`` on ``<path>.setup.lock``."""
    fd = os.open(path.with_name(path.name + ".setup.lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock
