"""Migrations since the PostgreSQL store (m014 on): each has its twin of the same number in
``hub/store/postgres/migrations/`` (the baseline there folds m001..m013)."""

from __future__ import annotations

from sqlite_utils import Database

from hub.store.migrations.book import migrations


@migrations()
def m014_ui_sessions(db: Database) -> None:
    # hub.ui.session: a dashboard sign-in, kept by the sha256 of its id (never the id, which
    # only the browser's cookie holds), with the API token it signed in with (by id) and its
    # lifetime; expiry and sign-out delete the row.
    db.table("ui_sessions").create(
        {"digest": str, "token_id": str, "created_ms": int, "expires_ms": int},
        pk="digest",
        not_null={"token_id", "created_ms", "expires_ms"},
    )
    db.table("ui_sessions").create_index(["expires_ms"])
    db.table("ui_sessions").create_index(["created_ms"])


@migrations()
def m015_leases(db: Database) -> None:
    # hub.leader: the lease that names the one replica running the scheduled jobs
    # (docs/scale-out.md); a generation per change of hands fences a deposed holder.
    db.table("leases").create(
        {"name": str, "holder": str, "generation": int, "acquired_ms": int, "expires_ms": int},
        pk="name",
        not_null={"holder", "generation", "acquired_ms", "expires_ms"},
    )


@migrations()
def m016_devices_by_key(db: Database) -> None:
    # hub.fleet.enrollment: a hello carrying a key another device holds is refused
    # (key_reused); the lookup by key runs at every hello from an unknown device.
    db.table("devices").create_index(["public_key"])
