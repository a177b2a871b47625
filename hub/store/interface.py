"""The store's contract: what the hub may ask of its store, by concern (pure).

Modules above the store annotate with :class:`Store` and call its typed methods
(``store.devices.get(device_id)``, ``store.registry.next_version(name)``,
``store.audit.append(...)``); none of them names a table, writes SQL or sees a
connection. Every SQL statement lives in the store's concern modules, run by the dialect
that implements this contract: :mod:`hub.store.sqlite` as written, or
:mod:`hub.store.postgres`, translated; :func:`hub.store.dialects.open_store` chooses one
from the location's scheme, and nothing above the store changes (docs/architecture.md).

The contract is deliberately narrow: each method is one question or one change the hub
needs, so a dialect can answer it with its own statements (``INSERT OR IGNORE`` here,
``ON CONFLICT DO NOTHING`` there). Transactions:

- :meth:`Store.atomic`: everything inside commits together or not at all; nested, it is
  a savepoint (undoes only its own part on error).
- :meth:`Store.immediate`: like ``atomic``, but takes the write lock at its start, for
  read-then-write steps (next version number, next assignment) that another process on
  the same store (the CLI beside a running hub) may race; a deferred transaction would
  fail to upgrade its read lock instead of waiting.

A method outside any transaction is its own transaction. Methods raise
:class:`StoreError` for a write the store's constraints refuse and :class:`NotFound`
where their docstring says so; anything else from the database is a bug or a broken
disk and propagates.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import ClassVar, Protocol, TypeVar

from hub.errors import HubError
from hub.health import Health
from hub.store.drift_rows import Drift
from hub.store.rollout_rows import Rollouts
from hub.store.round_rows import Rounds
from hub.store.rows import (
    ApiCredential,
    ApiToken,
    AssignmentRecord,
    AuditEntry,
    AuditRecord,
    Counter,
    DeltaSummary,
    Desired,
    Device,
    DeviceCount,
    DeviceIdentity,
    DeviceStatus,
    EnrollmentToken,
    HelloUpdate,
    InstallCount,
    ModelSummary,
    ModelVersion,
    Page,
    ReleaseListRecord,
    ReportedTwin,
    StateRecord,
    TagCount,
    Twin,
    UplinkQuery,
    UplinkRecord,
    UplinkSeen,
    VersionStatus,
)

R = TypeVar("R", bound=UplinkRecord)


class StoreError(HubError):
    """A write the store's constraints refuse (duplicate key, unknown row)."""

    reason: ClassVar[str] = "store"
    status_hint: ClassVar[int] = 409


class StoreUnreachable(StoreError):
    """The store's database cannot be reached (a PostgreSQL server down, a bad URL)."""

    reason = "store_unreachable"
    status_hint = 503


class NotFound(StoreError):
    """No row with that key."""

    reason = "not_found"
    status_hint = 404


