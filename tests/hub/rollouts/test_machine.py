"""The rollout and device state tables: whole-state snapshots, and every illegal move."""

from __future__ import annotations

from dataclasses import replace

import pytest

from hub.rollouts import IllegalTransition, RolloutSpec, ShadowStage, operate
from hub.rollouts.machine import (
    DEVICE_TRANSITIONS,
    ROLLOUT_TRANSITIONS,
    Abort,
    Advance,
    Approve,
    Assign,
    AwaitApproval,
    Complete,
    DeviceEvent,
    DeviceProgress,
    Failed,
    Finish,
    Halt,
    Installed,
    Pause,
    Resume,
    Retry,
    Revert,
    Reverted,
    RollBack,
    Rollout,
    RolloutEvent,
    Start,
    StartShadow,
    TimedOut,
    advance,
    step,
)
from tests.clock import EPOCH_MS

T0 = EPOCH_MS
SPEC = RolloutSpec("m", 2, shadow=ShadowStage())


def fresh() -> Rollout:
    return Rollout("r-1", SPEC, changed_ms=T0)


def test_start_enters_the_first_stage() -> None:
    assert step(fresh(), Start(), T0 + 5) == Rollout(
        "r-1", SPEC, phase="baking", stage=0, stage_started_ms=T0 + 5, changed_ms=T0 + 5
    )


def test_shadow_stage_is_stage_minus_one_and_advance_leaves_it_for_stage_zero() -> None:
    shadow = step(fresh(), StartShadow(), T0)
    assert (shadow.phase, shadow.stage) == ("shadow", -1)
    baking = step(replace(shadow, bake_started_ms=T0 + 1), Advance(), T0 + 9)
    assert (baking.phase, baking.stage, baking.stage_started_ms, baking.bake_started_ms) == (
        "baking",
        0,
        T0 + 9,
        None,
    )


def test_awaiting_approval_names_the_stage_that_waits_and_approve_starts_it() -> None:
    baking = step(fresh(), Start(), T0)
    waiting = step(baking, AwaitApproval(), T0 + 1)
    assert (waiting.phase, waiting.stage) == ("awaiting_approval", 1)
    approved = operate(waiting, Approve(), T0 + 2)
    assert approved == replace(
        waiting, phase="baking", stage=1, stage_started_ms=T0 + 2, changed_ms=T0 + 2
    )


def test_pause_and_resume_return_to_the_phase_with_a_fresh_bake() -> None:
    baking = replace(step(fresh(), Start(), T0), bake_started_ms=T0 + 10)
    paused = operate(baking, Pause("looking at a dashboard"), T0 + 20)
    assert (paused.phase, paused.paused_from, paused.reason) == (
        "paused",
        "baking",
        "looking at a dashboard",
    )
    resumed = operate(paused, Resume(), T0 + 30)
    assert resumed == replace(baking, bake_started_ms=T0 + 30, changed_ms=T0 + 30)


def test_resume_with_override_accepts_the_stage_as_it_stands() -> None:
    baked = replace(step(fresh(), Start(), T0), bake_started_ms=T0 + 1)
    paused = step(baked, Pause("inconclusive"), T0 + 2)
    resumed = operate(paused, Resume(override=True), T0 + 3)
    assert (resumed.override_stage, resumed.bake_started_ms) == (0, T0 + 1)


def test_halt_and_roll_back_lead_to_rolling_back_then_finish() -> None:
    halted = step(step(fresh(), Start(), T0), Halt("error_rate failed"), T0 + 1)
    assert (halted.phase, halted.reason) == ("rolling_back", "error_rate failed")
    assert step(halted, Finish(), T0 + 2).phase == "rolled_back"
    completed = step(step(fresh(), Start(), T0), Complete(), T0 + 1)
    assert operate(completed, RollBack("customer report"), T0 + 2).phase == "rolling_back"


@pytest.mark.parametrize(
    ("phase", "event"),
    [
        pytest.param("baking", Approve(), id="approve-while-baking"),
        pytest.param("baking", Resume(), id="resume-while-baking"),
        pytest.param("rolling_back", Abort("stop"), id="abort-a-rollback"),
        pytest.param("rolled_back", RollBack("again"), id="roll-back-twice"),
        pytest.param("completed", Pause("late"), id="pause-completed"),
        pytest.param("paused", Pause("twice"), id="pause-twice"),
    ],
)
def test_operator_events_the_table_forbids_raise_and_change_nothing(
    phase: str, event: object
) -> None:
    rollout = replace(fresh(), phase=phase, paused_from="baking" if phase == "paused" else None)  # type: ignore[arg-type]
    before = rollout
    with pytest.raises(IllegalTransition) as caught:
        operate(rollout, event, T0)  # type: ignore[arg-type]
    assert caught.value.status_hint == 409
    assert rollout == before


