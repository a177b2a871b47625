"""Which dialect serves a store location: the one place that knows more than one exists.

Today a location is a SQLite file path (or ``sqlite:///path``, or ``:memory:`` for
tests). A PostgreSQL dialect would add its scheme here (``postgresql://...``) and a
package beside :mod:`hub.store.sqlite` implementing :mod:`hub.store.interface`; callers
(the service, the CLI) keep calling :func:`open_store` with what the settings say.
"""

from __future__ import annotations

from pathlib import Path

from hub.errors import InvalidRequest
from hub.store.interface import Store
from hub.store.sqlite import SqliteStore

SQLITE_SCHEME = "sqlite:///"


def open_store(location: str | Path) -> Store:
    """Open (creating and migrating) the store at ``location``.

    Raises:
        InvalidRequest: a URL whose scheme no dialect serves.
    """
    text = str(location)
    if text.startswith(SQLITE_SCHEME):
        return SqliteStore.open(text.removeprefix(SQLITE_SCHEME))
    if "://" in text:
        raise InvalidRequest(f"no store dialect for {text.split('://', 1)[0]!r} locations")
    return SqliteStore.open(location)
