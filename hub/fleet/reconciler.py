"""The reconciler: desired against reported state per device (the device-twin pattern).

:func:`plan` is pure: from the desired rows joined with their devices' reported state,
``now`` and the settings, it decides, per device with a desired state:

- **publish**: the desired state was never published (stored by the CLI without a
  broker, or the broker was out of reach), or its assignment is past half its lifetime
  and must be re-signed (:func:`hub.fleet.desired.needs_reissue`);
- **nudge**: the reported active model differs from the desired one, the device was
  heard from within ``offline_after_s``, and nothing was published or nudged for
  ``nudge_every_s``: republish the desired state and send ``Nudge("desired")``;
- **stuck**: still lagging ``stuck_after_s`` after the desired state was set, although
  the device has been heard from since: health ``stuck`` and one audit row per episode
  (``desired.stuck_at`` remembers it, so a health value rewritten by ingest does not
  cause a second audit row);
- **recovered**: in sync again after being stuck: clear it.

It also notices a signed release list the broker has not been given yet.
:func:`apply` carries a plan out; :func:`reconcile_job` is the APScheduler shim.

:func:`republish_all` restores every retained message after the hub's MQTT link
(re)connects: brokers lose retained messages on restart (amqtt's start() clears them;
Mosquitto with ``persistence false``), and devices must find the root chain, release
list, a fresh heartbeat and their desired state whenever they connect.

What this module does not do: decide devices are offline (ingest keeps ``last_seen``),
or touch devices without a desired state.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from edgefleet.clock import Clock
from hub.errors import KeyUnavailable
from hub.fleet.desired import Sender, needs_reissue, publish_desired
from hub.fleet.documents import (
    RELEASE_PUBLISHED,
    FleetPublisher,
    issue_heartbeat,
    publish_release,
    publish_root_chain,
)
from hub.keyring import Keyring
from hub.settings import HubSettings
from hub.store.database import Row, Store
from protocol import canonical
from protocol.messages import Nudge

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Actions:
    """One reconciliation's decisions; device ids in id order."""

    publish: tuple[str, ...] = ()
    nudge: tuple[str, ...] = ()
    stuck: tuple[str, ...] = ()
    recovered: tuple[str, ...] = ()
    publish_release: bool = False


def plan(
    twins: list[Row],
    *,
    now_ms: int,
    settings: HubSettings,
    release_version: int,
    release_published: int,
) -> Actions:
    """Decide (see the module docstring); ``twins`` as :meth:`Store.desired_twins` gives them.

    ``release_version`` is the current signed release list's version (0: none) and
    ``release_published`` the one the broker last received.
    """
    publish, nudge, stuck, recovered = [], [], [], []
    nudge_ms = int(settings.nudge_every_s * 1000)
    for row in twins:
        if row["status"] != "active":
            continue
        device = row["device_id"]
        due = row["published_at"] is None or needs_reissue(row, now_ms=now_ms, settings=settings)
        lagging = (row["active_name"], row["active_version"]) != (
            row["model_name"],
            row["model_version"],
        )
        heard = row["last_seen"] is not None and now_ms - row["last_seen"] < int(
            settings.offline_after_s * 1000
        )
        last_contact = max(row["published_at"] or 0, row["nudged_at"] or 0)
        if (
            lagging
            and heard
            and row["published_at"] is not None
            and now_ms - last_contact >= nudge_ms
        ):
            nudge.append(device)
        elif due:
            publish.append(device)
        if lagging and _stuck(row, now_ms, settings):
            stuck.append(device)
        elif not lagging and row["stuck_at"] is not None:
            recovered.append(device)
    return Actions(
        publish=tuple(publish),
        nudge=tuple(nudge),
        stuck=tuple(stuck),
        recovered=tuple(recovered),
        publish_release=release_version > release_published,
    )


