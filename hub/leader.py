"""One leader among hub replicas, chosen through the store's ``leader`` lease.

Replicas (``hub serve --replica-group``, docs/scale-out.md) all ingest and all serve the
REST API, but the scheduled work (reconciler, heartbeats, offline marking, round closing,
drift scoring and roll-ups, rollout clocks) and the republication after a connect run on
one of them: the holder of the lease named ``leader`` in the store (:mod:`hub.store.lease_rows`).

:class:`Leadership` runs a thread that claims or renews the lease every ``lease_renew_s``
inside ``store.immediate()`` (SQLite's write lock, PostgreSQL's transaction: racing
replicas take turns), for ``lease_ttl_s``. A leader killed with ``kill -9`` stops renewing,
and another replica takes the lease at its first claim after the expiry: within
``lease_ttl_s + lease_renew_s`` (10 s by default). A taker audits ``leader.acquired`` with
its replica id and the lease's generation, and calls ``on_acquired`` (the service
republishes everything from the store, so the new leader resumes where the store says).

**Fencing.** :meth:`Leadership.leading` is true only while this replica's own lease has
at least ``lease_renew_s`` left by its own clock, so a leader that cannot renew (store
unreachable, process stalled) stops starting jobs before the lease can pass; and each
job run first checks the stored lease (:meth:`Leadership.confirm`): still ours, same
generation. A job already running when the lease passes finishes; every job is written
to be re-run (the state it acts on is in the store), and the desired states it publishes
carry assignment versions drawn in the store, so two leaders in a handover never publish
two different desired states under one version.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from hub.context import HubContext
from hub.metrics import LEADER
from hub.store.lease_rows import Lease

logger = logging.getLogger(__name__)

LEADER_LEASE = "leader"


class Leadership:
    """Claims and renews the ``leader`` lease for ``replica_id`` (module docstring)."""

    def __init__(
        self,
        ctx: HubContext,
        replica_id: str,
        *,
        on_acquired: Callable[[], object] | None = None,
    ) -> None:
        self.ctx = ctx
        self.replica_id = replica_id
        self.on_acquired = on_acquired
        self._ttl_ms = int(ctx.settings.lease_ttl_s * 1000)
        self._margin_ms = int(ctx.settings.lease_renew_s * 1000)
        self._lock = threading.Lock()
        self._lease: Lease | None = None  # ours, as last claimed
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Claim once now (a lone replica leads at once), then keep renewing on a thread."""
        self.tick()
        self._thread = threading.Thread(target=self._run, name="edgefleet-leader", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop renewing and let the lease go now, so another replica takes it at once."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        with self._lock:
            held, self._lease = self._lease, None
        LEADER.set(0)
        if held is not None:
            try:
                self.ctx.store.leases.release(
                    LEADER_LEASE, self.replica_id, now_ms=self.ctx.now_ms()
                )
            except Exception:  # the store is going away too: the lease expires by itself
                logger.exception("could not release the leader lease")

    def tick(self) -> bool:
        """Claim or renew the lease once; whether this replica leads now."""
        now_ms = self.ctx.now_ms()
        try:
            with self.ctx.store.immediate():
                lease = self.ctx.store.leases.claim(
                    LEADER_LEASE, self.replica_id, now_ms=now_ms, ttl_ms=self._ttl_ms
                )
        except Exception:  # the store is unreachable: keep what we had until it runs out
            logger.exception("could not renew the leader lease")
            return self.leading()
        ours = lease.holder == self.replica_id
        with self._lock:
            before, self._lease = self._lease, lease if ours else None
        acquired = ours and (before is None or before.generation != lease.generation)
        if acquired:
            self._acquired(lease)
        elif before is not None and not ours:
            logger.warning("leader lease lost to %s", lease.holder)
        LEADER.set(1 if ours else 0)
        return ours

    def leading(self) -> bool:
        """Whether this replica may start leader work now: it holds the lease with at least
        one renew interval left by its own clock."""
        with self._lock:
            lease = self._lease
        return lease is not None and self.ctx.now_ms() < lease.expires_ms - self._margin_ms

    def confirm(self) -> bool:
        """:meth:`leading`, and the stored lease is still ours at our generation: what a
        job checks before it runs."""
        with self._lock:
            lease = self._lease
        if lease is None or not self.leading():
            return False
        stored = self.ctx.store.leases.get(LEADER_LEASE)
        return (
            stored is not None
            and stored.holder == self.replica_id
            and stored.generation == lease.generation
        )

    @property
    def role(self) -> str:
        return "leader" if self.leading() else "follower"

    def _acquired(self, lease: Lease) -> None:
        logger.info("leading as %s (lease generation %d)", self.replica_id, lease.generation)
        self.ctx.store.audit.append(
            at=lease.acquired_ms,
            actor=f"replica:{self.replica_id}",
            action="leader.acquired",
            target=LEADER_LEASE,
            detail={"replica": self.replica_id, "generation": lease.generation},
        )
        if self.on_acquired is not None:
            try:
                self.on_acquired()
            except Exception:
                logger.exception("taking over as leader failed; the next tick retries the jobs")

    def _run(self) -> None:
        while not self._stop.wait(self.ctx.settings.lease_renew_s):
            self.tick()
