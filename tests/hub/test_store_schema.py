"""The two dialects' schemas stay in step: a SQLite migration without its PostgreSQL twin
(hub/store/postgres/migrations/) fails here, and so does the reverse."""

from __future__ import annotations

from pathlib import Path

import psycopg

from hub.store.sqlite import SqliteStore

# SQLite's column types as the PostgreSQL baseline declares them
_TYPES = {
    "INTEGER": "bigint",
    "TEXT": "text",
    "BLOB": "bytea",
    "FLOAT": "double precision",
    "REAL": "double precision",
}


def _sqlite_columns(path: Path) -> dict[str, dict[str, str]]:
    store = SqliteStore.open(path)
    tables: dict[str, dict[str, str]] = {}
    for (table,) in store.db.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite%' "
        "AND name != '_sqlite_migrations'"
    ).fetchall():
        columns = store.db.execute(f"PRAGMA table_info([{table}])").fetchall()
        tables[table] = {c[1]: _TYPES[c[2].upper()] for c in columns}
    store.close()
    return tables


def _postgres_columns(url: str) -> dict[str, dict[str, str]]:
    tables: dict[str, dict[str, str]] = {}
    with psycopg.connect(url) as conn:
        for table, column, kind in conn.execute(
            "SELECT table_name, column_name, data_type FROM information_schema.columns "
            "WHERE table_schema = current_schema() AND table_name != 'edgefleet_migrations'"
        ):
            tables.setdefault(table, {})[column] = kind
    return tables


def test_both_dialects_have_the_same_tables_columns_and_types(
    tmp_path: Path, postgres_url: str
) -> None:
    assert _postgres_columns(postgres_url) == _sqlite_columns(tmp_path / "hub.db")
