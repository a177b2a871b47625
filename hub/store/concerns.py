"""Every concern of the store over one connection: what both dialects' stores are made of.

The concern modules hold the statements (written once, in SQLite's dialect) and take any
:class:`hub.store.sql.Connection`; a dialect's store only opens its connection and builds
:class:`Concerns` over it (:class:`hub.store.sqlite.SqliteStore`,
:class:`hub.store.postgres.store.PostgresStore`), so a new concern is wired in one place.
"""

from __future__ import annotations

from contextlib import AbstractContextManager

from hub.store.audit import SqliteAudit
from hub.store.counters import SqliteCounters
from hub.store.credentials import SqliteBrokerCredentials
from hub.store.desired import SqliteDesired
from hub.store.devices import SqliteDevices
from hub.store.drift import SqliteDrift
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
from hub.store.leases import SqliteLeases
from hub.store.registry import SqliteRegistry
from hub.store.rollout_rows import Rollouts
from hub.store.rollouts import SqliteRollouts
from hub.store.round_rows import Rounds
from hub.store.rounds import SqliteRounds
from hub.store.session_rows import UiSessions
from hub.store.sql import Connection
from hub.store.tokens import SqliteApiTokens, SqliteEnrollmentTokens
from hub.store.ui_sessions import SqliteUiSessions
from hub.store.uplink import SqliteUplink


class Concerns:
    """The concern objects of :class:`hub.store.interface.Store`, and its transactions."""

    def __init__(self, connection: Connection) -> None:
        self._transactions = connection
        self.devices: Devices = SqliteDevices(connection)
        self.desired: DesiredStates = SqliteDesired(connection)
        self.registry: Registry = SqliteRegistry(connection)
        self.uplink: Uplink = SqliteUplink(connection)
        self.audit: Audit = SqliteAudit(connection)
        self.api_tokens: ApiTokens = SqliteApiTokens(connection)
        self.enrollment_tokens: EnrollmentTokens = SqliteEnrollmentTokens(connection)
        self.ui_sessions: UiSessions = SqliteUiSessions(connection)
        self.counters: Counters = SqliteCounters(connection)
        self.broker_credentials: BrokerCredentials = SqliteBrokerCredentials(connection)
        self.rounds: Rounds = SqliteRounds(connection)
        self.drift: Drift = SqliteDrift(connection)
        self.rollouts: Rollouts = SqliteRollouts(connection)
        self.leases: Leases = SqliteLeases(connection)

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
