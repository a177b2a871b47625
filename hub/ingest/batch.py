"""One ingest batch: what it writes, per device and per record, and the audit rate limit.

A :class:`Batch` collects everything the frames of one batch change (uplink records,
state twins, re-hello updates, device windows and last_seen, rejection audit rows) so
:meth:`Batch.write` can write it with a few statement batches inside the worker's single
transaction. :func:`record` and :func:`reported_twin` turn an admitted frame into the
store's typed rows. :class:`SeenDevice` is one device's part, including what its HubAck
will say. Which rejections reach the audit log is :mod:`hub.ingest.security`'s business.

Bookkeeping plus one write method; the worker (:mod:`hub.ingest.worker`) owns the
transaction, the caches and the acknowledgements.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from hub.health import OFFLINE_FLAG, derive
from hub.ingest.rules import Admitted, Device
from hub.store import Store
from hub.store.round_rows import DeltaVerdict
from hub.store.rows import (
    AuditRecord,
    DataWindowRecord,
    DeltaRecord,
    DeviceAckRecord,
    DeviceIdentity,
    HelloUpdate,
    ReportedTwin,
    StateRecord,
    TelemetryRecord,
    UplinkRecord,
    UplinkSeen,
)
from protocol import keys
from protocol.messages import (
    MAX_REASON,
    DataDelta,
    DeltaUpload,
    DeviceAck,
    FetchRequest,
    StateReport,
)
from protocol.replay import SeqWindow
from protocol.topics import Topics

REFUSED_INSTALLS = frozenset({"refused", "failed", "rolled_back"})


def record(frame: Admitted, received_at: int) -> UplinkRecord | None:
    """What an admitted new frame is stored as (None: hello, fetch)."""
    common = (frame.device_id, frame.seq, frame.sent_at, received_at)
    message = frame.message
    if frame.kind == "telemetry":
        return TelemetryRecord(*common, body=frame.body_json())
    if frame.kind == "state":
        return StateRecord(*common, body=frame.body_json())
    if frame.kind == "ack":
        return DeviceAckRecord(*common, body=frame.body_json())
    if isinstance(message, DataDelta):
        model = message.model
        return DataWindowRecord(
            *common,
            window_start=message.window_start,
            window_end=message.window_end,
            model_name=model.name if model else None,
            model_version=model.version if model else None,
            body=frame.body_json(),
        )
    if isinstance(message, DeltaUpload):
        return DeltaRecord(
            *common,
            base_name=message.base.name,
            base_version=message.base.version,
            base_sha256=message.base.sha256,
            round_id=message.round_id,
            num_samples=message.num_samples,
            metric=message.metric,
            before=message.before,
            after=message.after,
            clip_norm=message.clip_norm,
            tensors=message.tensors,
        )
    return None


def reported_twin(frame: Admitted, report: StateReport, received_at: int) -> ReportedTwin:
    """The reported half of the twin a state report sets."""
    active = report.active
    return ReportedTwin(
        active_name=active.name if active else None,
        active_version=active.version if active else None,
        active_sha256=active.sha256 if active else None,
        reported=frame.body_json(),
        reported_at=received_at,
    )


def refusal(message: object) -> str | None:
    """What a state report or ack says the device refused, and why (None: nothing):
    ``refused: incompatible: ...`` for an install, ``refused desired: ...`` for an ack."""
    if isinstance(message, StateReport) and message.install is not None:
        install = message.install
        if install.status in REFUSED_INSTALLS:
            return f"{install.status}: {install.reason}"[:MAX_REASON]
    if isinstance(message, DeviceAck) and message.status == "refused":
        return f"refused {message.ref_kind}: {message.reason}"[:MAX_REASON]
    return None


def online_after(frame: Admitted) -> bool:
    """Whether the device counts as online once ``frame`` is accepted (the last will is a
    state report flagged ``offline``)."""
    message = frame.message
    return not (isinstance(message, StateReport) and OFFLINE_FLAG in message.flags)


@dataclass
class SeenDevice:
    """What one batch did for one device."""

    device: Device
    committed: list[int] = field(default_factory=list)
    duplicates: list[int] = field(default_factory=list)
    refused: list[tuple[int, str]] = field(default_factory=list)
    last_seen: int | None = None
    online: bool = True

    def accept(self, frame: Admitted, now_ms: int) -> None:
        """Admit a new frame: into the window, the ack, last_seen and online."""
        device = self.device
        window = device.window.accept(frame.seq)
        self.device = Device(device.id, device.status, device.key_hex, device.key, window)
        self.committed.append(frame.seq)
        self.last_seen = now_ms
        self.online = online_after(frame)


@dataclass(frozen=True)
class StateUpdate:
    """A state report's twin, and the flags its health is derived from."""

    device_id: str
    seq: int
    twin: ReportedTwin
    flags: tuple[str, ...]


