"""The hub's own tables (m001..m008): fleet, uplink records, registry, operations, broker."""

from __future__ import annotations

from sqlite_utils import Database

from hub.store.migrations.book import migrations


@migrations()
def m001_fleet(db: Database) -> None:
    db.table("devices").create(
        {
            "id": str,
            "public_key": str,
            "status": str,  # pending | active | revoked
            "tags": str,  # JSON object
            "agent_version": str,
            "enrolled_at": int,
            "enrolled_by": str,
            "first_seen": int,
            "last_seen": int,
            "online": int,
            "up_window": bytes,  # protocol.replay.SeqWindow.to_bytes()
            "active_name": str,
            "active_version": int,
            "active_sha256": str,
            "reported": str,  # last StateReport as JSON
            "reported_at": int,
            "health": str,  # ok | degraded | freeze_suspected | stuck | ...
            "stale": int,
        },
        pk="id",
        not_null={"id", "public_key", "status", "first_seen"},
        defaults={"tags": "{}", "online": 0, "stale": 0, "health": "unknown"},
    )
    db.table("devices").create_index(["status"])
    db.table("devices").create_index(["active_name", "active_version"])
    db.table("desired").create(
        {
            "device_id": str,
            "model_name": str,
            "model_version": int,
            "assignment_version": int,
            "config": str,  # DeviceConfig JSON
            "set_at": int,
            "set_by": str,
            "published_at": int,
            "nudged_at": int,
        },
        pk="device_id",
        foreign_keys=[("device_id", "devices", "id")],
    )
    db.table("enrollment_tokens").create(
        {
            "id": str,
            "hash": str,
            "kind": str,  # single | fleet
            "created_at": int,
            "created_by": str,
            "expires_at": int,
            "uses": int,
            "revoked": int,
            "tags": str,
        },
        pk="id",
        not_null={"hash", "kind", "created_at"},
        defaults={"uses": 0, "revoked": 0, "tags": "{}"},
    )
    db.table("enrollment_tokens").create_index(["hash"], unique=True)


@migrations()
def m002_uplink(db: Database) -> None:
    common = {"device_id": str, "seq": int, "sent_at": int, "received_at": int}
    db.table("telemetry").create({**common, "body": str}, pk=("device_id", "seq"))
    db.table("states").create({**common, "body": str}, pk=("device_id", "seq"))
    db.table("device_acks").create({**common, "body": str}, pk=("device_id", "seq"))
    db.table("data_windows").create(
        {
            **common,
            "window_start": int,
            "window_end": int,
            "model_name": str,
            "model_version": int,
            "body": str,
        },
        pk=("device_id", "seq"),
    )
    db.table("data_windows").create_index(["window_end"])
    db.table("deltas").create(
        {
            **common,
            "base_name": str,
            "base_version": int,
            "base_sha256": str,
            "round_id": str,
            "num_samples": int,
            "metric": str,
            "before": float,
            "after": float,
            "clip_norm": float,
            "tensors": bytes,
            "status": str,  # received | used | rejected
        },
        pk=("device_id", "seq"),
        defaults={"status": "received"},
    )
    db.table("deltas").create_index(["base_name", "base_version"])


@migrations()
def m003_registry(db: Database) -> None:
    db.table("models").create(
        {"name": str, "created_at": int, "created_by": str, "description": str}, pk="name"
    )
    db.table("versions").create(
        {
            "name": str,
            "version": int,
            "sha256": str,  # the package artifact
            "length": int,
            "release_counter": int,
            "status": str,  # pending_release | released | withdrawn
            "manifest": str,
            "parent_version": int,
            "made_by": str,  # upload | round:<id> | ...
            "lineage": str,  # JSON: contributing devices, deltas, method, metrics
            "created_at": int,
            "created_by": str,
        },
        pk=("name", "version"),
        foreign_keys=[("name", "models", "name")],
    )
    db.table("versions").create_index(["sha256"])
    db.table("versions").create_index(["release_counter"], unique=True)
    db.table("artifacts").create(
        {"sha256": str, "length": int, "kind": str, "created_at": int}, pk="sha256"
    )
    db.table("release_lists").create(
        {"version": int, "document": str, "signed": int, "created_at": int, "created_by": str},
        pk="version",
    )
    db.table("roots").create({"version": int, "document": str, "created_at": int}, pk="version")
    db.table("assignments").create(
        {
            "device_id": str,
            "version": int,
            "model_name": str,
            "model_version": int,
            "document": str,
            "created_at": int,
        },
        pk=("device_id", "version"),
    )


@migrations()
def m004_operations(db: Database) -> None:
    db.table("api_tokens").create(
        {
            "id": str,
            "hash": str,
            "role": str,  # viewer | operator | admin
            "name": str,
            "created_at": int,
            "created_by": str,
            "revoked": int,
        },
        pk="id",
        not_null={"hash", "role"},
        defaults={"revoked": 0},
    )
    db.table("api_tokens").create_index(["hash"], unique=True)
    db.table("audit").create(
        {
            "id": int,
            "at": int,
            "actor": str,  # device:<id> | token:<id> | system | cli
            "action": str,
            "target": str,
            "outcome": str,  # ok | rejected
            "reason": str,
            "detail": str,
        },
        pk="id",
        not_null={"at", "actor", "action", "outcome"},
    )
    db.table("audit").create_index(["at"])
    db.table("audit").create_index(["actor"])
    db.table("audit").create_index(["action"])
    db.table("meta").create({"key": str, "value": int}, pk="key")


@migrations()
def m005_desired_tracking(db: Database) -> None:
    # hub.fleet.reconciler: re-sign an assignment past half its lifetime, and remember when a
    # device was found stuck (audited once per episode).
    desired = db.table("desired")
    desired.add_column("assignment_expires", int)
    desired.add_column("stuck_at", int)


@migrations()
def m006_device_refusals(db: Database) -> None:
    # hub.ingest: the last install or desired state a device refused, and why; why a
    # pending device waits (no token, an expired one...), as the device list shows it.
    devices = db.table("devices")
    devices.add_column("refusal", str)
    devices.add_column("refusal_at", int)
    devices.add_column("pending_reason", str)


@migrations()
def m007_broker_credentials(db: Database) -> None:
    # hub.fleet.broker_accounts: the verifier of each device's own broker password, from
    # its hello; provisioned on the broker while the device is active.
    db.table("broker_credentials").create(
        {"device_id": str, "verifier": str, "updated_at": int},
        pk="device_id",
        not_null={"verifier", "updated_at"},
    )


@migrations()
def m008_uplink_time_indexes(db: Database) -> None:
    # hub.api.reports: reads of what devices sent, newest first and by time range
    for table in ("telemetry", "states", "data_windows", "deltas"):
        db.table(table).create_index(["received_at"])
