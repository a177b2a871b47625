"""Every concern of the store over one connection: what both dialects' stores are made of.

The concern modules hold the statements (written once, in SQLite's dialect) and take any
:class:`hub.store.sql.Connection`; a dialect's store only opens its connection and builds
:class:`Concerns` over it (:class:`hub.store.sqlite.SqliteStore`,
:class:`hub.store.postgres.store.PostgresStore`), so a new concern is wired in one place.
"""

from __future__ import annotations

from contextlib import AbstractContextManager

from hub.store.audit import SqlAudit
from hub.store.counters import SqlCounters
from hub.store.credentials import SqlBrokerCredentials
from hub.store.desired import SqlDesired
from hub.store.devices import SqlDevices
from hub.store.drift import SqlDrift
from hub.store.drift_rows import Drift
from hub.store.interface import (
    ApiTokens,
    Audit,
    BrokerCredentials,
    Counters,
    DesiredStates,
    Devices,
    EnrollmentTokens,
    Registry,
    Uplink,
)
from hub.store.lease_rows import Leases
from hub.store.leases import SqlLeases
from hub.store.registry import SqlRegistry
from hub.store.rollout_rows import Rollouts
from hub.store.rollouts import SqlRollouts
from hub.store.round_rows import Rounds
from hub.store.rounds import SqlRounds
from hub.store.session_rows import UiSessions
from hub.store.sql import Connection
from hub.store.tokens import SqlApiTokens, SqlEnrollmentTokens
from hub.store.ui_sessions import SqlUiSessions
from hub.store.uplink import SqlUplink


class Concerns:
    """The concern objects of :class:`hub.store.interface.Store`, and its transactions."""

    def __init__(self, connection: Connection) -> None:
        self._transactions = connection
        self.devices: Devices = SqlDevices(connection)
        self.desired: DesiredStates = SqlDesired(connection)
        self.registry: Registry = SqlRegistry(connection)
        self.uplink: Uplink = SqlUplink(connection)
        self.audit: Audit = SqlAudit(connection)
        self.api_tokens: ApiTokens = SqlApiTokens(connection)
        self.enrollment_tokens: EnrollmentTokens = SqlEnrollmentTokens(connection)
        self.ui_sessions: UiSessions = SqlUiSessions(connection)
        self.counters: Counters = SqlCounters(connection)
        self.broker_credentials: BrokerCredentials = SqlBrokerCredentials(connection)
        self.rounds: Rounds = SqlRounds(connection)
        self.drift: Drift = SqlDrift(connection)
        self.rollouts: Rollouts = SqlRollouts(connection)
        self.leases: Leases = SqlLeases(connection)

    def atomic(self) -> AbstractContextManager[None]:
        return self._transactions.atomic()

    def immediate(self) -> AbstractContextManager[None]:
        return self._transactions.immediate()

    def for_update(self) -> AbstractContextManager[None]:
        """A transaction in which the caller locks the rows it reads before writing them
        (the ``*_for_update`` methods), so concurrent writers wait per row, not globally:
        PostgreSQL runs a plain transaction and ``SELECT ... FOR UPDATE`` locks the rows;
        SQLite has one writer and no row locks, so it takes the write lock first (as
        ``immediate``). An ingest batch of hub replicas runs in one (docs/scale-out.md)."""
        if self._transactions.row_locks:
            return self._transactions.atomic()
        return self._transactions.immediate()