class Devices(Protocol):
    """Devices: identity, status, the reported twin, presence and health."""

    def add(self, device: Device) -> None:
        """Raises StoreError: a device with this id exists."""

    def put(self, device: Device) -> None:
        """Write every column of ``device`` (insert or replace; the replay window stays)."""

    def get(self, device_id: str) -> Device:
        """Raises NotFound: no such device."""
        ...

    def find(self, device_id: str) -> Device | None: ...

    def status(self, device_id: str) -> DeviceStatus | None:
        """The device's status, None if it is unknown (the downlink asks per frame)."""
        ...

    def identity(self, device_id: str) -> DeviceIdentity | None: ...

    def key_holder(self, public_key: str, *, besides: str) -> str | None:
        """Another device than ``besides`` (pending, active or revoked: a revoked device's
        key may be the stolen one) whose key is ``public_key``."""
        ...

    def page(
        self,
        *,
        status: DeviceStatus | None = None,
        tag: tuple[str, str] | None = None,
        model: tuple[str, int | None] | None = None,
        online: bool | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> Page[Device]:
        """Devices matching every filter given, ordered by id. ``tag``: (key, value);
        ``model``: the reported active model's name and, unless None, version."""
        ...

    def count(self, *, status: DeviceStatus | None = None) -> int: ...

    def census(self) -> list[DeviceCount]:
        """Devices grouped by status, online, reported model and health."""
        ...

    def tag_counts(self, *, limit: int = 50) -> list[TagCount]:
        """The ``limit`` most common tag values among devices, most common first."""
        ...

    def install_outcomes(self) -> list[InstallCount]:
        """Active devices grouped by the install outcome and reason they last reported
        (devices that reported none are left out)."""
        ...

    def approve(self, device_id: str, *, at_ms: int, by: str) -> None:
        """Make the device active, enrolled by ``by``. Raises NotFound."""

    def revoke(self, device_id: str) -> None:
        """Make the device revoked and offline. Raises NotFound."""

    def set_tags(self, device_id: str, tags: Mapping[str, str]) -> None:
        """Raises NotFound: no such device."""

    def note_hellos(self, hellos: Mapping[str, HelloUpdate]) -> None:
        """Apply re-hellos of active devices (ingest, inside its batch)."""

    def report_state(self, device_id: str, seq: int, twin: ReportedTwin) -> bool:
        """Apply a state report unless one with a higher seq is already stored (reports
        may arrive out of order); True if applied."""
        ...

    def note_uplink(self, seen: Sequence[UplinkSeen]) -> None:
        """Record accepted uplink per device; ``last_seen`` never moves backwards."""

    def mark_offline(self, *, seen_before_ms: int) -> list[str]:
        """Set online devices last seen before ``seen_before_ms`` offline; their ids, sorted."""
        ...

    def note_refusals(self, refusals: Mapping[str, tuple[str, int]]) -> None:
        """Record, per device id, the last refusal it reported: ``(reason, at_ms)``."""

    def set_pending_reason(self, device_id: str, reason: str) -> None:
        """Why a pending device is still pending (no-op for a device that is not)."""

    def set_health(self, device_id: str, health: Health) -> None:
        """The one writer of a device's health; the value comes from
        :func:`hub.health.derive`, never from the caller's own vocabulary."""


class DesiredStates(Protocol):
    """The desired half of each device's twin, and the assignments signed for it."""

    def get(self, device_id: str) -> Desired:
        """Raises NotFound: the device has no desired state."""
        ...

    def find(self, device_id: str) -> Desired | None: ...

    def put(self, desired: Desired) -> None:
        """Insert or replace the device's desired state."""

    def delete(self, device_id: str) -> bool:
        """True if there was one."""
        ...

    def reissued(self, device_id: str, *, assignment_version: int, expires_ms: int) -> None:
        """The device's assignment was re-signed (same entry, next version)."""

    def mark_published(self, device_id: str, *, at_ms: int) -> None: ...

    def mark_nudged(self, device_id: str, *, at_ms: int) -> None: ...

    def set_stuck(self, device_id: str, *, at_ms: int | None) -> None:
        """When the reconciler found the device stuck; None ends the episode."""

    def set_shadow(self, device_id: str, version: int | None) -> None:
        """The shadow assignment (by version) the desired state carries now, None for
        none; the desired state is to be published again."""

    def twins(self, device_id: str | None = None) -> list[Twin]:
        """Each desired state with its device, ordered by device id (one, if given)."""
        ...

    def unconverged(self) -> int:
        """Active devices whose reported model is not (yet) the desired one."""
        ...

    def stuck_among(self, device_ids: Collection[str]) -> set[str]:
        """Those of ``device_ids`` in a stuck episode."""
        ...

    def next_assignment_version(self, device_id: str) -> int:
        """One more than the highest assignment version signed for the device."""
        ...

    def add_assignment(self, assignment: AssignmentRecord) -> None:
        """Raises StoreError: that version exists."""

    def assignment(self, device_id: str, version: int) -> AssignmentRecord | None: ...

    def current_assignment(self, device_id: str) -> AssignmentRecord | None:
        """The assignment the device's desired state names, if the device is active."""
        ...


class Registry(Protocol):
    """Models, their versions and artifacts, and the release lists."""

    def next_version(self, name: str) -> int:
        """One more than the highest version of model ``name`` (1 for a new model)."""
        ...

    def next_release_counter(self) -> int:
        """One more than the highest release counter ever assigned."""
        ...

    def add_version(self, version: ModelVersion) -> None:
        """Store a new version: its model and package artifact are recorded first if
        new. Raises StoreError: that version or release counter exists."""

    def version(self, name: str, version: int) -> ModelVersion | None: ...

    def find_upload(self, name: str, upload_sha256: str) -> ModelVersion | None:
        """The version of ``name`` registered from the upload with this digest (its
        lineage's ``upload_sha256``), if any."""
        ...

    def versions(self, name: str) -> list[ModelVersion]:
        """Oldest first; empty for an unknown model."""
        ...

    def has_model(self, name: str) -> bool: ...

    def models(self) -> list[ModelSummary]:
        """Every model, by name."""
        ...

    def set_status(self, name: str, version: int, status: VersionStatus) -> None: ...

    def listed_below(self, release_counter: int) -> list[tuple[str, int]]:
        """(name, version) of versions not withdrawn whose counter is below this one."""
        ...

    def released_artifact(self, sha256: str) -> bool:
        """Whether a released version has this package."""
        ...

    def latest_release_list(self, *, signed: bool | None = None) -> ReleaseListRecord | None:
        """The highest-versioned release list (only signed or unsigned ones if given)."""
        ...

    def put_release_list(self, release: ReleaseListRecord) -> None:
        """Insert or replace the release list of that version."""


class Uplink(Protocol):
    """What devices sent, one record type per kind (see :mod:`hub.store.rows`)."""

    def add(self, records: Sequence[UplinkRecord]) -> int:
        """Store records whose (device_id, seq) is new, skip the others (an uplink row
        already stored is stored); returns how many were new."""
        ...

    def records(self, kind: type[R], device_id: str | None = None) -> list[R]:
        """Stored records of one kind (all devices, or one), by device and seq."""
        ...

    def count(self, kind: type[UplinkRecord]) -> int: ...

    def page(self, kind: type[R], query: UplinkQuery) -> Page[R]:
        """Records of one kind matching ``query``, newest received first (then by
        device and seq, descending), and how many match in all."""
        ...

    def delta_page(self, query: UplinkQuery) -> Page[DeltaSummary]:
        """Like ``page(DeltaRecord, query)``, without reading the tensors."""
        ...

    def last_install_refusal(self, device_id: str) -> StateRecord | None:
        """The device's newest state report whose install was refused, failed or rolled
        back, if any."""
        ...


class Audit(Protocol):
    """The append-only audit log: who did what to what, and how it ended."""

    def append(
        self,
        *,
        at: int,
        actor: str,
        action: str,
        target: str = "",
        outcome: str = "ok",
        reason: str = "",
        detail: Mapping[str, object] | None = None,
    ) -> None: ...

    def append_many(self, records: Sequence[AuditRecord]) -> None: ...

    def page(
        self,
        *,
        actor: str | None = None,
        action: str | None = None,
        outcome: str | None = None,
        target: str | None = None,
        since_ms: int | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> Page[AuditEntry]:
        """Entries matching every filter given, newest first."""
        ...

    def count(
        self,
        *,
        actor: str | None = None,
        action: str | None = None,
        outcome: str | None = None,
        target: str | None = None,
    ) -> int: ...

    def prune(self, *, outcome: str, keep: int) -> int:
        """Delete all but the newest ``keep`` entries with ``outcome``; how many went."""
        ...


class ApiTokens(Protocol):
    def add(self, token: ApiToken, *, digest: str) -> None:
        """Raises StoreError: the id or digest exists."""

    def credential(self, token_id: str) -> ApiCredential | None: ...

    def all(self) -> list[ApiToken]:
        """Oldest first."""
        ...

    def revoke(self, token_id: str) -> None:
        """Raises NotFound: no such token (revoking twice changes nothing)."""


class EnrollmentTokens(Protocol):
    def add(self, token: EnrollmentToken, *, digest: str) -> None:
        """Raises StoreError: the id or digest exists."""

    def get(self, token_id: str) -> EnrollmentToken | None: ...

    def by_digest(self, digest: str) -> EnrollmentToken | None: ...

    def all(self) -> list[EnrollmentToken]:
        """Newest first."""
        ...

    def use(self, token_id: str) -> bool:
        """Count one use; False (nothing changed) when the token is revoked or a
        single-use token already used."""
        ...

    def revoke(self, token_id: str) -> None:
        """Raises NotFound: no such token."""


class BrokerCredentials(Protocol):
    """Each device's broker password verifier (``$7$`` form, never a password)."""

    def put_many(self, verifiers: Mapping[str, str], *, at_ms: int) -> None:
        """Set each device's verifier (a row per device; an unchanged one is kept as is)."""

    def get(self, device_id: str) -> str | None: ...

    def active(self) -> dict[str, str]:
        """Device id -> verifier for every active device that has one: the accounts the
        broker should hold."""
        ...


class Counters(Protocol):
    """Named integer counters that only the hub's own code names (:data:`Counter`)."""

    def bump(self, key: Counter, by: int = 1) -> int:
        """Add ``by`` (from 0) and return the new value, atomically."""
        ...

    def get(self, key: Counter) -> int:
        """0 for a counter never set."""
        ...

    def set(self, key: Counter, value: int) -> None: ...


class Store(Protocol):
    """The hub's store: one object per concern, and the transactions over all of them."""

    @property
    def devices(self) -> Devices: ...

    @property
    def desired(self) -> DesiredStates: ...

    @property
    def registry(self) -> Registry: ...

    @property
    def uplink(self) -> Uplink: ...

    @property
    def audit(self) -> Audit: ...

    @property
    def api_tokens(self) -> ApiTokens: ...

    @property
    def enrollment_tokens(self) -> EnrollmentTokens: ...

    @property
    def counters(self) -> Counters: ...

    @property
    def broker_credentials(self) -> BrokerCredentials: ...

    @property
    def rounds(self) -> Rounds: ...

    @property
    def drift(self) -> Drift: ...

    @property
    def rollouts(self) -> Rollouts: ...

    def atomic(self) -> AbstractContextManager[None]: ...

    def immediate(self) -> AbstractContextManager[None]: ...

    def ping(self) -> bool:
        """Whether the store answers a trivial query (``/healthz``)."""
        ...

    def close(self) -> None: ...
