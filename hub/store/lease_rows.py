"""The leases' part of the store's contract and the row it passes (pure).

A lease names one holder for a while: the hub replica that runs the scheduled jobs
(``leader``) holds it, renews it every ``lease_renew_s`` and loses it when it stops
renewing for ``lease_ttl_s`` (:mod:`hub.leader`, docs/scale-out.md). The generation
grows by one each time the lease changes hands, so a deposed holder can tell that what
it believed is no longer true (fencing): it checks its generation before each job.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class Lease:
    """Who holds lease ``name`` until ``expires_ms``, and how many times it changed hands."""

    name: str
    holder: str
    generation: int
    acquired_ms: int
    expires_ms: int


class Leases(Protocol):
    """Named leases with a holder, an expiry and a generation (call inside ``immediate``,
    so two replicas racing for one lease are serialised by the store)."""

    def claim(self, name: str, holder: str, *, now_ms: int, ttl_ms: int) -> Lease:
        """Take ``name`` for ``holder`` until ``now_ms + ttl_ms`` if it is free, expired or
        already ``holder``'s (a renewal keeps the generation; a takeover adds one).
        Returns the lease as it stands afterwards: held by someone else if it was theirs
        and still live."""
        ...

    def get(self, name: str) -> Lease | None: ...

    def release(self, name: str, holder: str, *, now_ms: int) -> bool:
        """Let ``name`` expire now if ``holder`` holds it (a clean shutdown hands over at
        once instead of after the TTL); whether it did."""
        ...
