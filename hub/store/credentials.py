"""SQLite: ``broker_credentials`` (see :class:`hub.store.interface.BrokerCredentials`).

One verifier per device (never a password: docs/broker-security.md). A device's row
outlives its status changes: revoking a device takes its account off the broker because
only active devices' verifiers are provisioned, and approving it brings the account back.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from hub.store.sql import Connection


class SqlBrokerCredentials:
    def __init__(self, connection: Connection) -> None:
        self._c = connection

    def put_many(self, verifiers: Mapping[str, str], *, at_ms: int) -> None:
        self._c.write_many(
            "INSERT INTO broker_credentials (device_id, verifier, updated_at) VALUES (?, ?, ?) "
            "ON CONFLICT(device_id) DO UPDATE SET verifier = excluded.verifier, "
            "updated_at = excluded.updated_at WHERE verifier != excluded.verifier",
            [(device_id, verifier, at_ms) for device_id, verifier in verifiers.items()],
        )

    def get(self, device_id: str) -> str | None:
        found = self._c.scalar(
            "SELECT verifier FROM broker_credentials WHERE device_id = ?", [device_id]
        )
        return None if found is None else str(found)

    def active(self) -> dict[str, str]:
        rows = self._c.tuples(
            "SELECT c.device_id, c.verifier FROM broker_credentials c "
            "JOIN devices d ON d.id = c.device_id WHERE d.status = 'active' ORDER BY c.device_id"
        )
        return dict(rows)
