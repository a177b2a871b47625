"""The reconciler's shell: read the twins, let :mod:`hub.fleet.reconcile_plan` decide,
carry the decisions out.

:func:`reconcile_job` is the scheduler's shim, every ``reconcile_interval_s``:
:func:`reconcile` plans over the store's current rows and :func:`apply` publishes,
nudges, and opens or ends stuck episodes (health through :func:`hub.health.derive`,
one audit row per episode).

:func:`republish_all` restores every retained message after the hub's MQTT link
(re)connects: brokers lose retained messages on restart (amqtt's start() clears them;
Mosquitto with ``persistence false``), and devices must find the root chain, release
list, a fresh heartbeat and their desired state whenever they connect.

:func:`rekey` makes a key rotation take effect at once (the running hub calls it when its
key ring reloaded): the new root chain first, so devices trust the new keys before they
meet them, then a heartbeat, then every device's desired state with its assignment
re-signed by the new rollout key. Before, the retired key's signature stayed on the
retained topics until the assignment was half expired (3.5 days), and devices that had
taken the new root refused it.

What this module does not do: decide devices are offline (ingest keeps ``last_seen``),
or touch devices without a desired state.
"""

from __future__ import annotations

import logging

from hub.context import HubContext
from hub.errors import KeyUnavailable
from hub.fleet.desired import publish_desired
from hub.fleet.documents import issue_heartbeat, publish_release, publish_root_chain
from hub.fleet.reconcile_plan import Actions, plan
from hub.health import derive, reported_flags
from hub.keyring import Keyring, rotated_roles
from protocol.messages import Nudge

logger = logging.getLogger(__name__)

__all__ = ["Actions", "apply", "reconcile", "reconcile_job", "rekey", "republish_all"]


def reconcile(ctx: HubContext) -> Actions:
    """:func:`~hub.fleet.reconcile_plan.plan` over the store's current rows."""
    store = ctx.store
    release = store.registry.latest_release_list(signed=True)
    return plan(
        store.desired.twins(),
        now_ms=ctx.now_ms(),
        settings=ctx.settings,
        release_version=release.version if release else 0,
        release_published=store.counters.get("release_published"),
    )


def apply(ctx: HubContext, actions: Actions) -> None:
    """Carry out ``actions``; a device whose publish fails is retried on the next tick.

    Raises:
        KeyUnavailable: an assignment needs re-signing and the rollout key is not here.
    """
    store, now_ms = ctx.store, ctx.now_ms()
    if actions.publish_release and publish_release(ctx):
        issue_heartbeat(ctx)
    for device in actions.publish:
        publish_desired(ctx, device)
    for device in actions.nudge:
        if publish_desired(ctx, device) and ctx.downlink is not None:
            ctx.downlink.send(device, Nudge("desired"))
            store.desired.mark_nudged(device, at_ms=now_ms)
    for device in actions.stuck:
        with store.atomic():
            desired = store.desired.find(device)
            if desired is None or desired.stuck_at is not None:  # cleared, or marked since
                continue
            store.desired.set_stuck(device, at_ms=now_ms)
            store.devices.set_health(device, derive(None, stuck=True))
            store.audit.append(
                at=now_ms,
                actor="system",
                action="device.stuck",
                target=device,
                reason="stuck",
                detail={"model": desired.model_name, "version": desired.model_version},
            )
        logger.warning("device %s is stuck short of %s", device, desired.model_name)
    for device in actions.recovered:
        with store.atomic():
            if store.desired.find(device) is None:
                continue
            store.desired.set_stuck(device, at_ms=None)
            reported = store.devices.get(device).reported
            store.devices.set_health(device, derive(reported_flags(reported), stuck=False))
        logger.info("device %s is in sync again", device)


def reconcile_job(ctx: HubContext) -> Actions:
    """The scheduler's shim: one reconciliation every ``settings.reconcile_interval_s``."""
    actions = reconcile(ctx)
    apply(ctx, actions)
    return actions


def republish_all(ctx: HubContext) -> int:
    """Publish every retained message again: root chain, release list, a fresh
    heartbeat, then each device's desired state. Returns how many desired states went out.

    Call it whenever the hub's link (re)connects.

    Raises:
        KeyUnavailable: an assignment needs re-signing and the rollout key is not here.
    """
    publish_root_chain(ctx)
    publish_release(ctx)
    try:
        issue_heartbeat(ctx)
    except KeyUnavailable as e:
        logger.error("no heartbeat after reconnect: %s", e)
    sent = 0
    for twin in ctx.store.desired.twins():
        if twin.device.status == "active":
            sent += publish_desired(ctx, twin.device.id)
    logger.info("republished fleet documents and %d desired states", sent)
    return sent


def rekey(ctx: HubContext, old: Keyring, new: Keyring) -> int:
    """Make the key ring's change from ``old`` to ``new`` take effect now (``ctx.keyring``
    already holds ``new``): publish the root chain when it grew, a fresh heartbeat, and,
    when the rollout keys changed, every desired state re-signed. Audited as ``keys.reloaded``.
    Returns how many desired states went out.

    Raises:
        KeyUnavailable: the new ring lacks the rollout key an assignment needs.
    """
    roles = rotated_roles(old.root, new.root)
    if new.root.version != old.root.version and not publish_root_chain(ctx):
        logger.warning("root v%d not published: broker out of reach", new.root.version)
    try:
        issue_heartbeat(ctx)
    except KeyUnavailable as e:
        logger.error("no heartbeat after the key ring changed: %s", e)
    sent = 0
    if "rollout" in roles:
        for twin in ctx.store.desired.twins():
            if twin.device.status == "active":
                sent += publish_desired(ctx, twin.device.id, reissue=True)
    ctx.store.audit.append(
        at=ctx.now_ms(),
        actor="system",
        action="keys.reloaded",
        target=f"root v{new.root.version}",
        detail={"from": old.root.version, "rotated": sorted(roles), "desired": sent},
    )
    logger.info(
        "key ring v%d -> v%d (%s rotated): %d desired states re-signed",
        old.root.version,
        new.root.version,
        ", ".join(sorted(roles)) or "nothing",
        sent,
    )
    return sent
