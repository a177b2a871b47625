"""One active rollout per model and device set: a new rollout is refused, with its reason,
when a live rollout of the same model covers any of its devices.

Two rollouts of one model on one device would hand it two conflicting desired states, and
neither rollout's gates would know which version a device's metrics belong to. Overlap is
judged on the devices each target covers now *and*, for targets chosen by tags (or "all"),
on the devices they could cover later: two tag targets that no tag contradicts can both
match a device that enrolls tomorrow. Rollouts of other models never conflict; a device
runs one active model per name.

What this does not do: look anything up. The caller passes the live rollouts with the
device ids their targets cover now (the store holds both).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass

from hub.rollouts.errors import RolloutConflict
from hub.rollouts.machine import LIVE, Rollout
from hub.rollouts.spec import RolloutSpec, Target

EXAMPLES = 3


@dataclass(frozen=True)
class Covered:
    """A rollout and the device ids its target covers now."""

    rollout: Rollout
    device_ids: frozenset[str]


def check_conflict(
    spec: RolloutSpec, device_ids: Collection[str], others: Iterable[Covered]
) -> None:
    """Refuse ``spec`` (covering ``device_ids`` now) if a live rollout of its model overlaps.

    Raises:
        RolloutConflict: the first overlapping live rollout, named with its phase, stage
            and up to three shared devices.
    """
    mine = frozenset(device_ids)
    for other in sorted(others, key=lambda c: c.rollout.rollout_id):
        rollout = other.rollout
        if rollout.phase not in LIVE or rollout.spec.model != spec.model:
            continue
        shared = sorted(mine & other.device_ids)
        where = (
            f"rollout {rollout.rollout_id} ({spec.model} v{rollout.spec.version}, {_at(rollout)})"
        )
        if shared:
            named = ", ".join(shared[:EXAMPLES]) + (", ..." if len(shared) > EXAMPLES else "")
            raise RolloutConflict(f"{where} already covers {len(shared)} of these devices: {named}")
        if _may_overlap(spec.target, rollout.spec.target):
            raise RolloutConflict(
                f"{where} targets {_describe(rollout.spec.target)}, which can match the same "
                f"devices as {_describe(spec.target)} when they enroll"
            )


def _may_overlap(a: Target, b: Target) -> bool:
    """Tag (or all-device) targets overlap unless some key is pinned to different values."""
    if a.device_ids or b.device_ids:
        return False
    return all(b.tags.get(key, value) == value for key, value in a.tags.items())


def _describe(target: Target) -> str:
    if target.device_ids:
        return f"{len(target.device_ids)} listed devices"
    if not target.tags:
        return "all devices"
    return "tags " + ", ".join(f"{k}={v}" for k, v in sorted(target.tags.items()))


def _at(rollout: Rollout) -> str:
    if rollout.phase in ("pending", "rolling_back"):
        return rollout.phase
    stage = "shadow stage" if rollout.stage < 0 else f"stage {rollout.stage + 1}"
    return f"{rollout.phase}, {stage}"
