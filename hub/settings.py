"""The hub's settings: one frozen dataclass, loaded once at the edge (CLI) and passed in.

Units are in the names. Defaults suit the one-machine tier; ``edgefleet hub serve``
(:mod:`hub.cli.serve`) sets the fields it exposes from flags or ``EDGEFLEET_HUB_*``
environment variables.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

from protocol.frame import Limits
from protocol.replay import Freshness


@dataclass(frozen=True)
class FlowLimits:
    """Model delivery rate limits (units in the names); see :mod:`hub.fleet.delivery`."""

    chunks_per_s: float = 20.0  # per device, sustained
    chunk_burst: int = 40  # per device, back to back
    bytes_per_s: int = 32 * 1024 * 1024  # all devices together; also the burst
    audits_per_device_per_min: int = 6


@dataclass(frozen=True)
class HubSettings:
    data_dir: Path
    broker_url: str = "mqtt://127.0.0.1:1883"
    topic_prefix: str = "ef"
    http_host: str = "127.0.0.1"
    http_port: int = 8080
    client_id: str = ""  # MQTT client id; "" derives one per data directory and process
    database: str = ""  # the store: a postgresql:// URL; "" is SQLite in data_dir/hub.db

    # ingest
    limits: Limits = field(default_factory=Limits)
    freshness: Freshness = field(default_factory=Freshness)
    ingest_batch_max: int = 500  # frames per transaction
    ingest_batch_wait_ms: int = 20  # how long a batch may wait to fill
    ingest_queue_max: int = 50_000  # frames buffered before the hub sheds load
    audit_rejections_per_device_per_min: int = 30  # garbage rows per sender; then summarised
    audit_rejections_keep: int = 100_000  # newest rejected (garbage) rows kept in the audit log
    audit_alerts_per_device_per_min: int = 120  # attack rows per sender and kind; then summarised
    audit_alerts_keep: int = 1_000_000  # newest alert rows kept (never pruned by garbage)
    cloned_takeovers: int = 5  # session takeovers (last wills) within the window: cloned_device
    cloned_window_s: float = 60.0
    max_pending_devices: int = 1000  # beyond this, hellos without a valid token are refused

    # fleet state
    offline_after_s: float = 120.0  # no frame for this long: offline
    offline_check_interval_s: float = 5.0  # how often the scheduler looks for offline devices
    stuck_after_s: float = 900.0  # desired != reported for this long: stuck
    reconcile_interval_s: float = 15.0
    nudge_every_s: float = 60.0  # re-publish desired / nudge a lagging device at most this often
    rollout_tick_s: float = 5.0  # how often the scheduler plans the staged rollouts

    # trust
    keyring_check_interval_s: float = 2.0  # how often the running hub looks for a rotation
    heartbeat_interval_s: float = 60.0
    heartbeat_expiry_s: float = 600.0
    assignment_expiry_s: float = 7 * 24 * 3600.0
    release_expiry_s: float = 90 * 24 * 3600.0

    # fleet drift (hub.monitor, docs/drift.md)
    drift_score_interval_s: float = 60.0  # how often closed buckets are scored and alerts planned
    drift_maintain_interval_s: float = 600.0  # roll-ups to 1 h and 1 day, and retention
    drift_grace_s: float = 120.0  # a bucket is scored this long after its end (late windows)

    # delivery
    chunk_bytes: int = 96 * 1024  # fits a 256 KiB frame with room for the header
    delivery: FlowLimits = field(default_factory=FlowLimits)

    # federated rounds (hub.federated.rounds)
    round_tick_interval_s: float = 5.0  # deadlines, and resuming rounds after a restart

    def mqtt_client_id(self, pid: int) -> str:
        """``client_id``, or one of its own for this data directory and process:
        ``ef-hub-<8 hex of the directory's path>-<pid>`` (23 characters at most for pids
        below ten million, what MQTT 3.1.1 brokers must accept). Two hubs never share a
        client id, so neither takes the other's session over; replicas share the uplink
        through ``$share/<group>/`` subscriptions, not through one client id."""
        if self.client_id:
            return self.client_id
        where = hashlib.sha256(str(self.data_dir.resolve()).encode()).hexdigest()[:8]
        return f"ef-hub-{where}-{pid}"

    @property
    def db_path(self) -> Path:
        """The SQLite store's file (the default store)."""
        return self.data_dir / "hub.db"

    @property
    def store_location(self) -> str | Path:
        """Where the store is, for :func:`hub.store.dialects.open_store`: ``database`` if
        set (PostgreSQL), else :attr:`db_path`."""
        return self.database or self.db_path

    def store_exists(self) -> bool:
        """Whether a store is there to open: a database URL is assumed to be; SQLite's
        file must exist (commands other than ``serve`` never start a fresh one by typo)."""
        return bool(self.database) or self.db_path.exists()

    @property
    def keys_dir(self) -> Path:
        return self.data_dir / "keys"

    @property
    def artifacts_dir(self) -> Path:
        return self.data_dir / "artifacts"
