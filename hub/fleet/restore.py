"""Put the hub's own message back on a retained topic someone else wrote to.

The retained watch (:mod:`hub.transport.retained`) finds a topic the hub owns holding a
message the hub did not leave there and asks :func:`restore_retained` what to do:

============================  ==========================================================
topic                         the hub's own message
============================  ==========================================================
``fleet/root``                the key ring's root chain (republished)
``fleet/release``             the current signed release list; none signed yet: nothing
``fleet/heartbeat``           a fresh heartbeat; no release list yet: nothing
``d/<id>/down/desired``       an active device with a desired state: that state
                              (republished, its assignment re-signed if due); any other
                              device: nothing, or the no-assignment desired state the hub
                              publishes when it stops directing a device, if that is what
                              is there (``kept``)
============================  ==========================================================

"Nothing" is ``clear``: the watch empties the topic, so a device finds no garbage, no
stale list and no other device's desired state there.
"""

from __future__ import annotations

import logging

from hub.context import HubContext
from hub.errors import KeyUnavailable
from hub.fleet.desired import publish_desired
from hub.fleet.documents import issue_heartbeat, publish_release, publish_root_chain
from hub.fleet.fast_forward import fast_forward, raise_alarm
from hub.transport.retained import Restored
from protocol import frame
from protocol.errors import ProtocolError
from protocol.messages import DesiredState, DeviceConfig
from protocol.topics import Route

logger = logging.getLogger(__name__)


def restore_retained(ctx: HubContext, route: Route, found: bytes) -> Restored:
    """The hub's repair of ``route``'s retained topic, which holds ``found``; first the
    alarm, if ``found`` is a fast-forward signed with the hub's own keys."""
    forged = fast_forward(ctx, route, found)
    if forged is not None:
        raise_alarm(ctx, route, *forged)
    if route.direction == "fleet":
        return _restore_fleet(ctx, route.kind)
    if route.device_id is None or route.kind != "desired":
        return "clear"
    return _restore_desired(ctx, route.device_id, found)


def _restore_fleet(ctx: HubContext, kind: str) -> Restored:
    if kind == "root":
        return "restored" if publish_root_chain(ctx) else "failed"
    if ctx.store.registry.latest_release_list(signed=True) is None:
        return "clear"  # the hub publishes neither list nor heartbeat before one is signed
    if kind == "release":
        return "restored" if publish_release(ctx) is not None else "failed"
    try:
        beat = issue_heartbeat(ctx)
    except KeyUnavailable as e:
        logger.error("cannot restore the heartbeat: %s", e)
        return "failed"
    return "restored" if beat is not None else "failed"


def _restore_desired(ctx: HubContext, device_id: str, found: bytes) -> Restored:
    device = ctx.store.devices.find(device_id)
    active = device is not None and device.status == "active"
    if active and ctx.store.desired.find(device_id) is not None:
        if publish_desired(ctx, device_id):
            return "restored"
        return _withdraw(ctx, device_id)  # its entry left the list, or the broker is away
    if active and _is_withdrawal(ctx, device_id, found):
        return "kept"
    return "clear"


def _withdraw(ctx: HubContext, device_id: str) -> Restored:
    """Publish the no-assignment desired state: the device keeps what it runs."""
    if ctx.downlink is None:
        return "failed"
    sent = ctx.downlink.send(device_id, DesiredState(DeviceConfig()), retain=True)
    return "restored" if sent is not None else "failed"


def _is_withdrawal(ctx: HubContext, device_id: str, found: bytes) -> bool:
    """Whether ``found`` is a desired state without an assignment that the hub signed for
    this device (what :func:`hub.fleet.desired.clear_desired` leaves)."""
    keys = list(ctx.keyring.root.role_keys("rollout").values())
    try:
        envelope = frame.decode(found, keys, expect_kind="down.desired", expect_device=device_id)
    except ProtocolError:
        return False
    message = envelope.message
    return isinstance(message, DesiredState) and message.assignment is None


__all__ = ["restore_retained"]