def _stuck(row: Row, now_ms: int, settings: HubSettings) -> bool:
    """Lagging past the timeout, heard from since the desired state was set, not yet marked
    (or marked, but its health was since rewritten)."""
    overdue = now_ms - row["set_at"] >= int(settings.stuck_after_s * 1000)
    heard_since = row["last_seen"] is not None and row["last_seen"] > row["set_at"]
    marked = row["stuck_at"] is not None and row["health"] == "stuck"
    return overdue and heard_since and not marked


def reconcile(store: Store, now_ms: int, settings: HubSettings) -> Actions:
    """:func:`plan` over the store's current rows."""
    release = store.latest_release_list(signed=True)
    return plan(
        store.desired_twins(),
        now_ms=now_ms,
        settings=settings,
        release_version=release["version"] if release else 0,
        release_published=store.counter(RELEASE_PUBLISHED),
    )


def apply(
    actions: Actions,
    *,
    store: Store,
    keyring: Keyring,
    downlink: Sender,
    clock: Clock,
    settings: HubSettings,
    publish_fleet: FleetPublisher,
) -> None:
    """Carry out ``actions``; a device whose publish fails is retried on the next tick.

    Raises:
        KeyUnavailable: an assignment needs re-signing and the rollout key is not here.
    """
    now = clock.now_ms()
    if actions.publish_release and publish_release(store, publish_fleet):
        issue_heartbeat(store, keyring, clock, settings, publish_fleet)
    for device in actions.publish:
        publish_desired(store, keyring, downlink, clock, settings, device)
    for device in actions.nudge:
        if publish_desired(store, keyring, downlink, clock, settings, device):
            downlink.send(device, Nudge("desired"))
            store.update("desired", device, {"nudged_at": now})
    for device in actions.stuck:
        row = store.find("desired", device)
        if row is None:  # cleared since the plan was made
            continue
        with store.atomic():
            store.update("devices", device, {"health": "stuck"})
            if row["stuck_at"] is None:
                store.update("desired", device, {"stuck_at": now})
                store.audit(
                    at=now,
                    actor="system",
                    action="device.stuck",
                    target=device,
                    outcome="ok",
                    reason="stuck",
                    detail=canonical.dumps(
                        {"model": row["model_name"], "version": row["model_version"]}
                    ).decode(),
                )
        logger.warning("device %s is stuck short of %s", device, row["model_name"])
    for device in actions.recovered:
        if store.find("desired", device) is None:
            continue
        with store.atomic():
            store.update("desired", device, {"stuck_at": None})
            if store.get("devices", device)["health"] == "stuck":
                store.update("devices", device, {"health": "ok"})
        logger.info("device %s is in sync again", device)


def reconcile_job(
    store: Store,
    keyring: Keyring,
    downlink: Sender,
    clock: Clock,
    settings: HubSettings,
    publish_fleet: FleetPublisher,
) -> Actions:
    """APScheduler shim: one reconciliation every ``settings.reconcile_interval_s``."""
    actions = reconcile(store, clock.now_ms(), settings)
    apply(
        actions,
        store=store,
        keyring=keyring,
        downlink=downlink,
        clock=clock,
        settings=settings,
        publish_fleet=publish_fleet,
    )
    return actions


def republish_all(
    store: Store,
    keyring: Keyring,
    downlink: Sender,
    clock: Clock,
    settings: HubSettings,
    publish_fleet: FleetPublisher,
) -> int:
    """Publish every retained message again: root chain, release list, a fresh
    heartbeat, then each device's desired state. Returns how many desired states went out.

    Call it whenever the hub's link (re)connects.

    Raises:
        KeyUnavailable: an assignment needs re-signing and the rollout key is not here.
    """
    publish_root_chain(keyring, publish_fleet)
    publish_release(store, publish_fleet)
    try:
        issue_heartbeat(store, keyring, clock, settings, publish_fleet)
    except KeyUnavailable as e:
        logger.error("no heartbeat after reconnect: %s", e)
    sent = 0
    for row in store.desired_twins():
        if row["status"] == "active":
            sent += publish_desired(store, keyring, downlink, clock, settings, row["device_id"])
    logger.info("republished fleet documents and %d desired states", sent)
    return sent
