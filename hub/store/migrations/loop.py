"""The loop's tables (m009..m013): federated rounds, drift, staged rollouts and shadows."""

from __future__ import annotations

from sqlite_utils import Database

from hub.store.migrations.book import migrations


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
