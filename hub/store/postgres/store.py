"""The hub's store on PostgreSQL: the SQLite dialect's concern modules over a pool.

:class:`PostgresStore` implements :class:`hub.store.interface.Store` with the very concern
objects the SQLite store uses (:mod:`hub.store.devices`, :mod:`~hub.store.uplink`, ...),
given a :class:`~hub.store.postgres.connection.PgConnection` that translates their
statements; the schema is ``migrations/*.sql``, applied on open (:mod:`.migrate`).
"""

from __future__ import annotations

import logging
from contextlib import AbstractContextManager

import psycopg

from hub.store.audit import SqliteAudit
from hub.store.counters import SqliteCounters
from hub.store.credentials import SqliteBrokerCredentials
from hub.store.desired import SqliteDesired
from hub.store.devices import SqliteDevices
from hub.store.dialects import describe
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
    StoreUnreachable,
    Uplink,
)
from hub.store.postgres import migrate
from hub.store.postgres.connection import PgConnection
from hub.store.registry import SqliteRegistry
from hub.store.rollout_rows import Rollouts
from hub.store.rollouts import SqliteRollouts
from hub.store.round_rows import Rounds
from hub.store.rounds import SqliteRounds
from hub.store.tokens import SqliteApiTokens, SqliteEnrollmentTokens
from hub.store.uplink import SqliteUplink

logger = logging.getLogger(__name__)

_PRIMARY_KEYS = """
SELECT c.relname, a.attname
FROM pg_index i
JOIN pg_class c ON c.oid = i.indrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord) ON TRUE
JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = k.attnum
WHERE i.indisprimary AND n.nspname = current_schema()
ORDER BY c.relname, k.ord
"""


class PostgresStore:
    """The hub's store in a PostgreSQL database; see :mod:`hub.store.interface`."""

    def __init__(self, connection: PgConnection) -> None:
        self.connection = connection
        self.devices: Devices = SqliteDevices(connection)
        self.desired: DesiredStates = SqliteDesired(connection)
        self.registry: Registry = SqliteRegistry(connection)
        self.uplink: Uplink = SqliteUplink(connection)
        self.audit: Audit = SqliteAudit(connection)
        self.api_tokens: ApiTokens = SqliteApiTokens(connection)
        self.enrollment_tokens: EnrollmentTokens = SqliteEnrollmentTokens(connection)
        self.counters: Counters = SqliteCounters(connection)
        self.broker_credentials: BrokerCredentials = SqliteBrokerCredentials(connection)
        self.rounds: Rounds = SqliteRounds(connection)
        self.drift: Drift = SqliteDrift(connection)
        self.rollouts: Rollouts = SqliteRollouts(connection)

    @classmethod
    def open(cls, url: str) -> PostgresStore:
        """Open the store at ``url`` (``postgresql://user:password@host:port/db``),
        applying pending migrations first.

        Raises:
            StoreUnreachable: the database cannot be reached (the password not repeated).
        """
        try:
            with psycopg.connect(url, autocommit=True, connect_timeout=10) as conn:
                applied = migrate.apply(conn)
                keys: dict[str, list[str]] = {}
                for table, column in conn.execute(_PRIMARY_KEYS):
                    keys.setdefault(table, []).append(column)
        except psycopg.OperationalError as e:
            raise StoreUnreachable(
                f"cannot open the store at {describe(url)}: {_first_line(e)}"
            ) from e
        if applied:
            logger.info("store %s: applied %s", describe(url), ", ".join(applied))
        primary = {table: tuple(columns) for table, columns in keys.items()}
        return cls(PgConnection(url, primary))

    def atomic(self) -> AbstractContextManager[None]:
        return self.connection.atomic()

    def immediate(self) -> AbstractContextManager[None]:
        return self.connection.immediate()

    def ping(self) -> bool:
        try:
            self.connection.scalar("SELECT 1")
        except psycopg.Error as e:
            logger.error("the store did not answer: %s", _first_line(e))
            return False
        return True

    def close(self) -> None:
        self.connection.close()


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
