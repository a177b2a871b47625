"""The rollout's and each device's lifecycle, as tables (h11-style): the table decides the
move, the event its effects, and anything not in the table raises ``IllegalTransition``.

Rollout phases::

    pending ─Start─> baking ─Advance─> baking (next stage) ─Complete─> completed
       └StartShadow─> shadow ─Advance─┘   │  └AwaitApproval─> awaiting_approval ─Approve─> baking
    any live phase ─Halt (a gate failed) / RollBack (operator)─> rolling_back ─Finish─> rolled_back
    shadow | baking | awaiting_approval ─Pause─> paused ─Resume─> (the phase it paused from)
    any live phase ─Abort─> aborted          completed | aborted ─RollBack─> rolling_back

``stage`` is the index into ``spec.stages`` of the stage running (or, while awaiting
approval, the stage waiting to start); -1 is the shadow stage. ``Resume`` restarts the
bake of the stage it returns to; ``Resume(override=True)`` instead records that a human
accepted the stage's inconclusive gates as they stand (``override_stage``), so it moves
on at once; a failing gate still halts. Abort stops where the rollout is and
leaves devices as they are; rolling back is a separate, explicit event.

Device progress (one record per device the rollout touched; untouched devices have none
and count as pending)::

    pending ─Assign─> updating ─Installed─> succeeded
    updating ─Failed─> failed ─Retry─> updating         (transient failures, while retries last)
    updating | reverting ─TimedOut─> timed_out ─Retry─> updating
    failed | timed_out ─Installed─> succeeded           (a late success still counts)
    succeeded ─Failed─> failed                          (the agent rolled itself back)
    updating | succeeded | failed | timed_out ─Revert─> reverting ─Reverted─> rolled_back
    timed_out ─Reverted─> rolled_back

``target_version`` is what the device is being moved to now: the new version, or after
``Revert`` the version it ran before (``previous_version``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

from hub.errors import IllegalTransition
from hub.rollouts.spec import RolloutSpec
from protocol.messages import MAX_REASON

Phase = Literal[
    "pending",
    "shadow",
    "baking",
    "awaiting_approval",
    "paused",
    "completed",
    "rolling_back",
    "rolled_back",
    "aborted",
]
LIVE: frozenset[Phase] = frozenset(
    {"pending", "shadow", "baking", "awaiting_approval", "paused", "rolling_back"}
)
"""Phases in which the rollout still acts on devices (and blocks a conflicting one)."""

SHADOW_STAGE = -1

# ---------------------------------------------------------------- rollout events


@dataclass(frozen=True)
class Start:
    """Begin with the first stage (no shadow stage)."""


@dataclass(frozen=True)
class StartShadow:
    """Begin with the shadow stage."""


@dataclass(frozen=True)
class Advance:
    """The stage passed: start the next one."""


@dataclass(frozen=True)
class AwaitApproval:
    """The stage passed; the next one waits for a human."""


@dataclass(frozen=True)
class Complete:
    """The last stage passed."""


@dataclass(frozen=True)
class Approve:
    """Operator: start the stage that awaits approval."""


@dataclass(frozen=True)
class Halt:
    """A gate failed: roll every touched device back."""

    reason: str


@dataclass(frozen=True)
class Pause:
    """Operator, or gates still inconclusive at the end of the extended bake."""

    reason: str


@dataclass(frozen=True)
class Resume:
    """Operator: carry on; ``override`` accepts the current stage's inconclusive gates."""

    override: bool = False


@dataclass(frozen=True)
class Abort:
    """Operator: stop here, leave devices as they are."""

    reason: str


@dataclass(frozen=True)
class RollBack:
    """Operator: roll every touched device back."""

    reason: str


@dataclass(frozen=True)
class Finish:
    """Every touched device is back (or timed out going back)."""


RolloutEvent = (
    Start
    | StartShadow
    | Advance
    | AwaitApproval
    | Complete
    | Approve
    | Halt
    | Pause
    | Resume
    | Abort
    | RollBack
    | Finish
)
OPERATOR_EVENTS = (Approve, Pause, Resume, Abort, RollBack)