def test_operators_cannot_fire_the_planner_events() -> None:
    with pytest.raises(IllegalTransition, match="Advance"):
        operate(step(fresh(), Start(), T0), Advance(), T0)  # type: ignore[arg-type]


EVENTS: list[RolloutEvent] = [Start(), StartShadow(), Advance(), AwaitApproval(), Complete(),
                              Approve(), Halt("x"), Pause("x"), Resume(), Abort("x"),
                              RollBack("x"), Finish()]  # fmt: skip


@pytest.mark.parametrize("phase", list(ROLLOUT_TRANSITIONS))
def test_every_event_in_every_phase_follows_the_table_or_raises(phase: str) -> None:
    rollout = replace(fresh(), phase=phase, paused_from="baking" if phase == "paused" else None)  # type: ignore[arg-type]
    for event in EVENTS:
        target = ROLLOUT_TRANSITIONS[phase].get(type(event))  # type: ignore[index]
        if target is None:
            with pytest.raises(IllegalTransition):
                step(rollout, event, T0)
        else:
            moved = step(rollout, event, T0)
            assert moved.phase == ("baking" if isinstance(event, Resume) else target)


def progress(**kw: object) -> DeviceProgress:
    return replace(DeviceProgress("d1"), **kw)  # type: ignore[arg-type]


def test_device_assign_install_snapshot() -> None:
    updating = advance(progress(), Assign(2, 1, 0), T0)
    assert updating == DeviceProgress(
        "d1", "updating", target_version=2, previous_version=1, stage=0, attempts=1, since_ms=T0
    )
    assert advance(updating, Installed(), T0 + 1) == replace(
        updating, state="succeeded", since_ms=T0 + 1
    )


def test_device_retry_counts_attempts_and_clears_the_failure() -> None:
    failed = advance(advance(progress(), Assign(2, 1, 0), T0), Failed("failed: slow", True), T0 + 1)
    assert (failed.state, failed.reason, failed.retryable) == ("failed", "failed: slow", True)
    retried = advance(failed, Retry(), T0 + 2)
    assert (retried.state, retried.attempts, retried.reason, retried.retryable) == (
        "updating",
        2,
        "",
        False,
    )


def test_device_revert_points_back_and_cannot_then_install_or_retry() -> None:
    succeeded = advance(advance(progress(), Assign(2, 1, 0), T0), Installed(), T0)
    reverting = advance(succeeded, Revert(), T0 + 1)
    assert (reverting.state, reverting.target_version, reverting.back) == ("reverting", 1, True)
    timed_out = advance(reverting, TimedOut(), T0 + 2)
    for event in (Retry(), Installed()):
        with pytest.raises(IllegalTransition, match="back"):
            advance(timed_out, event, T0 + 3)
    assert advance(timed_out, Reverted(), T0 + 4).state == "rolled_back"


def test_a_device_going_forward_is_not_reverted_without_a_revert() -> None:
    timed_out = advance(advance(progress(), Assign(2, 1, 0), T0), TimedOut(), T0 + 1)
    with pytest.raises(IllegalTransition, match="forward"):
        advance(timed_out, Reverted(), T0 + 2)


def test_late_success_after_timeout_and_self_rollback_after_success() -> None:
    timed_out = advance(advance(progress(), Assign(2, 1, 0), T0), TimedOut(), T0 + 1)
    succeeded = advance(timed_out, Installed(), T0 + 2)
    assert succeeded.state == "succeeded"
    assert advance(succeeded, Failed("rolled_back: error rate", False), T0 + 3).state == "failed"


@pytest.mark.parametrize("state", list(DEVICE_TRANSITIONS))
def test_device_moves_outside_the_table_raise(state: str) -> None:
    events: list[DeviceEvent] = [
        Assign(2, 1, 0),
        Installed(),
        Failed("x", False),
        TimedOut(),
        Retry(),
        Revert(),
        Reverted(),
    ]
    for event in events:
        allowed = type(event) in DEVICE_TRANSITIONS[state]  # type: ignore[index]
        if not allowed:
            with pytest.raises(IllegalTransition):
                advance(progress(state=state, back=isinstance(event, Reverted)), event, T0)


def test_rolled_back_is_terminal() -> None:
    assert DEVICE_TRANSITIONS["rolled_back"] == {}
    assert ROLLOUT_TRANSITIONS["rolled_back"] == {}
