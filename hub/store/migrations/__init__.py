"""The hub's SQLite schema, as ordered migrations (sqlite-utils ``Migrations``): ``base``
(m001..m008), ``loop`` (m009..m013), ``since_postgres`` (m014 on), registered in that order.

Each migration runs once, in a transaction, recorded in ``_sqlite_migrations``; a hub
upgrading its code applies the new ones at start. Never edit a migration that has
shipped: add the next one, and its PostgreSQL twin of the same number in
``hub/store/postgres/migrations/`` (``m014_<what>.sql``; m001_baseline there folds m001..m013
here); ``tests/hub/test_store_schema.py`` fails while the two schemas differ. Times are
integer milliseconds since the Unix epoch; JSON columns hold canonical JSON text.

Tables, by concern:

- fleet: ``devices`` (identity, status, reported twin, replay window), ``desired``
  (desired twin per device), ``enrollment_tokens``;
- uplink records: ``telemetry``, ``states``, ``deltas``, ``data_windows``, ``device_acks``;
- registry: ``models``, ``versions`` (manifest, lineage, release counter), ``artifacts``
  (content-addressed files), ``release_lists``, ``roots``, ``assignments``;
- operations: ``api_tokens``, ``audit``, ``meta`` (counters such as the downlink seq),
  ``ui_sessions`` (dashboard sign-ins, by the digest of their id);
- broker: ``broker_credentials`` (each device's broker password verifier).
"""

from __future__ import annotations

from hub.store.migrations import base, loop, since_postgres  # noqa: F401 (they register)
from hub.store.migrations.book import migrations

__all__ = ["migrations"]
