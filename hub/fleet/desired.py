"""Desired state per device (the device twin's desired half) and its signed assignment.

:func:`set_desired` chooses a released model version for one device. It refuses what a
device would refuse anyway, with a message an operator can act on: an unknown or
revoked device, a version that is not in the current *signed* release list, or one
below that list's rollback floor (``min_counter``). It then signs an
:class:`~protocol.metadata.Assignment` with the rollout key, version = the device's
previous assignment + 1, built on the current signed release list, and publishes
``DesiredState(config, assignment, release list)`` retained on the device's
``down/desired`` through the downlink (which signs the frame with the rollout key too).

A rollback is a new assignment (a higher version) pointing at an older release entry,
never an older assignment replayed; devices accept it as long as the entry's counter is
at or above the floor (docs/decisions.md).

:func:`publish_desired` (re)publishes a device's desired state with the *current*
signed release list: a device checks an assignment built on an older list against the
newest list it trusts, so a new release needs no new assignments. Assignments expire,
though, so it re-signs one (same entry, next version) once less than half of its
lifetime is left (:func:`needs_reissue`). The reconciler calls it for devices that lag,
for desired states never published, and on every reconnect.

If the downlink cannot publish (no broker connection, or the CLI without ``--broker``),
the desired state is stored with ``published_at`` NULL and the running hub's
reconciler publishes it on its next tick.
"""

from __future__ import annotations

import logging
from typing import Protocol

from edgefleet.clock import Clock
from hub.errors import Conflict, KeyUnavailable
from hub.fleet.documents import signed_release
from hub.keyring import Keyring, KeyringError
from hub.settings import HubSettings
from hub.store.database import NotFound, Row, Store
from protocol import canonical, metadata, schema
from protocol.documents import SignedDocument
from protocol.frame import Message
from protocol.messages import DesiredState, DeviceConfig
from protocol.metadata import Assignment, ReleaseEntry, ReleaseList

logger = logging.getLogger(__name__)


class Sender(Protocol):
    """What this module, the reconciler and delivery need of the downlink
    (:class:`hub.transport.downlink.Downlink`)."""

    def send(self, device_id: str, message: Message, *, retain: bool = False) -> int | None:
        """Sign ``message`` for ``device_id`` and publish it; its seq, or None if not
        published (link down, unknown or revoked device)."""
        ...


def set_desired(
    store: Store,
    keyring: Keyring,
    downlink: Sender | None,
    clock: Clock,
    settings: HubSettings,
    *,
    device_id: str,
    model_name: str,
    model_version: int,
    config: DeviceConfig | None = None,
    actor: str,
) -> Assignment:
    """Make ``model_name`` v``model_version`` the device's desired model; publish it.

    ``config`` None keeps the device's current desired config (or the defaults).
    ``downlink`` None stores the change for the running hub to publish.

    Raises:
        NotFound: no such device, or no such version of the model.
        Conflict: the device is not active (pending or revoked), no release list has
            been signed yet, the version is not in the signed release list, or its
            release counter is below the list's rollback floor.
        KeyUnavailable: the rollout key is not on the hub.
    """
    now = clock.now_ms()
    device = _device(store, device_id)
    if device["status"] != "active":
        raise Conflict(f"device {device_id} is {device['status']}, not active")
    if store.find("versions", (model_name, model_version)) is None:
        raise NotFound(f"no version {model_version} of model {model_name[:64]!r}")
    current = signed_release(store)
    if current is None:
        raise Conflict("no release list has been signed yet")
    doc, release = current
    entry = _entry(release, model_name, model_version)
    if entry is None:
        raise Conflict(f"version {model_version} of {model_name} is not released yet")
    if entry.release_counter < release.min_counter:
        raise Conflict(
            f"{model_name} v{model_version} (release counter {entry.release_counter}) is "
            f"below the rollback floor {release.min_counter} the release key has set"
        )
    previous = store.find("desired", device_id)
    if config is None:
        config = _config(previous) if previous else DeviceConfig()
    with store.immediate():
        assignment = _assign(store, keyring, settings, device_id, entry, doc, release, now)
        store.upsert(
            "desired",
            {
                "device_id": device_id,
                "model_name": model_name,
                "model_version": model_version,
                "assignment_version": assignment.version,
                "config": _json(schema.to_json(config)),
                "set_at": now,
                "set_by": actor,
                "published_at": None,
                "nudged_at": None,
                "assignment_expires": assignment.expires,
                "stuck_at": None,
            },
            pk="device_id",
        )
        if device["health"] == "stuck":  # a new desired state starts a new episode
            store.update("devices", device_id, {"health": "unknown"})
        store.audit(
            at=now,
            actor=actor,
            action="desired.set",
            target=device_id,
            detail=_json(
                {"model": model_name, "version": model_version, "assignment": assignment.version}
            ),
        )
    if downlink is not None:
        publish_desired(store, keyring, downlink, clock, settings, device_id)
    return assignment