@dataclass
class Batch:
    """Everything one batch writes, collected before one bulk write."""

    now_ms: int
    seen: dict[str, SeenDevice] = field(default_factory=dict)
    records: list[UplinkRecord] = field(default_factory=list)
    states: list[StateUpdate] = field(default_factory=list)
    hellos: dict[str, HelloUpdate] = field(default_factory=dict)
    audits: list[AuditRecord] = field(default_factory=list)
    fetches: list[tuple[str, FetchRequest]] = field(default_factory=list)
    admitted: list[Admitted] = field(default_factory=list)
    enrolled: set[str] = field(default_factory=set)
    credentials: dict[str, str] = field(default_factory=dict)  # device id -> broker verifier
    cloned: set[str] = field(default_factory=set)  # devices in a cloned_device episode
    refusals: dict[str, tuple[str, int]] = field(default_factory=dict)
    verdicts: list[DeltaVerdict] = field(default_factory=list)  # hub.federated.screening
    strikes: dict[str, int] = field(default_factory=dict)  # device id -> screening strikes

    def note_refusal(self, device_id: str, message: object) -> None:
        """Keep what ``message`` says the device refused (:func:`refusal`), if anything."""
        if (refused := refusal(message)) is not None:
            self.refusals[device_id] = (refused, self.now_ms)

    def write(self, store: Store) -> None:
        """Write it all (the caller holds the transaction): uplink records first, so a
        state report's twin update sees its own row. A state report that applies sets
        the device's health from its flags, keeping a stuck or cloned episode the hub
        found. Broker verifiers of hellos go in with the devices they belong to."""
        if self.records:
            store.uplink.add(self.records)
        if self.verdicts:
            store.rounds.add_verdicts(self.verdicts)
        if self.strikes:
            store.rounds.add_strikes(self.strikes)
        if self.states:
            stuck = store.desired.stuck_among({s.device_id for s in self.states})
            for state in self.states:
                if store.devices.report_state(state.device_id, state.seq, state.twin):
                    health = derive(
                        state.flags,
                        stuck=state.device_id in stuck,
                        cloned=state.device_id in self.cloned,
                    )
                    store.devices.set_health(state.device_id, health)
        if self.hellos:
            store.devices.note_hellos(self.hellos)
        if self.refusals:
            store.devices.note_refusals(self.refusals)
        if self.credentials:
            store.broker_credentials.put_many(self.credentials, at_ms=self.now_ms)
        store.devices.note_uplink(
            [
                UplinkSeen(s.device.id, s.device.window.to_bytes(), s.last_seen, s.online)
                for s in self.seen.values()
                if s.last_seen is not None
            ]
        )
        if self.audits:
            store.audit.append_many(self.audits)


def load_device(identity: DeviceIdentity) -> Device:
    """What the rules check a device's frames against, from what the store pins."""
    window = identity.up_window
    return Device(
        id=identity.id,
        status=identity.status,
        key_hex=identity.public_key,
        key=keys.public_from_hex(identity.public_key),
        window=SeqWindow.from_bytes(window) if window else SeqWindow(),
    )


def device_ids(items: Iterable[tuple[str, bytes]], base: str) -> set[str]:
    """The device ids in the topics of ``items`` (``<base><id>/up/<kind>``; others skipped)."""
    return {topic[len(base) :].partition("/")[0] for topic, _ in items if topic.startswith(base)}


def lock_windows(
    store: Store,
    items: Iterable[tuple[str, bytes]],
    topics: Topics,
    cached: dict[str, Device],
    began_as: Mapping[str, bytes | None],
) -> None:
    """Lock the rows of the devices ``items`` come from (inside ``store.for_update()``), and
    drop from ``cached`` a device whose stored window is not the one its cache began as
    (``began_as``): another hub replica, sharing the uplink through ``$share``, admitted
    frames of it since. Judged against the stored window, a frame that replica stored is a
    duplicate here, never new twice, and no window update of the other is written over."""
    ids = device_ids(items, topics.base + "/d/")
    for device_id, window in store.devices.windows_for_update(ids).items():
        if device_id in cached and began_as.get(device_id) != window:
            del cached[device_id]
