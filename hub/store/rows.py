"""The typed rows that cross the store's boundary, in both directions (pure values).

Frozen dataclasses rather than TypedDicts: a row read from the store is handed between
threads and cached (ingest keeps device keys), so it must not change under its reader;
a dataclass's constructor is also the contract a second dialect must meet field for
field, and mypy checks every access. ``slots`` keeps them as light as the dicts they
replace on the ingest path.

Conventions: times are integer milliseconds since the Unix epoch (``*_at``, ``*_ms``);
JSON documents the hub stores whole (signed documents, message bodies, manifests,
lineage, audit detail) cross as **canonical JSON text**, as they were signed or
canonicalised, so no dialect re-encodes them; device and token tags, which the hub reads
key by key, cross as mappings.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Generic, Literal, TypeVar

from hub.health import Health

DeviceStatus = Literal["pending", "active", "revoked"]
VersionStatus = Literal["pending_release", "released", "withdrawn"]
TokenKind = Literal["single", "fleet"]
Counter = Literal["down_seq", "heartbeat_version", "release_published", "devices_epoch"]
"""The hub's persisted counters: downlink publishers started (each takes its seq slot
from it: hub.transport.downlink), the last heartbeat version, the signed release list
version last handed to the broker, and the devices epoch (bumped on approve, revoke,
preauthorize: ingest drops its key cache)."""

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    """One page of a listing and how many items match in all."""

    items: list[T]
    total: int


# ---------------------------------------------------------------------- fleet


@dataclass(frozen=True, slots=True)
class Device:
    """A device: identity, status, and the reported half of its twin."""

    id: str
    public_key: str  # Ed25519, hex
    status: DeviceStatus
    first_seen: int
    tags: Mapping[str, str] = field(default_factory=dict)
    agent_version: str | None = None
    enrolled_at: int | None = None
    enrolled_by: str | None = None
    last_seen: int | None = None
    online: bool = False
    active_name: str | None = None
    active_version: int | None = None
    active_sha256: str | None = None
    reported: str | None = None  # the last state report's fields, canonical JSON
    reported_at: int | None = None
    health: Health = Health.UNKNOWN
    stale: bool = False
    refusal: str | None = None
    """The last install or desired state the device refused and why, as it reported it
    (``refused: incompatible: its inputs differ...``, ``failed: slow_retrieval: ...``)."""
    refusal_at: int | None = None
    pending_reason: str | None = None
    """Why a pending device is not enrolled: ``no_token``, ``token_expired``,
    ``token_unknown``, ``token_revoked``, ``token_used`` (None once active)."""


@dataclass(frozen=True, slots=True)
class DeviceIdentity:
    """What ingest checks a frame against: the pinned key and the replay window."""

    id: str
    status: DeviceStatus
    public_key: str
    up_window: bytes | None  # protocol.replay.SeqWindow.to_bytes(); None before the first


@dataclass(frozen=True, slots=True)
class HelloUpdate:
    """What a re-hello from an active device changes."""

    agent_version: str
    tags: Mapping[str, str]
    active_name: str | None = None  # None: the hello named no active model (unchanged)
    active_version: int | None = None
    active_sha256: str | None = None


@dataclass(frozen=True, slots=True)
class ReportedTwin:
    """What a state report sets: the active model and the report itself."""

    active_name: str | None
    active_version: int | None
    active_sha256: str | None
    reported: str  # canonical JSON of the report's fields
    reported_at: int


@dataclass(frozen=True, slots=True)
class UplinkSeen:
    """Per device, after an ingest batch: its replay window, when it was last heard,
    and whether it is online (a last will says it is not)."""

    device_id: str
    up_window: bytes
    last_seen: int
    online: bool


@dataclass(frozen=True, slots=True)
class Desired:
    """The desired half of a device's twin."""

    device_id: str
    model_name: str
    model_version: int
    assignment_version: int
    config: str  # DeviceConfig, canonical JSON
    set_at: int
    set_by: str
    assignment_expires: int | None  # None: stored before assignments expired (re-sign now)
    published_at: int | None = None
    nudged_at: int | None = None
    stuck_at: int | None = None  # when the reconciler found it stuck (one audit per episode)
    shadow_version: int | None = None  # the shadow assignment beside it (a rollout's shadow stage)


@dataclass(frozen=True, slots=True)
class Twin:
    """A desired state beside its device: what the reconciler compares."""

    desired: Desired
    device: Device


@dataclass(frozen=True, slots=True)
class AssignmentRecord:
    """A signed assignment as stored (``document``: the signed JSON)."""

    device_id: str
    version: int
    model_name: str
    model_version: int
    document: str
    created_at: int


@dataclass(frozen=True, slots=True)
class DeviceCount:
    """How many devices share a status, presence, reported model and health (the fleet
    gauges of ``/metrics``, counted when scraped)."""

    status: DeviceStatus
    online: bool
    model_name: str | None
    model_version: int | None
    health: Health
    count: int


@dataclass(frozen=True, slots=True)
class TagCount:
    """How many devices carry one tag value (the dashboard's cohorts)."""

    key: str
    value: str
    count: int