def clear_desired(
    store: Store, downlink: Sender | None, clock: Clock, *, device_id: str, actor: str
) -> None:
    """Stop directing the device: it keeps what it runs; the reconciler leaves it alone.

    Publishes (retained) a desired state with no assignment, so a device that reconnects
    does not act on the old one again.

    Raises:
        NotFound: no such device.
    """
    _device(store, device_id)
    previous = store.find("desired", device_id)
    now = clock.now_ms()
    with store.atomic():
        if previous is not None:
            store.table("desired").delete(device_id)
        store.audit(at=now, actor=actor, action="desired.clear", target=device_id)
    if downlink is None:
        return
    config = _config(previous) if previous else DeviceConfig()
    if downlink.send(device_id, DesiredState(config), retain=True) is None:
        logger.warning("cleared desired state of %s not published: broker out of reach", device_id)


def needs_reissue(row: Row, *, now_ms: int, settings: HubSettings) -> bool:
    """True when the desired row's assignment has less than half of its lifetime left."""
    half_life = int(settings.assignment_expiry_s * 1000) // 2
    return (row["assignment_expires"] or 0) - now_ms < half_life


def publish_desired(
    store: Store,
    keyring: Keyring,
    downlink: Sender,
    clock: Clock,
    settings: HubSettings,
    device_id: str,
) -> bool:
    """Publish the device's desired state (retained), re-signing its assignment first
    when :func:`needs_reissue` says so. Returns False when there is nothing to publish,
    the assigned entry left the release list, or the broker is out of reach.

    Raises:
        KeyUnavailable: a re-signature is due and the rollout key is not on the hub.
    """
    now = clock.now_ms()
    row = store.find("desired", device_id)
    current = signed_release(store)
    if row is None or current is None:
        return False
    doc, release = current
    if needs_reissue(row, now_ms=now, settings=settings):
        entry = _entry(release, row["model_name"], row["model_version"])
        if entry is None:
            logger.warning(
                "%s v%d left the release list; desired state of %s not republished",
                row["model_name"],
                row["model_version"],
                device_id,
            )
            return False
        with store.immediate():
            assignment = _assign(store, keyring, settings, device_id, entry, doc, release, now)
            store.update(
                "desired",
                device_id,
                {
                    "assignment_version": assignment.version,
                    "assignment_expires": assignment.expires,
                },
            )
        row = store.get("desired", device_id)
    message = DesiredState(_config(row), _assignment_doc(store, row), doc)
    if downlink.send(device_id, message, retain=True) is None:
        logger.info("desired state of %s not published: broker out of reach", device_id)
        return False
    store.update("desired", device_id, {"published_at": now})
    return True


def _assignment_doc(store: Store, row: Row) -> SignedDocument:
    stored = store.get("assignments", (row["device_id"], row["assignment_version"]))
    return SignedDocument.from_bytes(stored["document"].encode())


def _assign(
    store: Store,
    keyring: Keyring,
    settings: HubSettings,
    device_id: str,
    entry: ReleaseEntry,
    release_doc: SignedDocument,
    release: ReleaseList,
    now: int,
) -> Assignment:
    """Sign and store the device's next assignment (the caller holds a write transaction)."""
    try:
        signers = keyring.signing_keys("rollout")
    except KeyringError as e:
        raise KeyUnavailable(f"cannot sign an assignment: {e}") from e
    assignment = Assignment(
        device_id=device_id,
        version=store.next_assignment_version(device_id),
        expires=now + int(settings.assignment_expiry_s * 1000),
        release_version=release.version,
        release_sha256=metadata.payload_sha256(release_doc),
        entry=entry,
    )
    store.insert(
        "assignments",
        {
            "device_id": device_id,
            "version": assignment.version,
            "model_name": entry.name,
            "model_version": entry.version,
            "document": metadata.sign(assignment, signers).to_bytes().decode(),
            "created_at": now,
        },
    )
    logger.info(
        "assignment v%d: %s runs %s v%d", assignment.version, device_id, entry.name, entry.version
    )
    return assignment


def _device(store: Store, device_id: str) -> Row:
    device = store.find("devices", device_id)
    if device is None:
        raise NotFound(f"no device {device_id[:64]!r}")
    return device


def _entry(release: ReleaseList, name: str, version: int) -> ReleaseEntry | None:
    return next((e for e in release.entries if (e.name, e.version) == (name, version)), None)


def _config(row: Row) -> DeviceConfig:
    return schema.from_json(DeviceConfig, canonical.loads(row["config"].encode()))


def _json(value: object) -> str:
    return canonical.dumps(value).decode()