RESUME: Phase = "paused"
"""Placeholder target of ``Resume``: the phase the rollout paused from."""

_STOP: dict[type[RolloutEvent], Phase] = {
    Halt: "rolling_back",
    RollBack: "rolling_back",
    Abort: "aborted",
}
_RUNNING: dict[type[RolloutEvent], Phase] = {
    **_STOP,
    Pause: "paused",
    Advance: "baking",
    AwaitApproval: "awaiting_approval",
}

ROLLOUT_TRANSITIONS: dict[Phase, dict[type[RolloutEvent], Phase]] = {
    "pending": {Start: "baking", StartShadow: "shadow", Abort: "aborted"},
    "shadow": dict(_RUNNING),
    "baking": {**_RUNNING, Complete: "completed"},
    "awaiting_approval": {**_STOP, Approve: "baking", Pause: "paused"},
    "paused": {**_STOP, Resume: RESUME},
    "rolling_back": {Finish: "rolled_back"},
    "completed": {RollBack: "rolling_back"},
    "aborted": {RollBack: "rolling_back"},
    "rolled_back": {},
}


@dataclass(frozen=True)
class Rollout:
    """One rollout's state, as the store keeps it (the spec never changes)."""

    rollout_id: str
    spec: RolloutSpec
    phase: Phase = "pending"
    stage: int = 0
    stage_started_ms: int = 0
    bake_started_ms: int | None = None
    paused_from: Phase | None = None
    override_stage: int | None = None
    reason: str = ""
    changed_ms: int = 0

    @property
    def stage_count(self) -> int:
        return len(self.spec.stages)


def step(rollout: Rollout, event: RolloutEvent, now_ms: int) -> Rollout:
    """The rollout after ``event`` at ``now_ms``.

    Raises:
        IllegalTransition: the table holds no move for ``event`` in ``rollout.phase``.
    """
    target = ROLLOUT_TRANSITIONS[rollout.phase].get(type(event))
    if target is None:
        raise IllegalTransition(rollout.phase, type(event).__name__, what="rollout")
    moved = replace(rollout, phase=target, changed_ms=now_ms)
    match event:
        case Start():
            return _enter(moved, 0, now_ms)
        case StartShadow():
            return _enter(moved, SHADOW_STAGE, now_ms)
        case Advance() | Approve():
            stage = rollout.stage + 1 if isinstance(event, Advance) else rollout.stage
            return _enter(moved, stage, now_ms)
        case AwaitApproval():
            return replace(moved, stage=rollout.stage + 1, bake_started_ms=None, reason="")
        case Halt(reason) | RollBack(reason) | Abort(reason):
            return replace(moved, reason=reason[:MAX_REASON], paused_from=None)
        case Pause(reason):
            return replace(moved, paused_from=rollout.phase, reason=reason[:MAX_REASON])
        case Resume(override):
            assert rollout.paused_from is not None  # only paused rollouts resume
            bake = rollout.bake_started_ms
            return replace(
                moved,
                phase=rollout.paused_from,
                paused_from=None,
                reason="",
                bake_started_ms=bake if bake is None or override else now_ms,
                override_stage=rollout.stage if override else rollout.override_stage,
            )
    return moved


def _enter(rollout: Rollout, stage: int, now_ms: int) -> Rollout:
    return replace(rollout, stage=stage, stage_started_ms=now_ms, bake_started_ms=None, reason="")


# ---------------------------------------------------------------- device progress

DeviceState = Literal[
    "pending", "updating", "succeeded", "failed", "timed_out", "reverting", "rolled_back"
]
TOUCHED_ACTIVE: frozenset[DeviceState] = frozenset(
    {"updating", "succeeded", "failed", "timed_out", "reverting"}
)


@dataclass(frozen=True)
class Assign:
    """Give the device ``version`` (the rollout's); it ran ``previous`` before."""

    version: int
    previous: int | None
    stage: int


@dataclass(frozen=True)
class Installed:
    """The device reports the new version active."""


