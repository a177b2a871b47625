"""The SQLite dialect's tables, read raw: for tests that compare whole stored states.

Only tests of the SQLite store see its tables; everything else reads the store through
its typed methods (``hub.store.interface``). A snapshot before and after a refused
operation shows that it wrote nothing, whichever method it would have used.
"""

from __future__ import annotations

from typing import Any

from hub.store import Store
from hub.store.sqlite import SqliteStore

Rows = dict[str, list[dict[str, Any]]]


def sqlite(store: Store) -> SqliteStore:
    assert isinstance(store, SqliteStore), "these tests read the SQLite dialect's tables"
    return store


def rows(store: Store, table: str) -> list[dict[str, Any]]:
    """Every row of ``table`` (a name from this test suite, never from input), in rowid order."""
    db = sqlite(store).db
    return [dict(row) for row in db.query(f"SELECT * FROM [{table}] ORDER BY rowid")]  # noqa: S608


def snapshot(store: Store, tables: tuple[str, ...]) -> Rows:
    return {table: rows(store, table) for table in tables}
