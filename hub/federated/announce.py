"""Which devices hear of a round: the round id in their desired config, or taken out again.

A device learns of a round through its desired state (``DeviceConfig.round_id``, with the
norm bound and what to send: deltas, or statistics in exact mode) and sends its next
retrain's update there. Every device whose desired model is the round's base hears of it,
or, for a round a drift alert opened, only those in the alert's cohorts: the drift is
there, and devices the base already serves well would dilute what the drifted ones learn
(docs/rounds.md, "Who takes part").
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import replace

from hub.context import HubContext
from hub.drift.buckets import cohorts_of
from hub.federated.models import policy_of
from hub.fleet.desired import publish_desired
from hub.store import Store
from protocol import canonical, schema
from protocol.messages import DeviceConfig, UpdateKind

logger = logging.getLogger(__name__)


def announce(
    ctx: HubContext,
    model: str,
    base_version: int,
    round_id: str | None,
    max_norm: float | None,
    *,
    cohorts: Sequence[str] = (),
) -> int:
    """Set (or, ``round_id`` None, clear) the round in the desired config of every
    device whose desired model is ``model`` v``base_version`` (and, with ``cohorts``, that
    counts in one of them), with what the round takes (statistics in exact mode, deltas
    otherwise); publish each. How many."""
    store = ctx.store
    kind: UpdateKind = "stats" if policy_of(store, model).mode == "exact" else "delta"
    within = _cohort_filter(store, base_version, cohorts)
    changed = []
    # Read and rewrite the rows in one write transaction: a row read outside it and put
    # back after a rollout's tick assigned the device a new version would put the old
    # assignment back (the tick's device then never got its version, and the rollout's
    # stage waited for the device timeout).
    with store.immediate():
        for twin in store.desired.twins():
            desired = twin.desired
            if desired.model_name != model:
                continue
            config = schema.from_json(DeviceConfig, canonical.loads(desired.config.encode()))
            if (
                round_id is not None
                and desired.model_version == base_version
                and within(desired.device_id)
            ):
                wanted = replace(
                    config,
                    round_id=round_id,
                    delta_clip_norm=max_norm or config.delta_clip_norm,
                    update_kind=kind,
                )
            elif round_id is None and config.round_id is not None:
                wanted = replace(config, round_id=None, update_kind="delta")
            else:
                continue
            if wanted == config:
                continue
            text = canonical.dumps(schema.to_json(wanted)).decode()
            store.desired.put(replace(desired, config=text, published_at=None))
            changed.append(desired.device_id)
    for device_id in changed:
        try:
            publish_desired(ctx, device_id)
        except Exception:  # stored: the reconciler publishes it
            logger.exception("desired state of %s not published", device_id)
    return len(changed)


def _cohort_filter(store: Store, version: int, cohorts: Sequence[str]) -> Callable[[str], bool]:
    """Whether a device counts in one of ``cohorts`` (named as drift names them); every
    device when none is given or the fleet is."""
    wanted = set(cohorts)
    if not wanted or "fleet" in wanted:
        return lambda device_id: True

    def within(device_id: str) -> bool:
        device = store.devices.find(device_id)
        tags = device.tags if device is not None else {}
        return any(str(c) in wanted for c in cohorts_of(version, tags))

    return within
