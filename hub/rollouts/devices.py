"""What the planner sees of each device, and what a device's own report means for its
progress in a rollout.

The shell builds one :class:`DeviceView` per device from the store: the device's tags and
whether it is online (heard from within the hub's offline threshold), the version of the
rollout's model it reports active, the last install outcome it reported for that model
(with when the hub received it), and the rollout's records for it. :func:`observe` turns
that into at most one progress event, so reports are read *level-triggered*: the same view
always yields the same event, and an outcome received before the current attempt began
is never mistaken for that attempt's outcome.

What this module does not do: read the store, or decide what to assign (the planner).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from hub.rollouts.cohorts import pinned, sort_by_order, stage_quotas
from hub.rollouts.machine import (
    DeviceEvent,
    DeviceProgress,
    DeviceState,
    Failed,
    Installed,
    Reverted,
    Rollout,
    TimedOut,
)
from protocol.messages import InstallStatus

FAILED_INSTALLS: dict[InstallStatus, bool] = {
    "failed": True,
    "refused": False,
    "rolled_back": False,
}
"""Install outcomes that end an attempt, and whether a retry may help: ``failed`` is
transient (slow retrieval, interrupted); ``refused`` bytes and a ``rolled_back`` health
check will not change on a second try."""

ShadowState = Literal["running", "stopped"]


@dataclass(frozen=True)
class InstallReport:
    """The device's last reported install outcome for the rollout's model."""

    version: int
    status: InstallStatus
    reason: str = ""
    received_ms: int = 0


@dataclass(frozen=True)
class ShadowProgress:
    """A device of the shadow stage: running the new version beside the served one, or
    told to stop."""

    device_id: str
    state: ShadowState
    since_ms: int


@dataclass(frozen=True)
class DeviceView:
    """One device as the planner sees it (module docstring)."""

    device_id: str
    tags: Mapping[str, str] = field(default_factory=dict)
    online: bool = True
    active_version: int | None = None
    report: InstallReport | None = None
    progress: DeviceProgress | None = None
    shadow: ShadowProgress | None = None
    watching: bool = False
    shadow_report: InstallReport | None = None
    """Why the device does not run the shadow it was given (refused or failed), if so."""


def observe(view: DeviceView, version: int, timeout_ms: int, now_ms: int) -> DeviceEvent | None:
    """The event the device's report implies for its progress, if any.

    ``version`` is the rollout's; a device running the version it is being moved to has
    arrived once its watch window is over (even after a failure or a timeout: a late
    success counts); while it still watches the new version, the attempt is not over,
    since the device may yet roll it back on its own error rate; a fresh failed
    outcome for the new version ends the attempt; no outcome within ``timeout_ms`` of the
    attempt's start times it out.
    """
    p = view.progress
    if p is None or p.state in ("rolled_back", "pending"):
        return None
    waited = now_ms - p.since_ms >= timeout_ms
    if p.back:
        if view.active_version == p.target_version and p.target_version is not None:
            return Reverted()
        return TimedOut() if p.state == "reverting" and waited else None
    if view.active_version == version and not (view.watching and p.state == "updating"):
        return None if p.state == "succeeded" else Installed()
    report = view.report
    if (
        p.state in ("updating", "succeeded")
        and report is not None
        and report.version == version
        and report.status in FAILED_INSTALLS
        and report.received_ms >= p.since_ms
    ):
        reason = f"{report.status}: {report.reason}" if report.reason else report.status
        return Failed(reason, FAILED_INSTALLS[report.status])
    return TimedOut() if p.state == "updating" and waited else None


COUNTED: tuple[DeviceState, ...] = (
    "pending",
    "updating",
    "succeeded",
    "failed",
    "timed_out",
    "reverting",
    "rolled_back",
)


@dataclass(frozen=True)
class StageCounts:
    """Devices per progress state among those a stage took (pending: not yet taken)."""

    stage: int
    counts: dict[DeviceState, int]
    watching: int = 0
    """Of the ``updating``: already running the version, in the agent's watch window (it
    ends after so many predicted rows or minutes: a device with no traffic takes minutes)."""


def tally(rollout: Rollout, views: Sequence[DeviceView]) -> tuple[StageCounts, ...]:
    """Per stage, how many of its devices are in each state; untouched devices of the
    target count as pending in the stage that will take them (by the current order)."""
    spec = rollout.spec
    table = [dict.fromkeys(COUNTED, 0) for _ in spec.stages]
    watching = [0] * len(spec.stages)
    targeted = sort_by_order(spec, [v for v in views if spec.target.matches(v.device_id, v.tags)])
    quotas = stage_quotas(spec, len(targeted), sum(pinned(spec, v.tags) for v in targeted))
    stage = 0
    for filled, view in enumerate(targeted):
        while stage < len(quotas) - 1 and filled >= quotas[stage]:
            stage += 1
        index = view.progress.stage if view.progress else stage
        state = view.progress.state if view.progress else "pending"
        table[max(index, 0)][state] += 1
        if state == "updating" and view.watching and view.active_version == spec.version:
            watching[max(index, 0)] += 1
    for view in views:  # touched devices that left the target still count where they were
        if view.progress is not None and not spec.target.matches(view.device_id, view.tags):
            table[max(view.progress.stage, 0)][view.progress.state] += 1
    return tuple(StageCounts(k, counts, watching[k]) for k, counts in enumerate(table))
