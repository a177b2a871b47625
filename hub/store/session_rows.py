"""The dashboard sessions' part of the store's contract (pure).

A session is kept by the sha256 of its id, never the id, which only the browser's cookie
holds (docs/dashboard.md): a copy of the database signs nobody in.
"""

from __future__ import annotations

from typing import Protocol

from hub.store.rows import UiSession


class UiSessions(Protocol):
    """Dashboard sessions, by the digest of their id: in the store, so a sign-in outlives a
    hub restart and works on every hub that shares the database."""

    def add(self, session: UiSession) -> None:
        """Raises StoreError: the digest exists."""

    def get(self, digest: str) -> UiSession | None:
        """The session, expired or not (the caller decides against its clock)."""
        ...

    def delete(self, digest: str) -> None:
        """Sign out (deleting an absent session changes nothing)."""

    def prune(self, *, now_ms: int, keep: int) -> int:
        """Delete every session expired at ``now_ms``, then all but the ``keep`` newest;
        how many went."""
        ...
