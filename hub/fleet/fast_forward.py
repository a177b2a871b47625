"""A document on the hub's own retained topics, signed with the hub's keys, ahead of the hub.

The retained watch (:mod:`hub.transport.retained`) hands every foreign message on a topic
the hub owns to :func:`hub.fleet.restore.restore_retained`. Most are garbage, a stale tool's
or another device's; devices refuse them. One that *verifies* under the hub's own role keys
and carries a version the hub never reached was signed by someone holding one of its keys:
a fast-forward (threat-model T7, B16). Devices accept it and then refuse everything genuine
as a rollback until the role's key is rotated, so the hub raises the alarm when the document
appears, not when the devices start refusing:

- ``fleet/release``: a release list verifying under the release role, newer than the newest
  the hub signed or accepted;
- ``fleet/heartbeat``: a heartbeat verifying under the heartbeat role, above the hub's
  heartbeat counter;
- ``d/<id>/down/desired``: a frame verifying under the rollout role whose seq stands for a
  time more than :data:`SEQ_SLACK_MS` ahead of the hub's clock (downlink seqs are
  time-ordered), or whose assignment is above every assignment the hub signed for the
  device.

Each is audited as ``security.fast_forward`` (outcome ``alert``, the role to rotate in the
reason) and logged at ERROR; the restore then republishes the hub's own document as usual.
"""

from __future__ import annotations

import logging

from hub.context import HubContext
from protocol import frame, metadata
from protocol.documents import SignedDocument, verify_threshold
from protocol.errors import ProtocolError
from protocol.messages import DesiredState
from protocol.replay import DOWNLINK_SEQ_SHIFT
from protocol.topics import Route, Topics

logger = logging.getLogger(__name__)

SEQ_SLACK_MS = 10 * 60 * 1000
"""How far ahead of the hub's clock a downlink seq may stand before it is a forgery rather
than another replica's or a restarted hub's clock skew."""


def fast_forward(ctx: HubContext, route: Route, found: bytes) -> tuple[str, str] | None:
    """``(role, what)`` when ``found`` on ``route`` is signed with the hub's keys and ahead
    of the hub; None otherwise (garbage, another key, or not ahead)."""
    try:
        if route.direction == "fleet" and route.kind == "release":
            return _release(ctx, SignedDocument.from_bytes(found))
        if route.direction == "fleet" and route.kind == "heartbeat":
            return _heartbeat(ctx, SignedDocument.from_bytes(found))
        if route.device_id is not None and route.kind == "desired":
            return _desired(ctx, route.device_id, found)
    except ProtocolError:
        return None
    return None


def raise_alarm(ctx: HubContext, route: Route, role: str, what: str) -> None:
    reason = f"{what}; rotate the {role} key (edgefleet keys rotate {role} --dir KEYS)"
    topics = Topics(ctx.settings.topic_prefix)
    if route.device_id is None:
        target = topics.fleet(route.kind)
    else:
        target = topics.down(route.device_id, route.kind)
    logger.error("fast-forward on %s: %s", target, reason)
    ctx.store.audit.append(
        at=ctx.now_ms(),
        actor="system:retained-watch",
        action="security.fast_forward",
        target=target,
        outcome="alert",
        reason=reason,
    )


def _verified(cls: type[metadata.M], doc: SignedDocument, ctx: HubContext) -> metadata.M:
    root = ctx.keyring.root
    role = metadata.ROLE[cls]
    verify_threshold(doc, metadata.KIND[cls], root.role_keys(role), root.threshold(role))
    return metadata.parse(cls, doc)


def _release(ctx: HubContext, doc: SignedDocument) -> tuple[str, str] | None:
    found = _verified(metadata.ReleaseList, doc, ctx)
    newest = ctx.store.registry.latest_release_list(signed=True)
    hub = newest.version if newest is not None else 0
    if found.version <= hub:
        return None
    return "release", f"a release list v{found.version} signed with the release key; hub at v{hub}"


def _heartbeat(ctx: HubContext, doc: SignedDocument) -> tuple[str, str] | None:
    found = _verified(metadata.Heartbeat, doc, ctx)
    hub = ctx.store.counters.get("heartbeat_version")
    if found.version <= hub:
        return None
    return "heartbeat", f"a heartbeat v{found.version} signed with the heartbeat key; hub at v{hub}"


def _desired(ctx: HubContext, device_id: str, found: bytes) -> tuple[str, str] | None:
    keys = list(ctx.keyring.root.role_keys("rollout").values())
    envelope = frame.decode(found, keys, expect_kind="down.desired", expect_device=device_id)
    ahead_ms = (envelope.header.seq >> DOWNLINK_SEQ_SHIFT) - ctx.now_ms()
    if ahead_ms > SEQ_SLACK_MS:
        return "rollout", (
            f"a desired state for {device_id} signed with the rollout key, its seq "
            f"{ahead_ms // 1000} s ahead of the hub's clock"
        )
    message = envelope.message
    if not isinstance(message, DesiredState) or message.assignment is None:
        return None
    assignment = _verified(metadata.Assignment, message.assignment, ctx)
    current = ctx.store.desired.current_assignment(device_id)
    hub = current.version if current is not None else 0
    if assignment.version <= hub:
        return None
    return "rollout", (
        f"an assignment v{assignment.version} for {device_id} signed with the rollout key; "
        f"the hub signed up to v{hub}"
    )
