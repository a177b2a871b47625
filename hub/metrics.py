"""The hub's Prometheus metrics: one registry, module-level collectors, shared by hub modules.

Decision: every hub collector is registered on :data:`REGISTRY`, a ``CollectorRegistry`` of
the hub's own, not on prometheus_client's process-global default registry. The REST layer
exposes it with ``prometheus_client.generate_latest(hub.metrics.REGISTRY)`` on ``/metrics``.
Why not the default registry: importing a hub module then never collides with (or leaks
into) whatever else a process registers there (an embedding application, the simulator
running many components in one process), and the collectors still exist exactly once per
process because they are created at import time. Process metrics (CPU, memory, open files)
are added to the same registry so ``/metrics`` stays a single scrape.

Names carry the ``edgefleet_hub_`` prefix (Prometheus naming practice: one namespace per
application); rejections are counted as ``edgefleet_hub_rejected_total{reason}``, with
``reason`` the error's short code
(``protocol.errors.ProtocolError.reason``: ``malformed``, ``bad_signature``, ``replay``...).

Other hub modules add their collectors here, beside these, so one file lists everything
the hub exports. Tests read values with ``REGISTRY.get_sample_value(name, labels)``.

What this module does not do: serve HTTP or push anywhere.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector

REGISTRY = CollectorRegistry(auto_describe=True)
ProcessCollector(registry=REGISTRY)

# ---------------------------------------------------------------------- ingest

REJECTED = Counter(
    "edgefleet_hub_rejected",
    "Uplink frames the hub refused, by reason (audited or only counted when rate-limited).",
    ["reason"],
    registry=REGISTRY,
)
INGESTED = Counter(
    "edgefleet_hub_ingested",
    "Uplink frames verified and committed to the store, by kind.",
    ["kind"],
    registry=REGISTRY,
)
DUPLICATES = Counter(
    "edgefleet_hub_duplicates",
    "Uplink frames already committed (QoS 1 redelivery or agent resend): re-acknowledged.",
    registry=REGISTRY,
)
SHED = Counter(
    "edgefleet_hub_ingest_shed",
    "Inbound frames dropped because the ingest queue was full (agents resend: not acked).",
    registry=REGISTRY,
)
AUDIT_SUPPRESSED = Counter(
    "edgefleet_hub_audit_suppressed",
    "Garbage rejections past the sender's audit budget: only summarised, per reason.",
    registry=REGISTRY,
)
SECURITY_EVENTS = Counter(
    "edgefleet_hub_security_events",
    "Rejections that mean an attack (another key for an active device, a revoked key, "
    "another device's signature, a hub-signed frame sent back, a reused seq), by action; "
    "never rate-limited.",
    ["action"],
    registry=REGISTRY,
)
SESSION_TAKEOVERS = Counter(
    "edgefleet_hub_session_takeovers",
    "Last wills of devices that came back within seconds: one session replaced another "
    "with the same client id.",
    registry=REGISTRY,
)
CLONED_DEVICES = Counter(
    "edgefleet_hub_cloned_device_alerts",
    "Times a device was flagged cloned_device (repeated session takeovers).",
    registry=REGISTRY,
)
CLOCK_SKEW = Histogram(
    "edgefleet_hub_clock_skew_seconds",
    "|received_at - sent_at| of accepted frames; direction=behind includes outbox delay.",
    ["direction"],
    buckets=(0.1, 0.5, 1, 5, 30, 60, 300, 3600, 6 * 3600, 86400, 7 * 86400),
    registry=REGISTRY,
)
BATCH_SECONDS = Histogram(
    "edgefleet_hub_ingest_batch_seconds",
    "Time to judge, write and commit one ingest batch.",
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
    registry=REGISTRY,
)
BATCH_FAILURES = Counter(
    "edgefleet_hub_ingest_batch_failures",
    "Ingest batches whose transaction failed and rolled back (nothing acked; agents resend).",
    registry=REGISTRY,
)
QUEUE_DEPTH = Gauge(
    "edgefleet_hub_ingest_queue_depth",
    "Frames waiting in the ingest queue at the start of the last batch.",
    registry=REGISTRY,
)

# ---------------------------------------------------------------------- broker

BROKER_REFUSED = Counter(
    "edgefleet_hub_broker_refused",
    "Embedded broker: connections and topic operations refused by the access policy, by reason.",
    ["reason"],
    registry=REGISTRY,
)
BROKER_TAKEOVERS = Counter(
    "edgefleet_hub_broker_takeovers",
    "Embedded broker: logins that took over a live session with the same client id.",
    registry=REGISTRY,
)
LEADER = Gauge(
    "edgefleet_hub_leader",
    "1 while this hub runs the scheduled jobs: a replica holding the leader lease, or a hub "
    "without --replica-group (it always does); 0 for a follower replica.",
    registry=REGISTRY,
)
BROKER_ACCOUNTS = Gauge(
    "edgefleet_hub_broker_accounts",
    "Broker accounts the hub provisioned at its last sync (active devices plus the hub).",
    registry=REGISTRY,
)

# ---------------------------------------------------------------------- downlink

DOWNLINK_SENT = Counter(
    "edgefleet_hub_downlink_sent",
    "Downlink frames handed to the broker, by kind.",
    ["kind"],
    registry=REGISTRY,
)
DOWNLINK_DROPPED = Counter(
    "edgefleet_hub_downlink_dropped",
    "Downlink frames not published, by reason (revoked, unknown_device, not_connected).",
    ["reason"],
    registry=REGISTRY,
)


# ---------------------------------------------------------------------- retained topics

RETAINED_RESTORED = Counter(
    "edgefleet_hub_retained_restored",
    "Retained hub topics found holding a message the hub did not publish, by topic kind and "
    "what the hub did (restored its own, or cleared a topic it owns nothing on).",
    ["kind", "done"],
    registry=REGISTRY,
)


# ---------------------------------------------------------------------- rollouts

ROLLOUT_PLAN_SECONDS = Histogram(
    "edgefleet_rollout_plan_seconds",
    "One rollout's tick: reading its inputs, planning and committing the plan.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
    registry=REGISTRY,
)
ROLLOUTS_HALTED = Counter(
    "edgefleet_rollouts_halted",
    "Rollouts halted by a failing gate, by the gate's metric.",
    ["metric"],
    registry=REGISTRY,
)


def sample(name: str, labels: dict[str, str] | None = None) -> float:
    """The current value of one sample in :data:`REGISTRY` (0.0 when it has none yet)."""
    value = REGISTRY.get_sample_value(name, labels or {})
    return 0.0 if value is None else value


# ---------------------------------------------------------------------- federated rounds

DELTAS_SCREENED = Counter(
    "edgefleet_hub_deltas_screened",
    "Deltas screened at ingest, by model, verdict (accepted, flagged, refused) and reason.",
    ["model", "status", "reason"],
    registry=REGISTRY,
)
ROUNDS_ENDED = Counter(
    "edgefleet_hub_rounds",
    "Rounds that reached a state, by model and state (open, closing, aggregated, accepted...).",
    ["model", "state"],
    registry=REGISTRY,
)
AGGREGATION_SECONDS = Histogram(
    "edgefleet_hub_aggregation_seconds",
    "Time to aggregate one round or buffer flush into a candidate, by strategy.",
    ["strategy"],
    buckets=(0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300),
    registry=REGISTRY,
)
CANDIDATE_GAIN = Gauge(
    "edgefleet_hub_candidate_gain",
    "The last candidate's gain over its parent on the hub's validation set (accuracy "
    "points as a fraction, or relative mse), by model.",
    ["model"],
    registry=REGISTRY,
)

# ---------------------------------------------------------------------- drift (hub.monitor)

DRIFT_SKIPPED = Counter(
    "edgefleet_drift_skipped",
    "Data windows stored but left out of drift, by reason (no_model, unusable_reference, "
    "incompatible_window, not_found, internal).",
    ["reason"],
    registry=REGISTRY,
)
DRIFT_SCORED = Counter(
    "edgefleet_drift_buckets_scored",
    "Closed drift buckets assessed by the scoring job (re-scores after late windows too).",
    registry=REGISTRY,
)