@dataclass(frozen=True, slots=True)
class InstallCount:
    """How many devices last reported this install outcome, and why (``reason`` is empty
    for an install that went through)."""

    status: str
    reason: str
    count: int


# ---------------------------------------------------------------------- registry


@dataclass(frozen=True, slots=True)
class ModelVersion:
    """One registered version of a model."""

    name: str
    version: int
    sha256: str  # the package artifact
    length: int
    release_counter: int
    status: VersionStatus
    manifest: str  # ModelManifest, canonical JSON
    parent_version: int | None
    made_by: str  # upload | round:<id> | ...
    lineage: str  # canonical JSON: contributing devices, deltas, method, metrics
    created_at: int
    created_by: str


@dataclass(frozen=True, slots=True)
class ModelSummary:
    """One model in a listing: how many versions, the newest, the newest released."""

    name: str
    created_at: int
    created_by: str
    versions: int
    latest_version: int | None
    latest_released: int | None


@dataclass(frozen=True, slots=True)
class ReleaseListRecord:
    """A release list, signed or waiting for the offline release key."""

    version: int
    document: str  # the signed (or unsigned) DSSE envelope, canonical JSON
    signed: bool
    created_at: int
    created_by: str


# ---------------------------------------------------------------------- uplink


@dataclass(frozen=True, slots=True)
class UplinkRecord:
    """What every stored uplink frame has; one subclass per kind, keyed (device_id, seq)."""

    device_id: str
    seq: int
    sent_at: int
    received_at: int


@dataclass(frozen=True, slots=True)
class TelemetryRecord(UplinkRecord):
    body: str


@dataclass(frozen=True, slots=True)
class StateRecord(UplinkRecord):
    body: str


@dataclass(frozen=True, slots=True)
class DeviceAckRecord(UplinkRecord):
    body: str


@dataclass(frozen=True, slots=True)
class DataWindowRecord(UplinkRecord):
    window_start: int
    window_end: int
    model_name: str | None
    model_version: int | None
    body: str


@dataclass(frozen=True, slots=True)
class DeltaRecord(UplinkRecord):
    base_name: str
    base_version: int
    base_sha256: str
    round_id: str | None
    num_samples: int
    metric: str
    before: float
    after: float
    clip_norm: float
    tensors: bytes  # the tensor container as received; the aggregator decodes it
    status: Literal["received", "used", "rejected"] = "received"


@dataclass(frozen=True, slots=True)
class DeltaSummary:
    """A stored delta without its tensors (``tensors_bytes`` says how large they are)."""

    device_id: str
    seq: int
    sent_at: int
    received_at: int
    base_name: str
    base_version: int
    base_sha256: str
    round_id: str | None
    num_samples: int
    metric: str
    before: float
    after: float
    clip_norm: float
    status: str
    tensors_bytes: int


@dataclass(frozen=True, slots=True)
class UplinkQuery:
    """Which uplink records to read: every filter given must hold. ``model_name`` and
    ``model_version`` are the model the record is about (a delta's base, a window's or a
    telemetry report's model, a state report's active model); ``since_ms`` (inclusive)
    and ``until_ms`` (exclusive) bound the hub's ``received_at``."""

    device_id: str | None = None
    model_name: str | None = None
    model_version: int | None = None
    since_ms: int | None = None
    until_ms: int | None = None
    limit: int = 100
    offset: int = 0


# ---------------------------------------------------------------------- operations


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """One audit row to append: who did what to what, and how it ended."""

    at: int
    actor: str  # device:<id> | token:<id> | system | cli...
    action: str
    target: str = ""
    outcome: Literal["ok", "rejected", "alert"] = "ok"  # alert: a rejection proving an attack
    reason: str = ""
    detail: str = "{}"  # canonical JSON object


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """An audit row as stored, with its id (newest is highest)."""

    id: int
    at: int
    actor: str
    action: str
    target: str
    outcome: str
    reason: str
    detail: str


@dataclass(frozen=True, slots=True)
class ApiToken:
    """A REST API token, without its digest."""

    id: str
    role: str
    name: str
    created_at: int
    created_by: str
    revoked: bool = False


@dataclass(frozen=True, slots=True)
class UiSession:
    """A dashboard sign-in (:mod:`hub.ui.session`): the sha256 of its id, hex (the id
    itself lives only in the browser's cookie), the API token it signed in with, by id
    (the token's role is read again on every request), and when it began and ends."""

    digest: str
    token_id: str
    created_ms: int
    expires_ms: int


@dataclass(frozen=True, slots=True)
class ApiCredential:
    """A token and the digest a presented secret must match."""

    token: ApiToken
    digest: str


@dataclass(frozen=True, slots=True)
class EnrollmentToken:
    """A device enrollment token, without its digest."""

    id: str
    kind: TokenKind
    created_at: int
    created_by: str
    expires_at: int | None = None
    uses: int = 0
    revoked: bool = False
    tags: Mapping[str, str] = field(default_factory=dict)