@dataclass(frozen=True)
class Failed:
    """The device reported the install failed; ``retryable`` for transient failures."""

    reason: str
    retryable: bool


@dataclass(frozen=True)
class TimedOut:
    """No outcome within the per-device timeout."""


@dataclass(frozen=True)
class Retry:
    """Assign the new version again (a new assignment)."""


@dataclass(frozen=True)
class Revert:
    """Assign the device its previous version again (a new assignment)."""


@dataclass(frozen=True)
class Reverted:
    """The device reports its previous version active again."""


DeviceEvent = Assign | Installed | Failed | TimedOut | Retry | Revert | Reverted

DEVICE_TRANSITIONS: dict[DeviceState, dict[type[DeviceEvent], DeviceState]] = {
    "pending": {Assign: "updating"},
    "updating": {
        Installed: "succeeded",
        Failed: "failed",
        TimedOut: "timed_out",
        Revert: "reverting",
    },
    "failed": {Retry: "updating", Installed: "succeeded", Revert: "reverting"},
    "timed_out": {
        Retry: "updating",
        Installed: "succeeded",
        Revert: "reverting",
        Reverted: "rolled_back",
    },
    "succeeded": {Failed: "failed", Revert: "reverting"},
    "reverting": {Reverted: "rolled_back", TimedOut: "timed_out"},
    "rolled_back": {},
}


@dataclass(frozen=True)
class DeviceProgress:
    """One device's progress in one rollout.

    ``stage``: the stage that took it; ``attempts``: assignments of the new version so
    far; ``since_ms``: when it entered this state; ``reason``: why it failed; ``back``:
    set by ``Revert``, so a ``timed_out`` device is known to have timed out going back.
    """

    device_id: str
    state: DeviceState = "pending"
    target_version: int | None = None
    previous_version: int | None = None
    stage: int = 0
    attempts: int = 0
    since_ms: int = 0
    reason: str = ""
    retryable: bool = False
    back: bool = False


def advance(progress: DeviceProgress, event: DeviceEvent, now_ms: int) -> DeviceProgress:
    """The device's progress after ``event`` at ``now_ms``.

    Raises:
        IllegalTransition: the table holds no move for ``event`` in ``progress.state``.
    """
    target = DEVICE_TRANSITIONS[progress.state].get(type(event))
    if target is None:
        raise IllegalTransition(progress.state, type(event).__name__, what="device")
    forward_only = isinstance(event, Assign | Installed | Failed | Retry)
    if (progress.back and forward_only) or (not progress.back and isinstance(event, Reverted)):
        # the table's one guard: a device on its way back neither retries nor installs the
        # new version, and one going forward is not "reverted" before a Revert
        where = f"{progress.state} ({'back' if progress.back else 'forward'})"
        raise IllegalTransition(where, type(event).__name__, what="device")
    changes: dict[str, object] = {}
    match event:
        case Assign(version, previous, stage):
            changes = {"target_version": version, "previous_version": previous, "stage": stage}
            changes["attempts"] = 1
        case Retry():
            changes = {"attempts": progress.attempts + 1, "reason": "", "retryable": False}
        case Failed(reason, retryable):
            changes = {"reason": reason[:MAX_REASON], "retryable": retryable}
        case Revert():
            changes = {"target_version": progress.previous_version, "retryable": False}
            changes["back"] = True
        case Installed():
            changes = {"reason": "", "retryable": False}
    return replace(progress, state=target, since_ms=now_ms, **changes)  # type: ignore[arg-type]


OperatorEvent = Approve | Pause | Resume | Abort | RollBack


def operate(rollout: Rollout, event: OperatorEvent, now_ms: int) -> Rollout:
    """An operator's approve, pause, resume, abort or roll back (REST, CLI).

    Raises:
        IllegalTransition: not allowed in the rollout's phase (approve a rollout that is
            not awaiting approval, resume one that is not paused, abort a finished one).
    """
    if not isinstance(event, OPERATOR_EVENTS):
        raise IllegalTransition(rollout.phase, type(event).__name__, what="rollout")
    return step(rollout, event, now_ms)
