"""The planner, tick by tick, over the simulated fleet (tests/hub/rollouts/fleet.py) and over
hand-built device views."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from hub.rollouts import (
    Abort,
    Approve,
    DeviceView,
    InstallReport,
    Pause,
    Plan,
    Resume,
    RevertTo,
    RollBack,
    RolloutSpec,
    ShadowProgress,
    ShadowStage,
    Stage,
    dry_run,
    operate,
    plan,
    tally,
)
from hub.rollouts.gates import DeviceMetrics
from hub.rollouts.machine import DeviceProgress, Rollout
from hub.rollouts.spec import GateSpec
from tests.clock import EPOCH_MS
from tests.hub.rollouts.fleet import NEW, OLD, TICK_MS, Behaviour, Fleet

MIN = 60_000
FINAL = Stage(100.0, bake_ms=0, gates=(GateSpec.default("update_success"),))


def spec(*stages: Stage, **kwargs: object) -> RolloutSpec:
    body = stages or (Stage(10.0, bake_ms=5 * MIN), Stage(50.0, bake_ms=5 * MIN))
    return RolloutSpec("m", NEW, stages=(*body, FINAL), **kwargs)  # type: ignore[arg-type]


def updating(fleet: Fleet) -> int:
    return sum(p.state == "updating" for p in fleet.progress.values())


def test_first_tick_starts_and_takes_the_first_stage_in_cohort_order() -> None:
    fleet = Fleet(RolloutSpec("m", NEW, seed=4), 50, seed=0)
    first = fleet.plan()
    assert first.rollout.phase == "baking"
    assert first.assign == dry_run(fleet.rollout.spec, fleet.views()).stages[0]
    assert first.timeline == ("start: pending -> baking stage 1",)
    assert [p.state for p in first.progress] == ["updating"]


def test_never_more_than_max_updating_devices_update_at_once() -> None:
    fleet = Fleet(spec(Stage(10.0, bake_ms=0), Stage(50.0, bake_ms=0), max_updating=7), 100, seed=1)
    peak = 0
    for _ in range(200):
        fleet.apply(fleet.plan())
        peak = max(peak, updating(fleet))
        if fleet.rollout.phase == "completed" and fleet.converged():
            break
        fleet.advance()
    assert fleet.converged()
    assert peak == 7


def test_planning_twice_gives_the_same_plan_and_never_assigns_a_device_twice() -> None:
    fleet = Fleet(spec(), 100, seed=2)
    views, metrics = fleet.views(), fleet.metrics()
    first = plan(fleet.rollout, views, metrics, fleet.now_ms)
    assert plan(fleet.rollout, views, metrics, fleet.now_ms) == first
    fleet.apply(first)
    again = fleet.plan()
    assert again.assign == ()
    assert again.rollout == first.rollout


@pytest.mark.parametrize("rollout_row_first", [True, False], ids=["rollout-first", "devices-only"])
def test_a_hub_killed_mid_apply_finishes_with_no_device_given_two_desired_states(
    rollout_row_first: bool,
) -> None:
    """Each tick the 'hub' dies after committing a random part of the plan (each device's
    progress row with its desired state, atomically; the rollout row first or never), then
    restarts and plans again from what it committed."""
    fleet = Fleet(spec(Stage(10.0, bake_ms=2 * MIN), Stage(50.0, bake_ms=2 * MIN)), 60, seed=3)
    rng = np.random.default_rng(0)
    desired_history: dict[str, list[int]] = {d: [OLD] for d in fleet.ids}
    for tick in range(300):
        full = fleet.plan()
        if tick % 3 == 0 and (full.assign or full.progress):
            kept = [p for p in full.progress if rng.random() < 0.5]
            ids = {p.device_id for p in kept}
            partial = Plan(
                rollout=full.rollout if rollout_row_first else fleet.rollout,
                assign=tuple(d for d in full.assign if d in ids),
                progress=tuple(kept),
            )
            fleet.apply(partial)
            fleet.apply(replan := fleet.plan())  # the restarted hub
            assert not set(replan.assign) & set(partial.assign)
        else:
            fleet.apply(full)
        for d in fleet.ids:
            wanted = int(fleet.desired[fleet.index[d]])
            if wanted != desired_history[d][-1]:
                desired_history[d].append(wanted)
        if fleet.rollout.phase == "completed" and fleet.converged():
            break
        fleet.advance()
    assert fleet.rollout.phase == "completed"
    assert fleet.converged()
    assert all(history == [OLD, NEW] for history in desired_history.values())
    assert int(fleet.assignments.max()) == 1


def test_offline_devices_are_skipped_then_converge_after_they_reconnect() -> None:
    fleet = Fleet(spec(), 100, seed=4, offline_share=0.1, back_online_tick=40)
    offline = {d for d, on in zip(fleet.ids, fleet.online, strict=True) if not on}
    assert len(offline) >= 5
    fleet.run()
    completed_at = next(i for i, p in enumerate(fleet.plans) if p.rollout.phase == "completed")
    assert completed_at < 40  # the rollout did not wait for them
    assert fleet.converged()
    assert all(fleet.progress[d].state == "succeeded" for d in offline)
    assert all(fleet.progress[d].attempts == 1 for d in offline)  # never timed out


def test_a_device_joining_the_target_mid_rollout_gets_the_version() -> None:
    fleet = Fleet(spec(), 50, seed=5)
    for _ in range(6):
        fleet.apply(fleet.plan())
        fleet.advance()
    fleet.join("late-1")
    fleet.run()
    assert fleet.rollout.phase == "completed"
    assert fleet.active[fleet.index["late-1"]] == NEW


def short_timeout(fleet: Fleet) -> None:
    rollout_spec = replace(fleet.rollout.spec, device_timeout_ms=3 * MIN)
    fleet.rollout = replace(fleet.rollout, spec=rollout_spec)


def test_a_device_that_never_reports_times_out_and_is_retried() -> None:
    fleet = Fleet(spec(Stage(5.0, bake_ms=0)), 20, seed=6)
    short_timeout(fleet)
    fleet.apply(fleet.plan())
    (first,) = fleet.plans[0].assign  # 5 % of 20
    fleet.eta[fleet.index[first]] = 10**9  # online, but the install never finishes
    for _ in range(3):
        fleet.advance()
        fleet.apply(fleet.plan())
    assert fleet.progress[first].state == "updating"
    assert fleet.progress[first].attempts == 2
    assert fleet.assignments[fleet.index[first]] == 2


def test_a_device_offline_past_its_timeout_succeeds_late_from_its_retained_state() -> None:
    fleet = Fleet(spec(Stage(5.0, bake_ms=0)), 20, seed=6)
    short_timeout(fleet)
    fleet.apply(fleet.plan())
    (first,) = fleet.plans[0].assign
    fleet.online[fleet.index[first]] = False
    for _ in range(4):
        fleet.advance()
        fleet.apply(fleet.plan())
    assert fleet.progress[first].state == "timed_out"  # offline: not retried
    assert fleet.rollout.phase == "baking"  # the stage does not wait for it
    fleet.online[fleet.index[first]] = True
    fleet.advance()  # it reconnects, finds its retained desired state and installs
    fleet.apply(fleet.plan())
    assert fleet.progress[first].state == "succeeded"
    assert fleet.progress[first].attempts == 1


def test_a_failed_gate_reverts_every_touched_device_by_a_new_assignment() -> None:
    fleet = Fleet(spec(), 100, seed=7, behaviour=Behaviour(error_delta=0.2))
    fleet.run()
    reverts = [r for p in fleet.plans for r in p.revert]
    assert {r.device_id for r in reverts} == set(fleet.progress)
    assert all(r.version == OLD for r in reverts)
    assert fleet.rollout.phase == "rolled_back"
    assert all(p.state == "rolled_back" for p in fleet.progress.values())
    assert np.all(fleet.active == OLD)


def test_a_stage_with_approval_waits_for_a_human() -> None:
    stages = (Stage(10.0, bake_ms=MIN), Stage(50.0, bake_ms=MIN, approval=True))
    fleet = Fleet(spec(*stages), 50, seed=8)
    for _ in range(40):
        fleet.apply(fleet.plan())
        fleet.advance()
    assert (fleet.rollout.phase, fleet.rollout.stage) == ("awaiting_approval", 1)
    assert sum(a > 0 for a in fleet.assignments) == 5
    fleet.rollout = operate(fleet.rollout, Approve(), fleet.now_ms)
    fleet.run()
    assert fleet.rollout.phase == "completed"


def test_inconclusive_gates_extend_the_bake_then_pause_never_pass_or_halt() -> None:
    stage = Stage(10.0, bake_ms=5 * MIN, extend_ms=10 * MIN)
    fleet = Fleet(spec(stage), 50, seed=9, inferences_per_tick=0)  # no traffic, no evidence
    fleet.run()
    rollout = fleet.rollout
    assert (rollout.phase, rollout.paused_from, rollout.stage) == ("paused", "baking", 0)
    assert "error_rate" in rollout.reason
    assert "latency_p95" in rollout.reason
    pause_at = rollout.changed_ms
    bake_started = next(p.rollout.bake_started_ms for p in fleet.plans if p.rollout.bake_started_ms)
    assert pause_at - bake_started == 15 * MIN
    assert not any(p.revert for p in fleet.plans)
    # a human accepts the inconclusive stage as it stands: it advances at once
    fleet.rollout = operate(rollout, Resume(override=True), fleet.now_ms)
    fleet.advance()
    fleet.apply(fleet.plan())
    assert (fleet.rollout.phase, fleet.rollout.stage) == ("baking", 1)
    assert fleet.plans[-1].timeline == ("advance: baking stage 1 -> baking stage 2",)


def test_a_paused_rollout_still_halts_when_a_gate_fails() -> None:
    fleet = Fleet(spec(), 100, seed=10, behaviour=Behaviour(error_delta=0.3))
    fleet.apply(fleet.plan())
    fleet.rollout = operate(fleet.rollout, Pause("lunch"), fleet.now_ms)
    for _ in range(20):
        fleet.advance()
        fleet.apply(fleet.plan())
    assert fleet.rollout.phase == "rolled_back"
    assert "error_rate failed" in fleet.rollout.reason
    assert np.all(fleet.active == OLD)


def test_abort_stops_assigning_and_leaves_devices_where_they_are() -> None:
    fleet = Fleet(spec(Stage(10.0, bake_ms=0), Stage(50.0, bake_ms=30 * MIN)), 50, seed=11)
    for _ in range(8):
        fleet.apply(fleet.plan())
        fleet.advance()
    fleet.rollout = operate(fleet.rollout, Abort("wrong model"), fleet.now_ms)
    desired, assignments = fleet.desired.copy(), fleet.assignments.copy()
    for _ in range(10):
        p = fleet.plan()
        assert not p.assign
        assert not p.revert
        fleet.apply(p)
        fleet.advance()
    assert np.array_equal(fleet.desired, desired)
    assert np.array_equal(fleet.assignments, assignments)
    assert 0 < int(np.sum(fleet.active == NEW)) < 50
    assert fleet.rollout.phase == "aborted"


def test_an_operator_rolls_back_a_completed_rollout() -> None:
    fleet = Fleet(spec(), 60, seed=12)
    fleet.run()
    assert fleet.converged()
    fleet.rollout = operate(fleet.rollout, RollBack("customer complaint"), fleet.now_ms)
    fleet.run()
    assert fleet.rollout.phase == "rolled_back"
    assert np.all(fleet.active == OLD)


T0 = EPOCH_MS


def single(progress: DeviceProgress | None, **view: object) -> DeviceView:
    return DeviceView("d1", progress=progress, **view)  # type: ignore[arg-type]


def baking(**kwargs: object) -> Rollout:
    rollout_spec = spec(Stage(50.0, gates=(GateSpec.default("update_success"),)), **kwargs)
    return Rollout("r", rollout_spec, phase="baking", stage=0, stage_started_ms=T0)


def test_transient_failures_are_retried_until_retries_run_out() -> None:
    rollout = baking(retries=1)
    p = DeviceProgress("d1", "updating", NEW, OLD, 0, attempts=1, since_ms=T0)
    report = InstallReport(NEW, "failed", "download interrupted", T0 + 10)
    first = plan(rollout, [single(p, active_version=OLD, report=report)], {}, T0 + 20)
    assert first.assign == ("d1",)
    assert first.progress[0].attempts == 2
    later = InstallReport(NEW, "failed", "download interrupted", T0 + 30)
    second = plan(
        first.rollout, [single(first.progress[0], active_version=OLD, report=later)], {}, T0 + 40
    )
    assert second.assign == ()
    assert (second.progress[0].state, second.progress[0].reason) == (
        "failed",
        "failed: download interrupted",
    )


def test_a_refused_install_is_not_retried() -> None:
    p = DeviceProgress("d1", "updating", NEW, OLD, 0, attempts=1, since_ms=T0)
    report = InstallReport(NEW, "refused", "content_mismatch", T0 + 1)
    result = plan(baking(), [single(p, active_version=OLD, report=report)], {}, T0 + 2)
    assert result.assign == ()
    assert result.progress[0].retryable is False


def test_a_failure_reported_before_the_current_attempt_is_ignored() -> None:
    p = DeviceProgress("d1", "updating", NEW, OLD, 0, attempts=2, since_ms=T0 + 100)
    stale = InstallReport(NEW, "failed", "from attempt 1", T0 + 50)
    result = plan(baking(), [single(p, active_version=OLD, report=stale)], {}, T0 + 200)
    assert result.progress == ()


def test_a_device_still_watching_the_new_version_keeps_the_stage_unresolved() -> None:
    p = DeviceProgress("d1", "updating", NEW, OLD, 0, attempts=1, since_ms=T0)
    watching = plan(baking(), [single(p, active_version=NEW, watching=True)], {}, T0 + 10)
    assert watching.progress == ()
    assert watching.rollout.phase == "baking"
    assert watching.rollout.bake_started_ms is None
    committed = plan(baking(), [single(p, active_version=NEW)], {}, T0 + 20)
    assert committed.progress[0].state == "succeeded"


def test_a_device_watching_past_its_timeout_times_out() -> None:
    p = DeviceProgress("d1", "updating", NEW, OLD, 0, attempts=1, since_ms=T0)
    late = T0 + baking().spec.device_timeout_ms
    result = plan(baking(retries=0), [single(p, active_version=NEW, watching=True)], {}, late)
    assert result.progress[0].state == "timed_out"


def test_a_device_that_ran_nothing_is_cleared_on_rollback() -> None:
    p = DeviceProgress("d1", "succeeded", NEW, None, 0, attempts=1, since_ms=T0)
    rollout = replace(baking(), phase="rolling_back")
    result = plan(rollout, [single(p, active_version=NEW)], {}, T0 + 1)
    assert result.revert == (RevertTo("d1", None),)
    assert result.progress[0].state == "rolled_back"
    assert result.rollout.phase == "rolled_back"


def test_tally_counts_each_stage_by_state() -> None:
    fleet = Fleet(spec(Stage(10.0, bake_ms=30 * MIN)), 50, seed=13)
    for _ in range(4):
        fleet.apply(fleet.plan())
        fleet.advance()
    counts = tally(fleet.rollout, fleet.views())
    assert counts[0].counts["succeeded"] == 5
    assert counts[0].counts["pending"] == 0
    assert counts[1].counts["pending"] == 45
    assert sum(sum(c.counts.values()) for c in counts) == 50
    assert fleet.now_ms - EPOCH_MS == 4 * TICK_MS


def test_tally_tells_the_updating_devices_that_already_watch_the_new_version() -> None:
    p = DeviceProgress("d1", "updating", NEW, OLD, 0, attempts=1, since_ms=T0)
    [first, *_] = tally(baking(), [single(p, active_version=NEW, watching=True)])
    assert (first.counts["updating"], first.watching) == (1, 1)
    [first, *_] = tally(baking(), [single(p, active_version=OLD)])  # still downloading
    assert (first.counts["updating"], first.watching) == (1, 0)


def test_a_shadow_its_device_refuses_is_stopped_with_its_reason_and_replaced() -> None:
    shadowed = RolloutSpec("m", NEW, stages=(FINAL,), shadow=ShadowStage(30.0), seed=3)
    views = [DeviceView(f"d{i}", active_version=OLD) for i in range(10)]
    first = plan(Rollout("r-1", shadowed), views, {}, EPOCH_MS)
    assert first.rollout.phase == "shadow"
    assert len(first.shadow_start) == 3
    started = {s.device_id: s for s in first.shadows}
    refuser, other = first.shadow_start[0], first.shadow_start[1]
    later = EPOCH_MS + MIN
    refused = InstallReport(NEW, "refused", "model_unhealthy: NaN", received_ms=later)
    stale = replace(refused, received_ms=EPOCH_MS - 1)  # from before this shadow started
    ticked = [
        replace(v, shadow=started.get(v.device_id), shadow_report={
            refuser: refused, other: stale}.get(v.device_id))
        for v in views
    ]  # fmt: skip
    second = plan(first.rollout, ticked, {}, later + 1)
    assert second.shadow_stop == (refuser,)
    assert len(second.shadow_start) == 1
    assert second.shadow_start[0] not in started
    assert f"shadow refused by {refuser}: model_unhealthy: NaN" in second.timeline
    assert all(isinstance(s, ShadowProgress) for s in second.shadows)


def test_a_shadow_whose_download_failed_keeps_running_for_the_agent_to_retry() -> None:
    shadowed = RolloutSpec("m", NEW, stages=(FINAL,), shadow=ShadowStage(30.0), seed=3)
    views = [DeviceView(f"d{i}", active_version=OLD) for i in range(10)]
    first = plan(Rollout("r-1", shadowed), views, {}, EPOCH_MS)
    started = {s.device_id: s for s in first.shadows}
    failed = InstallReport(NEW, "failed", "stalled", received_ms=EPOCH_MS + MIN)
    ticked = [
        replace(v, shadow=started.get(v.device_id),
                shadow_report=failed if v.device_id in started else None)
        for v in views
    ]  # fmt: skip
    second = plan(first.rollout, ticked, {}, EPOCH_MS + MIN + 1)
    assert second.shadow_stop == ()
    assert second.shadow_start == ()


def test_a_shadow_silent_past_the_device_timeout_is_stopped_and_replaced() -> None:
    shadowed = RolloutSpec("m", NEW, stages=(FINAL,), shadow=ShadowStage(30.0), seed=3)
    views = [DeviceView(f"d{i}", active_version=OLD) for i in range(10)]
    first = plan(Rollout("r-1", shadowed), views, {}, EPOCH_MS)
    started = {s.device_id: s for s in first.shadows}
    stuck, quiet, talking = first.shadow_start
    failed = InstallReport(NEW, "failed", "stalled", received_ms=EPOCH_MS + MIN)
    ticked = [
        replace(v, shadow=started.get(v.device_id),
                shadow_report=failed if v.device_id == stuck else None)
        for v in views
    ]  # fmt: skip
    metrics = {talking: DeviceMetrics(shadow_inputs=(4, 1), shadow_agreed=(4, 1))}
    timeout = EPOCH_MS + shadowed.device_timeout_ms
    before = plan(first.rollout, ticked, metrics, timeout - 1)
    assert before.shadow_stop == ()
    after = plan(first.rollout, ticked, metrics, timeout)
    assert set(after.shadow_stop) == {stuck, quiet}
    assert len(after.shadow_start) == 2
    assert not set(after.shadow_start) & set(started)
    assert f"shadow timed out on {stuck}: no shadow inputs in 1800 s (last: failed: stalled)" in (
        after.timeline
    )
    assert f"shadow timed out on {quiet}: no shadow inputs in 1800 s" in after.timeline
