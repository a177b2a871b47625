"""The hub's SQLite schema, as ordered migrations (sqlite-utils ``Migrations``).

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

from sqlite_utils import Database, Migrations

migrations = Migrations("edgefleet.hub")


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


@migrations()
def m009_rounds(db: Database) -> None:
    # hub.federated: rounds, the screening verdict of every delta (beside its row in
    # deltas), each model's federated-learning policy, buffer and validation set
    db.table("rounds").create(
        {
            "round_id": str,
            "model": str,
            "base_version": int,
            "state": str,  # hub.rounds.lifecycle.RoundState
            "trigger": str,  # schedule | drift | operator
            "opened_ms": int,
            "deadline_ms": int,
            "closed_ms": int,
            "ended_ms": int,
            "min_deltas": int,
            "target_deltas": int,
            "duration_ms": int,
            "strategy": str,  # a hub.rounds.aggregate.PRESETS name, fixed at open
            "candidate_version": int,
            "reason": str,
            "created_by": str,
            "judgement": str,  # JSON: candidate and parent metrics, gain, passed
        },
        pk="round_id",
        not_null={"model", "base_version", "state", "opened_ms", "deadline_ms"},
    )
    db.table("rounds").create_index(["model", "state"])
    db.table("delta_verdicts").create(
        {
            "device_id": str,
            "seq": int,
            "model": str,
            "base_version": int,
            "slot": str,  # round id, or buffer:<model>
            "status": str,  # accepted | flagged | refused | used | unused
            "reason": str,
            "detail": str,
            "digest": str,
            "norm": float,
            "staleness": int,
            "num_samples": int,
            "received_at": int,
            "flush": int,  # buffered: the flush that read it
        },
        pk=("device_id", "seq"),
    )
    db.table("delta_verdicts").create_index(["model", "digest"])
    db.table("delta_verdicts").create_index(["slot", "status"])
    db.table("fl_policies").create(
        {"model": str, "policy": str, "updated_ms": int, "updated_by": str}, pk="model"
    )
    db.table("fl_buffers").create(
        {"model": str, "current_version": int, "flushes": int}, pk="model"
    )
    db.table("validation_sets").create(
        {"model": str, "data": bytes, "rows": int, "created_ms": int, "created_by": str},
        pk="model",
    )
    db.table("devices").add_column("strikes", int, not_null_default=0)


@migrations()
def m010_drift(db: Database) -> None:
    # hub.monitor: drift buckets merged at ingest, scored buckets, alerts (docs/drift.md)
    aggregate = {  # hub.drift.aggregate.to_columns
        "scope": str,
        "counts": bytes,
        "moments": bytes,
        "performance": bytes,
        "inferences": int,
        "errors": int,
        "windows": int,
        "parts": str,
    }
    db.table("drift_scopes").create(
        {
            "scope": str,
            "model_name": str,
            "model_version": int,
            "reference_accuracy": float,
            "created_at": int,
        },
        pk="scope",
    )
    db.table("drift_device_buckets").create(
        {
            "device_id": str,
            "width_ms": int,
            "start_ms": int,
            "model_name": str,
            "model_version": int,
            "tags": str,
            "updated_at": int,
            **aggregate,
        },
        pk=("scope", "device_id", "width_ms", "start_ms"),
    )
    db.table("drift_device_buckets").create_index(["scope", "width_ms", "start_ms"])
    db.table("drift_device_buckets").create_index(["device_id", "width_ms", "start_ms"])
    db.table("drift_cohort_buckets").create(
        {"cohort": str, "width_ms": int, "start_ms": int, "view": str, "updated_at": int}
        | aggregate,
        pk=("scope", "cohort", "width_ms", "start_ms"),
    )
    db.table("drift_assessments").create(
        {
            "scope": str,
            "width_ms": int,
            "start_ms": int,
            "body": str,
            "scored_at": int,
            "dirty": int,
        },
        pk=("scope", "width_ms", "start_ms"),
        defaults={"dirty": 0},
    )
    db.table("drift_alerts").create(
        {
            "id": str,
            "scope": str,
            "model_name": str,
            "kind": str,
            "state": str,  # open | acknowledged | resolved
            "severity": str,  # warning | alert
            "body": str,  # hub.drift.alerts.Alert, canonical JSON
            "opened_at": int,
            "updated_at": int,
            "resolved_at": int,
            "round_requested": int,
        },
        pk="id",
        defaults={"round_requested": 0},
    )
    db.table("drift_alerts").create_index(["scope", "kind", "state"])
    db.table("drift_policies").create(
        {"model_name": str, "body": str, "updated_at": int}, pk="model_name"
    )


@migrations()
def m011_rollouts(db: Database) -> None:
    # hub.fleet.rollouts: staged rollouts (docs/rollouts.md, "Integration plan"); the
    # planner's state per rollout and per device, the latest verdict per gate, a timeline.
    db.table("rollouts").create(
        {
            "id": str,  # r-<n>
            "model_name": str,
            "model_version": int,
            "spec": str,  # RolloutSpec.to_json(), canonical JSON; never changes
            "phase": str,
            "stage": int,
            "stage_started_ms": int,
            "bake_started_ms": int,
            "paused_from": str,
            "override_stage": int,
            "reason": str,
            "changed_ms": int,
            "created_at": int,
            "created_by": str,
            "superseded_by": str,  # a newer rollout of the model (completed ones only)
        },
        pk="id",
        not_null={"model_name", "model_version", "spec", "phase", "created_at"},
    )
    db.table("rollouts").create_index(["model_name", "phase"])
    db.table("rollout_devices").create(
        {
            "rollout_id": str,
            "device_id": str,
            "state": str,
            "target_version": int,
            "previous_version": int,
            "stage": int,
            "attempts": int,
            "since_ms": int,
            "reason": str,
            "retryable": int,
            "back": int,
        },
        pk=("rollout_id", "device_id"),
    )
    db.table("rollout_devices").create_index(["rollout_id", "state"])
    db.table("rollout_devices").create_index(["device_id"])
    db.table("rollout_shadows").create(
        {"rollout_id": str, "device_id": str, "state": str, "since_ms": int},
        pk=("rollout_id", "device_id"),
    )
    db.table("rollout_verdicts").create(
        {
            "rollout_id": str,
            "stage": int,
            "metric": str,
            "at_ms": int,
            "outcome": str,
            "estimate": float,
            "lower": float,
            "upper": float,
            "tolerance": float,
            "effect": float,
            "alpha": float,
            "test": str,
            "canaries": int,
            "controls": int,
            "reason": str,
        },
        pk=("rollout_id", "stage", "metric"),
    )
    db.table("rollout_timeline").create(
        {"id": int, "rollout_id": str, "at_ms": int, "actor": str, "line": str}, pk="id"
    )
    db.table("rollout_timeline").create_index(["rollout_id", "at_ms"])


@migrations()
def m013_shadow_assignments(db: Database) -> None:
    # hub.fleet.desired: the shadow assignment a device's desired state carries beside the
    # served one (a rollout's shadow stage), by its version in ``assignments``; NULL: none.
    db.table("desired").add_column("shadow_version", int)


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
