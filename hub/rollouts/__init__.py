"""Staged rollouts, the pure core: spec, cohorts, gates, state tables and the planner.

Nothing here reads the store, the clock or the network: time comes in as ``now_ms``,
devices and their metrics as values, and decisions go out as a :class:`Plan` for the
shell to apply (docs/rollouts.md, "Integration plan").
"""

from hub.errors import IllegalTransition
from hub.rollouts.cohorts import DryRun, dry_run, order_key
from hub.rollouts.conflicts import Covered, check_conflict
from hub.rollouts.devices import DeviceView, InstallReport, ShadowProgress, StageCounts, tally
from hub.rollouts.errors import (
    InvalidGateInput,
    InvalidRolloutSpec,
    RolloutConflict,
    RolloutError,
)
from hub.rollouts.gates import DeviceMetrics, GateVerdict
from hub.rollouts.machine import (
    Abort,
    Approve,
    DeviceProgress,
    Pause,
    Resume,
    RollBack,
    Rollout,
    operate,
)
from hub.rollouts.planner import Plan, RevertTo, plan
from hub.rollouts.spec import GateSpec, RolloutSpec, ShadowStage, Stage, Target

__all__ = [
    "Abort",
    "Approve",
    "Covered",
    "DeviceMetrics",
    "DeviceProgress",
    "DeviceView",
    "DryRun",
    "GateSpec",
    "GateVerdict",
    "IllegalTransition",
    "InstallReport",
    "InvalidGateInput",
    "InvalidRolloutSpec",
    "Pause",
    "Plan",
    "Resume",
    "RevertTo",
    "RollBack",
    "Rollout",
    "RolloutConflict",
    "RolloutError",
    "RolloutSpec",
    "ShadowProgress",
    "ShadowStage",
    "Stage",
    "StageCounts",
    "Target",
    "check_conflict",
    "dry_run",
    "operate",
    "order_key",
    "plan",
    "tally",
]
