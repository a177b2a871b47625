"""Issue 12's statistical acceptance, as seeded simulations of whole rollouts through the
real planner and gates (tests/hub/rollouts/fleet.py: noisy devices, a fleet-wide drift).

Run with ``pytest -s`` to see the rates. For contrast, the good-version run also counts
how often a per-inference two-proportion z-test at the same ticks (what a per-request
canary judge does) would have failed the same rollouts.
"""

from __future__ import annotations

import math

import numpy as np

from hub.rollouts import RolloutSpec, ShadowStage, Stage
from hub.rollouts.spec import GateSpec
from tests.hub.rollouts.fleet import NEW, OLD, Behaviour, Fleet

MIN = 60_000
FINAL = Stage(100.0, bake_ms=0, gates=(GateSpec.default("update_success"),))


def staged(*percents: float, bake_min: int = 5, **kwargs: object) -> RolloutSpec:
    stages = tuple(Stage(p, bake_ms=bake_min * MIN, extend_ms=2 * bake_min * MIN) for p in percents)
    return RolloutSpec("m", NEW, stages=(*stages, FINAL), max_updating=1000, **kwargs)  # type: ignore[arg-type]


def naive_z_fails(fleet: Fleet) -> bool:
    """Per-inference z-test, canaries' pooled errors against the control's, at 5 %."""
    serving = fleet.active == NEW
    if serving.sum() == 0 or (~serving).sum() == 0:
        return False
    e1, n1 = fleet.errors[serving].sum(), fleet.inferences[serving].sum()
    e0, n0 = fleet.errors[~serving].sum(), fleet.inferences[~serving].sum()
    if min(n1, n0) == 0:
        return False
    pooled = (e1 + e0) / (n1 + n0)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n0)) or 1.0
    return bool((e1 / n1 - e0 / n0) / se > 1.645)


def test_good_version_is_falsely_failed_in_at_most_5_percent_of_rollouts() -> None:
    runs, halted, paused, naive = 500, 0, 0, 0
    spec = staged(10, 50)
    for seed in range(runs):
        fleet = Fleet(spec, 100, seed=seed)
        flagged = False
        for _ in range(200):
            fleet.apply(fleet.plan())
            flagged = flagged or naive_z_fails(fleet)
            if fleet.rollout.phase in ("completed", "rolled_back", "paused"):
                break
            fleet.advance()
        halted += fleet.rollout.phase == "rolled_back"
        paused += fleet.rollout.phase == "paused"
        naive += flagged
    print(
        f"\ngood version, {runs} rollouts of 100 devices (10% -> 50% -> 100%), gates at every"
        f" tick: falsely failed {halted / runs:.1%}, paused as inconclusive {paused / runs:.1%};"
        f" a per-inference z-test at the same ticks would have failed {naive / runs:.1%}"
    )
    assert halted / runs <= 0.05


def test_five_point_error_rise_is_caught_within_the_first_stage_of_30_canaries() -> None:
    runs, caught = 500, 0
    spec = staged(10, 50)
    ticks: list[int] = []
    for seed in range(runs):
        fleet = Fleet(spec, 300, seed=seed, behaviour=Behaviour(error_delta=0.05))
        fleet.run()
        if fleet.halted_at == 0 and fleet.rollout.phase == "rolled_back":
            caught += 1
            ticks.append(fleet.tick_no)
    print(
        f"\n+5 points of error rate, first stage of 30 canaries (10% of 300): caught in that"
        f" stage in {caught / runs:.1%} of {runs} rollouts (median {np.median(ticks):.0f} ticks"
        " of a minute to rolled back)"
    )
    assert caught / runs >= 0.90


def test_version_failing_the_health_check_halts_at_the_first_stage_and_all_go_back() -> None:
    fleet = Fleet(staged(10, 50), 50, seed=7, behaviour=Behaviour(healthy=False))
    rollout = fleet.run()
    assert (rollout.phase, fleet.halted_at) == ("rolled_back", 0)
    assert "update_success failed" in rollout.reason
    assert np.all(fleet.active == OLD)
    assert np.all(fleet.desired == OLD)
    assert max(p.stage for p in fleet.progress.values()) == 0


def test_version_raising_the_error_rate_halts_at_the_first_stage_and_all_go_back() -> None:
    fleet = Fleet(staged(10, 50), 50, seed=3, behaviour=Behaviour(error_delta=0.10))
    rollout = fleet.run()
    assert (rollout.phase, fleet.halted_at) == ("rolled_back", 0)
    assert "error_rate failed" in rollout.reason
    assert fleet.served_at_halt == 5
    assert np.all(fleet.active == OLD)


def test_swapped_classes_are_caught_in_the_shadow_stage_before_anything_is_served() -> None:
    spec = staged(10, 50, shadow=ShadowStage(10.0, bake_ms=5 * MIN, extend_ms=10 * MIN))
    fleet = Fleet(spec, 50, seed=11, behaviour=Behaviour(swapped=(1, 2)))
    rollout = fleet.run()
    assert rollout.phase == "rolled_back"
    assert "shadow_agreement failed" in rollout.reason
    assert not any(p.assign for p in fleet.plans)
    assert np.all(fleet.active == OLD)
    assert all(s.state == "stopped" for s in fleet.shadows.values())
    assert len(fleet.shadows) == 5


def test_good_version_passes_the_shadow_stage_then_goes_10_50_100() -> None:
    spec = staged(10, 50, shadow=ShadowStage(10.0, bake_ms=5 * MIN, extend_ms=10 * MIN))
    fleet = Fleet(spec, 50, seed=5)
    rollout = fleet.run()
    lines = [line for p in fleet.plans for line in p.timeline]
    assert rollout.phase == "completed", lines
    assert fleet.converged()
    assert [line.split(":")[0] for line in lines] == [
        "startshadow",
        "advance",
        "advance",
        "advance",
        "complete",
    ]
