"""The REST API's request and response bodies: pydantic models, split by direction.

``*Create``/``*Update``/``*In`` are what a caller sends, everything else is what the hub
answers; listings are pages (``{items, total}``). Every string a caller sends is bounded
and, where it names something, is a name the hub could never mistake for a path or a
query: device ids and model names ``^[a-z0-9][a-z0-9._-]{0,63}$``, tag keys the same
without dots (a dot would read as a JSON path step in the store's tag filter). Times are
integer milliseconds since the Unix epoch, as in the store.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from hub.health import Health as DeviceHealth

NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,63}$"
"""Device ids and model names (protocol.schema.NAME_PATTERN, anchored)."""
TAG_KEY_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,63}$"
TAG_VALUE_PATTERN = r"^[^\x00-\x1f\x7f]{0,128}$"
SHA256_PATTERN = r"^[0-9a-f]{64}$"
TOKEN_NAME_PATTERN = r"^[A-Za-z0-9_ .@:/+-]{0,64}$"  # noqa: S105 - not a secret
BASE64_PATTERN = r"^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$"
MAX_TAGS = 32
MAX_VERSION = 2**31 - 1
MAX_MS = 2**53
"""Largest time or count a query accepts: beyond what SQLite's integers could bind."""

Name = Annotated[str, StringConstraints(pattern=NAME_PATTERN)]
TagKey = Annotated[str, StringConstraints(pattern=TAG_KEY_PATTERN)]
TagValue = Annotated[str, StringConstraints(pattern=TAG_VALUE_PATTERN)]
Version = Annotated[int, Field(ge=1, le=MAX_VERSION)]
DeviceStatus = Literal["pending", "active", "revoked"]
_ONLY_TAG_KEYS: dict[str, Any] = {"additionalProperties": False}
"""pydantic writes key patterns as ``patternProperties``, which alone lets other keys
through in JSON Schema; validation refuses them, so the schema must say so too."""
Role = Literal["viewer", "operator", "admin"]


class _In(BaseModel):
    """A request body: unknown fields are refused, not ignored."""

    model_config = ConfigDict(extra="forbid")


class ValidationIssue(BaseModel):
    loc: list[str | int]
    msg: str
    type: str


class Problem(BaseModel):
    """An error, as RFC 9457 ``application/problem+json`` plus edgefleet's ``reason`` code."""

    type: str = Field(
        description="A URI naming the kind of problem: urn:edgefleet:problem:<reason>"
    )
    title: str = Field(description="The HTTP status phrase")
    status: int
    detail: str
    reason: str = Field(description="Short code, as in the audit log (not_found, forbidden...)")
    errors: list[ValidationIssue] | None = Field(
        default=None, description="Validation errors (422 only), at most 20"
    )


# ---------------------------------------------------------------------- system


class Health(BaseModel):
    status: Literal["ok"]
    store: bool = Field(description="The store answered a query")
    role: Literal["single", "leader", "follower"] = Field(
        "single",
        description="single: a hub without replicas; leader: the replica running the "
        "scheduled jobs; follower: a replica serving ingest and REST only",
    )


# ---------------------------------------------------------------------- devices


class ActiveModel(BaseModel):
    name: str
    version: int
    sha256: str | None


class Device(BaseModel):
    id: str
    status: str = Field(description="pending | active | revoked")
    tags: dict[str, str]
    agent_version: str | None
    enrolled_at: int | None
    first_seen: int
    last_seen: int | None
    online: bool
    active: ActiveModel | None = Field(description="The model version the device reports")
    health: DeviceHealth = Field(
        description="Derived from the device's reported flags and what the hub finds "
        "(stuck outranks what the device says); see docs/architecture.md"
    )
    stale: bool
    reported_at: int | None
    refusal: str | None = Field(
        description="The last install or desired state the device refused, and why "
        "(refused: incompatible: ..., failed: slow_retrieval: ...)"
    )
    refusal_at: int | None
    pending_reason: str | None = Field(
        description="Why a pending device is not enrolled: no_token, token_expired, ..."
    )


class DevicePage(BaseModel):
    items: list[Device]
    total: int = Field(description="Devices matching the filters, over all pages")


class DeviceConfigIn(_In):
    """Settings sent with the desired state (protocol.messages.DeviceConfig); an omitted
    setting takes the device default."""

    telemetry_interval_s: float | None = Field(default=None, ge=0.1, le=86400)
    window_s: float | None = Field(default=None, ge=0.1, le=86400)
    retrain: bool | None = None
    retrain_min_samples: int | None = Field(default=None, ge=1, le=10**9)
    delta_clip_norm: float | None = Field(default=None, ge=0, le=1e9)
    round_id: Name | None = None
    shadow_sample: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description="Share of predict requests a shadow model (a rollout's shadow stage) "
        "also runs on (default 0.2)",
    )


class DesiredIn(_In):
    model: Name
    version: Version
    config: DeviceConfigIn | None = Field(
        default=None,
        description="Replaces the device's configuration; omitted: keep the current one",
    )


class Desired(BaseModel):
    device_id: str
    model: str
    version: int
    config: dict[str, Any] | None
    assignment_version: int | None
    set_at: int | None
    set_by: str | None
    published_at: int | None
    shadow_version: int | None = Field(
        default=None,
        description="The version of the model the device runs beside the served one, "
        "without serving it (a rollout's shadow stage); null: none",
    )


