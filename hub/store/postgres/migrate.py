"""The PostgreSQL schema's history: ``migrations/mNNN_<what>.sql``, applied in order at start.

Each migration runs once, recorded by name in ``edgefleet_migrations``. All pending ones
run in one transaction that first takes an advisory lock, so replicas of the hub starting
together against one database migrate it once: the others wait for the lock, then find
nothing left to do. Never edit a migration that has shipped: add the next one, the twin
of the SQLite one in :mod:`hub.store.migrations`, named by the same number (``m001_baseline``
folds SQLite's m001..m013; SQLite's m014 gets ``m014_<what>.sql``);
``tests/hub/test_store_schema.py`` fails while the two dialects' tables and columns differ.
"""

from __future__ import annotations

import logging
from importlib import resources

import psycopg

logger = logging.getLogger(__name__)

MIGRATION_LOCK = 0x6564_6765_6D69_67  # "edgemig": the advisory lock held while migrating
"""The advisory lock key (a bigint) that serialises migrating replicas."""


def migrations() -> list[tuple[str, str]]:
    """Every migration as ``(name, sql)``, in order."""
    folder = resources.files("hub.store.postgres") / "migrations"
    found = [p for p in folder.iterdir() if p.name.endswith(".sql")]
    found.sort(key=lambda p: p.name)
    return [(p.name.removesuffix(".sql"), p.read_text()) for p in found]


def apply(conn: psycopg.Connection[tuple[object, ...]]) -> list[str]:
    """Apply the pending migrations on ``conn`` (autocommit); the names it applied."""
    applied: list[str] = []
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", [MIGRATION_LOCK])
        conn.execute(
            "CREATE TABLE IF NOT EXISTS edgefleet_migrations "
            "(name TEXT PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
        )
        done = {row[0] for row in conn.execute("SELECT name FROM edgefleet_migrations")}
        for name, sql in migrations():
            if name in done:
                continue
            logger.info("applying the store migration %s", name)
            conn.execute(sql.encode())  # no parameters: may hold several statements
            conn.execute("INSERT INTO edgefleet_migrations (name) VALUES (%s)", [name])
            applied.append(name)
    return applied
