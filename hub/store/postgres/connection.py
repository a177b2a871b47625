"""The PostgreSQL dialect's connection: a pool, a transaction bound to its thread, translation.

Concurrency: a pool of connections (psycopg-pool) instead of SQLite's one connection. A
statement outside a transaction borrows a connection for itself (autocommit); a transaction
(:meth:`PgConnection.atomic`) holds one for its thread until it ends, and every statement
that thread runs meanwhile goes through it. So a REST read never waits for an ingest
batch's transaction, it runs beside it on another connection. Transactions themselves still
take turns within the process (a re-entrant lock, as SQLite's store holds its lock for a
whole transaction): code written against the SQLite store, whose read-then-write steps in
``atomic()`` never interleave with another thread's, keeps that guarantee here; between
processes and replicas, ``immediate()`` is what serialises, on both dialects.

:meth:`PgConnection.immediate` is what SQLite's ``BEGIN IMMEDIATE`` gives the store: its
transaction first takes ``pg_advisory_xact_lock(WRITE_LOCK)``, so read-then-write steps
(the next version number, the next assignment) run one at a time across every process
and replica on the database; the lock ends with the transaction.

A write inside a transaction runs in a savepoint of its own: when a constraint refuses it
(:class:`~hub.store.interface.StoreError`), the caller's transaction goes on, as it does on
SQLite, instead of being left aborted.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg.adapt import Loader
from psycopg.rows import RowMaker
from psycopg_pool import ConnectionPool

from hub.store.interface import NotFound, StoreError
from hub.store.postgres.translate import Translator
from hub.store.sql import Params

WRITE_LOCK = 0x6564_6765_7772_6974  # "edgewrit": the advisory lock of immediate()
"""The advisory lock key (a bigint) that :meth:`PgConnection.immediate` takes."""


class PgRow:
    """A row readable by column name and by position, like :class:`sqlite3.Row`."""

    __slots__ = ("_index", "_values")

    def __init__(self, values: Sequence[Any], index: dict[str, int]) -> None:
        self._values = values
        self._index = index

    def __getitem__(self, key: int | str, /) -> Any:
        return self._values[self._index[key] if isinstance(key, str) else key]

    def __iter__(self) -> Iterator[Any]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def keys(self) -> list[str]:
        return list(self._index)


def _pg_rows(cursor: psycopg.Cursor[Any]) -> RowMaker[PgRow]:
    index = {column.name: i for i, column in enumerate(cursor.description or ())}

    def make(values: Sequence[Any]) -> PgRow:
        return PgRow(values, index)

    return make


class _NumericLoader(Loader):
    """``numeric`` as SQLite gives it: an int when whole (``sum`` of BIGINTs), else a float
    (``avg``); the schema has no numeric column, only aggregates produce one."""

    def load(self, data: Any) -> int | float:
        text = bytes(data).decode()
        return float(text) if "." in text or "e" in text.lower() else int(text)


class _Written:
    """What a write reports once its connection went back to the pool."""

    __slots__ = ("rowcount",)

    def __init__(self, rowcount: int) -> None:
        self.rowcount = rowcount


def _configure(conn: psycopg.Connection[Any]) -> None:
    conn.adapters.register_loader("numeric", _NumericLoader)


class PgConnection:
    """The pool, the thread's transaction, and the ways the concern modules use them."""

    def __init__(self, url: str, primary_keys: dict[str, tuple[str, ...]] | None = None,
                 *, max_size: int = 8) -> None:  # fmt: skip
        self.pool = ConnectionPool(
            url,
            min_size=1,
            max_size=max_size,
            kwargs={"autocommit": True},
            configure=_configure,
            open=True,
            name="edgefleet-store",
        )
        self.translate = Translator(primary_keys or {})
        self._local = threading.local()
        self._turns = threading.RLock()  # one transaction at a time in this process

    @contextmanager
    def _conn(self) -> Iterator[psycopg.Connection[Any]]:
        """The thread's transaction's connection, or one borrowed for one statement."""
        current: psycopg.Connection[Any] | None = getattr(self._local, "conn", None)
        if current is not None:
            yield current
            return
        with self.pool.connection() as conn:
            yield conn

    def rows(self, sql: str, params: Params = ()) -> list[PgRow]:
        with self._conn() as conn:
            cursor = conn.cursor(row_factory=_pg_rows)
            return cursor.execute(self.translate(sql), params).fetchall()

    def tuples(self, sql: str, params: Params = ()) -> list[tuple[Any, ...]]:
        with self._conn() as conn:
            return conn.execute(self.translate(sql), params).fetchall()

    def row(self, sql: str, params: Params = ()) -> PgRow | None:
        with self._conn() as conn:
            cursor = conn.cursor(row_factory=_pg_rows)
            return cursor.execute(self.translate(sql), params).fetchone()

    def scalar(self, sql: str, params: Params = ()) -> Any:
        with self._conn() as conn:
            found = conn.execute(self.translate(sql), params).fetchone()
            return None if found is None else found[0]

    def write(self, sql: str, params: Params = ()) -> _Written:
        """One statement in its own transaction, or in the caller's (in a savepoint).

        Raises:
            StoreError: a constraint refuses it.
        """
        with self._conn() as conn, _refusals(conn):
            return _Written(conn.execute(self.translate(sql), params).rowcount)

    def write_many(self, sql: str, rows: Sequence[Params]) -> int:
        if not rows:
            return 0
        with self.atomic():
            return self.many(sql, rows)

    def many(self, sql: str, rows: Sequence[Params]) -> int:
        if not rows:
            return 0
        with self._conn() as conn, _refusals(conn):
            cursor = conn.cursor()
            cursor.executemany(self.translate(sql), rows)
            return cursor.rowcount

    def update_one(self, sql: str, params: Params, what: str) -> None:
        """An UPDATE of one row by key.

        Raises:
            NotFound: it changed no row.
        """
        if self.write(sql, params).rowcount == 0:
            raise NotFound(f"no {what}")

    @contextmanager
    def atomic(self) -> Iterator[None]:
        current: psycopg.Connection[Any] | None = getattr(self._local, "conn", None)
        if current is not None:
            with current.transaction():  # nested: a savepoint
                yield
            return
        with self._turns, self.pool.connection() as conn:
            self._local.conn = conn
            try:
                with conn.transaction():
                    yield
            finally:
                self._local.conn = None

    @contextmanager
    def immediate(self) -> Iterator[None]:
        with self.atomic(), self._conn() as conn:
            conn.execute("SELECT pg_advisory_xact_lock(%s)", [WRITE_LOCK])
            yield

    def close(self) -> None:
        self.pool.close()


@contextmanager
def _refusals(conn: psycopg.Connection[Any]) -> Iterator[None]:
    """Turn a constraint's refusal into :class:`StoreError`; inside a transaction, undo only
    the refused statement (a savepoint), as SQLite does."""
    try:
        if conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE:
            yield
        else:
            with conn.transaction():
                yield
    except psycopg.errors.IntegrityError as e:
        raise StoreError(str(e).splitlines()[0]) from e
