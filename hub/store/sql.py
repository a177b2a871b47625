"""What the concern modules ask of a dialect's connection: the statements stay written once.

Every concern module (:mod:`hub.store.devices`, :mod:`~hub.store.uplink`, ...) holds its SQL
statements, written in SQLite's dialect, and runs them through a :class:`Connection`. The
SQLite dialect (:class:`hub.store.sqlite.Connection`) runs them as written; the PostgreSQL
dialect (:class:`hub.store.postgres.connection.PgConnection`) translates each on first use
(docs/decisions.md, "The store on PostgreSQL"). Both give rows readable by column name and
by position, raise :class:`~hub.store.interface.StoreError` for a constraint's refusal, and
nest :meth:`~Connection.atomic` as savepoints.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from typing import Any, Protocol

Params = Sequence[Any]


class Row(Protocol):
    """One result row: ``row["name"]`` or ``row[0]`` (what :class:`sqlite3.Row` offers)."""

    def __getitem__(self, key: int | str, /) -> Any: ...

    def __iter__(self) -> Iterator[Any]: ...

    def keys(self) -> list[str]: ...


class Written(Protocol):
    """What a write reports: how many rows it changed."""

    @property
    def rowcount(self) -> int: ...


class Connection(Protocol):
    """The few ways the concern modules use a connection."""

    def rows(self, sql: str, params: Params = ()) -> Sequence[Row]:
        """Every row of a query, readable by column name."""
        ...

    def tuples(self, sql: str, params: Params = ()) -> list[tuple[Any, ...]]:
        """Every row as a plain tuple: for hot listings that read by position."""
        ...

    def row(self, sql: str, params: Params = ()) -> Row | None: ...

    def scalar(self, sql: str, params: Params = ()) -> Any:
        """The first column of the first row, None when there is none."""
        ...

    def write(self, sql: str, params: Params = ()) -> Written:
        """One statement in its own transaction, or in the caller's."""
        ...

    def write_many(self, sql: str, rows: Sequence[Params]) -> int:
        """One statement for each of ``rows``, together; how many rows they changed."""
        ...

    def many(self, sql: str, rows: Sequence[Params]) -> int:
        """:meth:`write_many` inside a transaction the caller holds (no savepoint)."""
        ...

    def update_one(self, sql: str, params: Params, what: str) -> None:
        """An UPDATE of one row by key; :class:`~hub.store.interface.NotFound` if none."""
        ...

    def atomic(self) -> AbstractContextManager[None]: ...

    def immediate(self) -> AbstractContextManager[None]: ...
