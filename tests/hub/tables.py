"""The store's tables, read raw: for tests that compare whole stored states.

Only tests of the store see its tables; everything else reads the store through its typed
methods (``hub.store.interface``). A snapshot before and after a refused operation shows
that it wrote nothing, whichever method it would have used. Both dialects: SQLite in
rowid order, PostgreSQL in primary key order (each a stable order for a snapshot).
"""

from __future__ import annotations

from typing import Any

from hub.store import Store
from hub.store.postgres.store import PostgresStore
from hub.store.sqlite import SqliteStore

Rows = dict[str, list[dict[str, Any]]]


def sqlite(store: Store) -> SqliteStore:
    assert isinstance(store, SqliteStore), "these tests read the SQLite dialect's tables"
    return store


def rows(store: Store, table: str) -> list[dict[str, Any]]:
    """Every row of ``table`` (a name from this test suite, never from input)."""
    if isinstance(store, PostgresStore):
        keys = store.connection.translate.primary_keys[table]
        found = store.connection.rows(f"SELECT * FROM {table} ORDER BY {', '.join(keys)}")  # noqa: S608
        return [dict(zip(row.keys(), row, strict=True)) for row in found]
    db = sqlite(store).db
    return [dict(row) for row in db.query(f"SELECT * FROM [{table}] ORDER BY rowid")]  # noqa: S608


def snapshot(store: Store, tables: tuple[str, ...]) -> Rows:
    return {table: rows(store, table) for table in tables}