class DeviceDetail(Device):
    desired: Desired | None
    reported: dict[str, Any] | None = Field(description="The device's last state report")


class DeviceUpdate(_In):
    tags: dict[TagKey, TagValue | None] = Field(
        max_length=MAX_TAGS,
        description="JSON merge patch of the tags: a value sets the tag, null removes it",
        json_schema_extra=_ONLY_TAG_KEYS,
    )


# ---------------------------------------------------------------------- tokens


Lifetime = Annotated[int, Field(ge=60, le=365 * 86400, description="Lifetime in seconds")]


class SingleTokenCreate(_In):
    """One device may enrol with it; without ``expires_in_s`` (or null) it never expires."""

    kind: Literal["single"]
    expires_in_s: Lifetime | None = None
    tags: dict[TagKey, TagValue] = Field(
        default_factory=dict,
        max_length=MAX_TAGS,
        description="Given to devices enrolled",
        json_schema_extra=_ONLY_TAG_KEYS,
    )


class FleetTokenCreate(_In):
    """Any number of devices may enrol with it until it expires, so it must expire."""

    kind: Literal["fleet"]
    expires_in_s: Lifetime
    tags: dict[TagKey, TagValue] = Field(
        default_factory=dict,
        max_length=MAX_TAGS,
        description="Given to devices enrolled",
        json_schema_extra=_ONLY_TAG_KEYS,
    )


EnrollmentTokenCreate = Annotated[SingleTokenCreate | FleetTokenCreate, Field(discriminator="kind")]
"""Split by kind, so the schema says what the hub checks: a fleet token without a
lifetime (or with null) is refused by the schema itself, not only by the hub."""


class EnrollmentToken(BaseModel):
    id: str
    kind: str
    created_at: int
    created_by: str | None
    expires_at: int | None
    uses: int
    revoked: bool
    tags: dict[str, str]


class EnrollmentTokenCreated(EnrollmentToken):
    token: str = Field(description="The secret: shown this once, stored only hashed")


class EnrollmentTokenPage(BaseModel):
    items: list[EnrollmentToken]
    total: int


class ApiTokenCreate(_In):
    role: Role
    name: str = Field(default="", pattern=TOKEN_NAME_PATTERN)


class ApiToken(BaseModel):
    id: str
    role: str
    name: str
    created_at: int
    created_by: str | None
    revoked: bool


class ApiTokenCreated(ApiToken):
    token: str = Field(description="The bearer token: shown this once, stored only hashed")


class ApiTokenPage(BaseModel):
    items: list[ApiToken]
    total: int


# ---------------------------------------------------------------------- models


class ModelSummary(BaseModel):
    name: str
    created_at: int
    created_by: str
    versions: int
    latest_version: int | None
    latest_released: int | None


class ModelPage(BaseModel):
    items: list[ModelSummary]
    total: int


class ModelVersion(BaseModel):
    name: str
    version: int
    sha256: str
    length: int
    release_counter: int
    status: str = Field(description="pending_release | released | withdrawn")
    parent_version: int | None
    made_by: str
    created_at: int
    created_by: str
    lineage: dict[str, Any]
    manifest: dict[str, Any]


class VersionPage(BaseModel):
    items: list[ModelVersion]
    total: int


class Registered(BaseModel):
    name: str
    version: int
    release_counter: int
    sha256: str
    length: int
    release_version: int
    release_pending: bool = Field(description="The release key is offline: sign the pending list")
    head_reason: str | None = Field(description="Why local retraining is off, if it is")
    metrics: dict[str, float]
    created: bool = Field(
        description="False: this upload was registered before; this is that version (200)"
    )


class SignatureIn(_In):
    keyid: str = Field(pattern=SHA256_PATTERN)
    sig: str = Field(max_length=1024)


class ReleaseListIn(_In):
    """A DSSE envelope holding a release list, signed offline (``edgefleet keys sign-release``).

    The schema states the envelope's form (base64 payload, the release list's payload
    type, at least one signature); what the payload says and whether the signatures
    verify, only the hub can judge (400, 403, 409)."""

    payload: str = Field(min_length=4, max_length=128 * 1024, pattern=BASE64_PATTERN)
    # DSSE spells it so; protocol.documents.document_type("release") (a test keeps them equal)
    payloadType: Literal["application/vnd.edgefleet.release+json; v=1"]
    signatures: list[SignatureIn] = Field(min_length=1, max_length=16)


class ReleaseListDocument(BaseModel):
    """A DSSE envelope holding a release list, as the hub holds it (the pending one is
    unsigned: ``signatures`` is empty until ``edgefleet keys sign-release``)."""

    payload: str
    payloadType: str  # DSSE spells it so
    signatures: list[dict[str, str]]


class ReleasePublished(BaseModel):
    version: int
    expires: int
    entries: int


# ---------------------------------------------------------------------- audit


class AuditEntry(BaseModel):
    id: int
    at: int
    actor: str
    action: str
    target: str | None
    outcome: str = Field(description="ok | rejected")
    reason: str | None
    detail: dict[str, Any]


class AuditPage(BaseModel):
    items: list[AuditEntry]
    total: int
