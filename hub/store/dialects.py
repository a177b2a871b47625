"""Which dialect serves a store location: the one place that knows more than one exists.

A location is a SQLite file path (or ``sqlite:///path``, or ``:memory:`` for tests), or a
PostgreSQL URL (``postgresql://user:password@host:port/database``, or ``postgres://``),
served by :mod:`hub.store.postgres`. Callers (the service, the CLI) call
:func:`open_store` with what the settings say.
"""

from __future__ import annotations

from pathlib import Path

from hub.errors import InvalidRequest
from hub.store.interface import Store
from hub.store.sqlite import SqliteStore

SQLITE_SCHEME = "sqlite:///"
POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def is_postgres(location: str | Path) -> bool:
    return str(location).startswith(POSTGRES_SCHEMES)


def describe(location: str | Path) -> str:
    """``location`` fit for a log line: a URL's password replaced by ``***``."""
    text = str(location)
    if "://" not in text or "@" not in text:
        return text
    scheme, rest = text.split("://", 1)
    credentials, host = rest.rsplit("@", 1)
    user = credentials.split(":", 1)[0]
    return f"{scheme}://{user}{':***' if ':' in credentials else ''}@{host}"


def open_store(location: str | Path) -> Store:
    """Open (creating and migrating) the store at ``location``.

    Raises:
        InvalidRequest: a URL whose scheme no dialect serves.
        StoreError: a PostgreSQL database that cannot be reached.
    """
    text = str(location)
    if is_postgres(text):
        from hub.store.postgres.store import PostgresStore  # the driver only when needed

        return PostgresStore.open(text)
    if text.startswith(SQLITE_SCHEME):
        return SqliteStore.open(text.removeprefix(SQLITE_SCHEME))
    if "://" in text:
        raise InvalidRequest(f"no store dialect for {text.split('://', 1)[0]!r} locations")
    return SqliteStore.open(location)
