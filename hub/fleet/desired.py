"""Desired state per device (the device twin's desired half): the shell around
:mod:`hub.fleet.desired_plan`.

:func:`set_desired` asks the plan whether the version may be assigned, then signs an
:class:`~protocol.metadata.Assignment` with the rollout key (version = the device's
previous assignment + 1, built on the current signed release list), stores it with the
desired state, and publishes ``DesiredState(config, assignment, release list)``
retained on the device's ``down/desired`` through the downlink (which signs the frame
with the rollout key too).

:func:`publish_desired` (re)publishes a device's desired state with the *current*
signed release list, re-signing the assignment first when the plan says it is due. The
reconciler calls it for devices that lag, for desired states never published, and on
every reconnect.

Without a downlink (the CLI without ``--broker``), or when the broker is out of reach,
the desired state is stored with ``published_at`` unset and the running hub's
reconciler publishes it on its next tick.

:func:`assign_shadow` and :func:`clear_shadow` (a rollout's shadow stage) put a second
signed assignment beside the served one, ``DesiredState.shadow``: a version the device
runs beside the served model without serving it. It takes the next assignment version
(the device keeps a separate high-water mark for shadows, so neither refuses the other);
setting a new served model drops it.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import replace

from hub.context import HubContext
from hub.errors import Conflict, KeyUnavailable
from hub.fleet.desired_plan import Assign, Reissue, Skip, plan_publish, plan_set
from hub.fleet.documents import signed_release
from hub.fleet.releases import SignedRelease, assignment_for, needs_reissue
from hub.fleet.rollout_inputs import covering
from hub.health import derive, reported_flags
from hub.keyring import KeyringError
from hub.store import NotFound
from hub.store.rows import AssignmentRecord, Desired, Device, ModelVersion
from protocol import canonical, metadata, schema
from protocol.documents import SignedDocument
from protocol.errors import ProtocolError
from protocol.manifest import ModelManifest
from protocol.messages import DesiredState, DeviceConfig
from protocol.metadata import Assignment, ReleaseEntry

logger = logging.getLogger(__name__)


def set_desired(
    ctx: HubContext,
    *,
    device_id: str,
    model_name: str,
    model_version: int,
    config: DeviceConfig | None = None,
    actor: str,
) -> Assignment:
    """Make ``model_name`` v``model_version`` the device's desired model; publish it
    when the context has a downlink.

    ``config`` None keeps the device's current desired config (or the defaults).

    Raises:
        NotFound: no such device, or no such version of the model.
        Conflict: a live rollout of the model covers the device (it sets the device's
            desired state), the device is not active (pending or revoked), no release
            list has been signed yet, the version is not in the signed release list,
            its release counter is below the list's rollback floor, or the device would
            refuse it as incompatible with the model it last reported active.
        KeyUnavailable: the rollout key is not on the hub.
    """
    with ctx.store.immediate():
        rollout = covering(ctx.store, device_id, model_name)
        if rollout is not None:
            raise Conflict(
                f"device {device_id} is in rollout {rollout.rollout_id} ({rollout.phase}, "
                f"stage {rollout.stage + 1}); pause or abort it first"
            )
        assignment = assign_desired(
            ctx,
            device_id=device_id,
            model_name=model_name,
            model_version=model_version,
            config=config,
            actor=actor,
            now_ms=ctx.now_ms(),
        )
    publish_desired(ctx, device_id)
    return assignment


def assign_desired(
    ctx: HubContext,
    *,
    device_id: str,
    model_name: str,
    model_version: int,
    actor: str,
    now_ms: int,
    config: DeviceConfig | None = None,
    current: SignedRelease | None = None,
) -> Assignment:
    """:func:`set_desired`'s decision and writes, inside the caller's write transaction
    and without publishing: a rollout commits many devices' desired states together with
    its own progress rows, then publishes (or leaves it to the reconciler, which publishes
    every desired state stored with ``published_at`` unset). ``current``: the signed
    release list, when the caller has already read it for many devices.

    Raises: as :func:`set_desired`.
    """
    store = ctx.store
    previous = store.desired.find(device_id)
    device, plan, assignment = _signed(
        ctx, device_id, model_name, model_version, previous, current, now_ms
    )
    if config is None:
        config = _config(previous) if previous else DeviceConfig()
    store.desired.put(
        Desired(
            device_id=device_id,
            model_name=model_name,
            model_version=model_version,
            assignment_version=assignment.version,
            config=canonical.dumps(schema.to_json(config)).decode(),
            set_at=now_ms,
            set_by=actor,
            assignment_expires=assignment.expires,
        )
    )
    if plan.ends_stuck_episode:
        store.devices.set_health(device_id, derive(reported_flags(device.reported), stuck=False))
    store.audit.append(
        at=now_ms,
        actor=actor,
        action="desired.set",
        target=device_id,
        detail={"model": model_name, "version": model_version, "assignment": assignment.version},
    )
    return assignment


def assign_shadow(
    ctx: HubContext,
    *,
    device_id: str,
    model_name: str,
    model_version: int,
    actor: str,
    now_ms: int,
    current: SignedRelease | None = None,
) -> Assignment:
    """Sign a shadow assignment of ``model_name`` v``model_version`` for the device and put
    it beside its served one, inside the caller's write transaction, without publishing
    (the caller publishes after its commit, or the reconciler does).

    Raises:
        NotFound: no such device or version, or the device has no desired state (a
            shadow runs beside a served model the hub assigned).
        Conflict: as :func:`set_desired` (the device could not take the version).
        KeyUnavailable: the rollout key is not on the hub.
    """
    store = ctx.store
    desired = store.desired.get(device_id)
    _, _, assignment = _signed(ctx, device_id, model_name, model_version, desired, current, now_ms)
    store.desired.set_shadow(device_id, assignment.version)
    store.audit.append(
        at=now_ms,
        actor=actor,
        action="desired.shadow",
        target=device_id,
        detail={"model": model_name, "version": model_version, "assignment": assignment.version},
    )
    return assignment


def _signed(
    ctx: HubContext,
    device_id: str,
    model_name: str,
    model_version: int,
    previous: Desired | None,
    current: SignedRelease | None,
    now_ms: int,
) -> tuple[Device, Assign, Assignment]:
    """What a served and a shadow assignment share: :func:`plan_set`'s decision whether
    the device could take the version, then the signed assignment (the next version).

    Raises: as :func:`set_desired`.
    """
    store = ctx.store
    device = store.devices.find(device_id)
    candidate = store.registry.version(model_name, model_version)
    plan = plan_set(
        device,
        device_id=device_id,
        model_name=model_name,
        model_version=model_version,
        registered=candidate is not None,
        current=current if current is not None else signed_release(store),
        previous=previous,
        active=_active_manifest(ctx, device) if device is not None else None,
        candidate=_manifest(candidate) if candidate is not None else None,
    )
    if not isinstance(plan, Assign):
        raise plan.error()
    assert device is not None  # the plan refuses an unknown device
    return device, plan, _assign(ctx, device_id, plan.entry, plan.release, now_ms)


def clear_shadow(ctx: HubContext, *, device_id: str, actor: str, now_ms: int) -> bool:
    """Drop the device's shadow assignment (inside the caller's transaction, without
    publishing); False if it had none."""
    desired = ctx.store.desired.find(device_id)
    if desired is None or desired.shadow_version is None:
        return False
    ctx.store.desired.set_shadow(device_id, None)
    ctx.store.audit.append(at=now_ms, actor=actor, action="desired.shadow_clear", target=device_id)
    return True


def clear_desired(ctx: HubContext, *, device_id: str, actor: str) -> None:
    """Stop directing the device: it keeps what it runs; the reconciler leaves it alone.

    Publishes (retained) a desired state with no assignment, so a device that reconnects
    does not act on the old one again.

    Raises:
        NotFound: no such device.
    """
    store = ctx.store
    store.devices.get(device_id)
    previous = store.desired.find(device_id)
    with store.atomic():
        store.desired.delete(device_id)
        store.audit.append(at=ctx.now_ms(), actor=actor, action="desired.clear", target=device_id)
    if ctx.downlink is None:
        return
    config = _config(previous) if previous else DeviceConfig()
    if ctx.downlink.send(device_id, DesiredState(config), retain=True) is None:
        logger.warning("cleared desired state of %s not published: broker out of reach", device_id)


def publish_desired(ctx: HubContext, device_id: str, *, reissue: bool = False) -> bool:
    """Publish the device's desired state (retained), re-signing its assignment first
    when due or ``reissue`` asks (the rollout key was rotated). Returns False when there
    is no downlink or nothing to publish, the assigned entry left the release list, or
    the broker is out of reach.

    Raises:
        KeyUnavailable: a re-signature is due and the rollout key is not on the hub.
    """
    if ctx.downlink is None:
        return False
    store, now_ms = ctx.store, ctx.now_ms()
    desired = store.desired.find(device_id)
    plan = plan_publish(
        desired,
        signed_release(store),
        now_ms=now_ms,
        lifetime_ms=int(ctx.settings.assignment_expiry_s * 1000),
        reissue=reissue,
    )
    if isinstance(plan, Skip):
        if plan.reason == "left_release_list" and desired is not None:
            logger.warning(
                "%s v%d left the release list; desired state of %s not republished",
                desired.model_name,
                desired.model_version,
                device_id,
            )
        return False
    if isinstance(plan, Reissue):
        with store.immediate():
            assignment = _assign(ctx, device_id, plan.entry, plan.release, now_ms)
            store.desired.reissued(
                device_id, assignment_version=assignment.version, expires_ms=assignment.expires
            )
        desired = store.desired.get(device_id)
    assert desired is not None  # the plan skips a device without one
    message = DesiredState(
        _config(desired),
        _assignment_doc(ctx, desired),
        plan.release.document,
        _shadow_doc(ctx, desired, plan.release, now_ms, reissue=reissue),
    )
    if ctx.downlink.send(device_id, message, retain=True) is None:
        logger.info("desired state of %s not published: broker out of reach", device_id)
        return False
    _mark_sent(ctx, desired, now_ms)
    return True


def _mark_sent(ctx: HubContext, sent: Desired, now_ms: int) -> None:
    """Mark the desired state published if it is still the one sent. Another writer may
    have replaced it between the read and the send (a rollout's tick assigning a new
    version while a round's end is being published): that writer left it unpublished, or
    published its own, which this older frame may have displaced from the broker's
    retained slot. Either way it is left (or set back) unpublished, so the newest is
    published again (by its writer or the reconciler) and the device is not left with
    the older one."""
    store = ctx.store
    with store.immediate():
        now = store.desired.find(sent.device_id)
        if now is None:
            return
        if _content(now) == _content(sent):
            store.desired.mark_published(sent.device_id, at_ms=now_ms)
        elif now.published_at is not None:
            store.desired.put(replace(now, published_at=None))


def _content(desired: Desired) -> tuple[object, ...]:
    """What a published desired state carries of the row."""
    return (
        desired.model_name,
        desired.model_version,
        desired.assignment_version,
        desired.config,
        desired.shadow_version,
    )


def _assignment_doc(ctx: HubContext, desired: Desired) -> SignedDocument:
    stored = ctx.store.desired.assignment(desired.device_id, desired.assignment_version)
    if stored is None:
        raise NotFound(f"no assignment v{desired.assignment_version} for {desired.device_id}")
    return SignedDocument.from_bytes(stored.document.encode())


def _shadow_doc(
    ctx: HubContext, desired: Desired, current: SignedRelease, now_ms: int, *, reissue: bool
) -> SignedDocument | None:
    """The desired state's shadow assignment, re-signed first when it is due (as the
    served one: half its lifetime left, or the rollout key rotated); None when there is
    none or its entry left the release list."""
    if desired.shadow_version is None:
        return None
    stored = ctx.store.desired.assignment(desired.device_id, desired.shadow_version)
    if stored is None:
        return None
    document = SignedDocument.from_bytes(stored.document.encode())
    shadow = metadata.parse(Assignment, document)
    if current.entry(shadow.entry.name, shadow.entry.version) != shadow.entry:
        return None
    lifetime_ms = int(ctx.settings.assignment_expiry_s * 1000)
    if not (reissue or needs_reissue(shadow.expires, now_ms=now_ms, lifetime_ms=lifetime_ms)):
        return document
    with ctx.store.immediate():
        again = _assign(ctx, desired.device_id, shadow.entry, current, now_ms)
        ctx.store.desired.set_shadow(desired.device_id, again.version)
    renewed = ctx.store.desired.assignment(desired.device_id, again.version)
    assert renewed is not None  # just stored
    return SignedDocument.from_bytes(renewed.document.encode())


def _assign(
    ctx: HubContext, device_id: str, entry: ReleaseEntry, current: SignedRelease, now_ms: int
) -> Assignment:
    """Sign and store the device's next assignment (the caller holds a write transaction)."""
    try:
        signers = ctx.keyring.signing_keys("rollout")
    except KeyringError as e:
        raise KeyUnavailable(f"cannot sign an assignment: {e}") from e
    store = ctx.store
    assignment = assignment_for(
        device_id,
        entry,
        current,
        version=store.desired.next_assignment_version(device_id),
        now_ms=now_ms,
        lifetime_ms=int(ctx.settings.assignment_expiry_s * 1000),
    )
    store.desired.add_assignment(
        AssignmentRecord(
            device_id=device_id,
            version=assignment.version,
            model_name=entry.name,
            model_version=entry.version,
            document=metadata.sign(assignment, signers).to_bytes().decode(),
            created_at=now_ms,
        )
    )
    logger.info(
        "assignment v%d: %s runs %s v%d", assignment.version, device_id, entry.name, entry.version
    )
    return assignment


def _active_manifest(ctx: HubContext, device: Device) -> ModelManifest | None:
    """The manifest of the model the device last reported active, if the registry holds
    those very bytes."""
    name, version = device.active_name, device.active_version
    if name is None or version is None:
        return None
    registered = ctx.store.registry.version(name, version)
    if registered is None or registered.sha256 != device.active_sha256:
        return None
    return _manifest(registered)


def _manifest(version: ModelVersion) -> ModelManifest | None:
    return _parsed_manifest(version.manifest)


@functools.lru_cache(maxsize=64)
def _parsed_manifest(text: str) -> ModelManifest | None:
    """A stored manifest, parsed once per text (a rollout's tick checks the same two
    versions' manifests for every device it assigns; manifests never change)."""
    try:
        return schema.from_json(ModelManifest, canonical.loads(text.encode()))
    except ProtocolError:  # a row of an older schema: the device still checks
        return None


def _config(desired: Desired) -> DeviceConfig:
    return schema.from_json(DeviceConfig, canonical.loads(desired.config.encode()))
