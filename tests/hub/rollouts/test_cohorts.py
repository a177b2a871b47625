"""Cohorts: a stable hash order, nested stages, pinned canaries, late joiners; conflicts."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hub.rollouts import (
    Covered,
    DeviceView,
    RolloutConflict,
    RolloutSpec,
    ShadowStage,
    Target,
    check_conflict,
    dry_run,
    order_key,
)
from hub.rollouts.cohorts import quota, sort_by_order, stage_quotas
from hub.rollouts.machine import Rollout


def devices(n: int, **tags: str) -> list[DeviceView]:
    return [DeviceView(f"dev-{i:04d}", dict(tags)) for i in range(n)]


def test_order_is_reproducible_and_depends_on_the_seed() -> None:
    fleet = devices(200)
    a = [d.device_id for d in sort_by_order(RolloutSpec("m", 2, seed=1), fleet)]
    again = [d.device_id for d in sort_by_order(RolloutSpec("m", 2, seed=1), list(reversed(fleet)))]
    other = [d.device_id for d in sort_by_order(RolloutSpec("m", 2, seed=2), fleet)]
    assert a == again
    assert a != other
    assert order_key(1, "dev-0001") == order_key(1, "dev-0001") != order_key(2, "dev-0001")


def test_dry_run_stages_are_nested_and_cover_the_target_once() -> None:
    plan = dry_run(RolloutSpec("m", 2, seed=9), devices(50))
    assert [len(s) for s in plan.stages] == [1, 4, 20, 25]  # 1, 5, 25, 50 cumulative
    flat = [d for stage in plan.stages for d in stage]
    assert sorted(flat) == [f"dev-{i:04d}" for i in range(50)]
    assert plan.target_size == 50


def test_dry_run_warns_of_stages_too_small_for_their_gates() -> None:
    small = dry_run(RolloutSpec("m", 2), devices(50))
    assert small.warnings == (
        "stage 1 (1%) holds 1 devices and leaves 49 for control; error_rate needs 5 on each"
        " side: it will pause for a human",
        "stage 1 (1%) holds 1 devices and leaves 49 for control; latency_p95 needs 5 on each"
        " side: it will pause for a human",
    )
    assert dry_run(RolloutSpec("m", 2), devices(500)).warnings == ()


def test_quotas_round_up_and_take_at_least_one() -> None:
    assert quota(1.0, 50) == 1
    assert quota(10.0, 50) == 5
    assert quota(10.0, 51) == 6
    assert quota(1.0, 0) == 0
    assert quota(33.3, 3) == 1


def test_pinned_canaries_come_first_and_all_go_in_the_first_stage() -> None:
    fleet = devices(100)
    lab = [DeviceView(f"lab-{i}", {"ring": "canary"}) for i in range(3)]
    spec = RolloutSpec("m", 2, canary_tags={"ring": "canary"})
    plan = dry_run(spec, [*fleet, *lab])
    assert sorted(plan.stages[0]) == ["lab-0", "lab-1", "lab-2"]  # 1% of 103 is 2; 3 pinned
    assert plan.pinned == 3
    assert stage_quotas(spec, 103, 3) == (3, 11, 52, 103)


def test_target_by_tags_and_by_ids() -> None:
    fleet = [*devices(10, site="a"), DeviceView("b-1", {"site": "b"})]
    by_tag = dry_run(RolloutSpec("m", 2, target=Target(tags={"site": "b"})), fleet)
    by_ids = dry_run(RolloutSpec("m", 2, target=Target(device_ids=("dev-0001", "b-1"))), fleet)
    assert by_tag.stages[0] == ("b-1",)
    assert sorted(d for s in by_ids.stages for d in s) == ["b-1", "dev-0001"]


def test_shadow_stage_takes_the_first_canaries_to_be() -> None:
    spec = RolloutSpec("m", 2, shadow=ShadowStage(10.0))
    plan = dry_run(spec, devices(50))
    assert len(plan.shadow) == 5
    assert plan.shadow[0] == plan.stages[0][0]


@given(st.sets(st.integers(0, 10_000), min_size=2, max_size=60), st.integers(0, 10_000))
def test_a_device_joining_later_moves_no_one_else(ids: set[int], joiner: int) -> None:
    spec = RolloutSpec("m", 2, seed=5)
    before = [d.device_id for d in sort_by_order(spec, [DeviceView(f"d{i}") for i in ids])]
    after = [
        d.device_id for d in sort_by_order(spec, [DeviceView(f"d{i}") for i in ids | {joiner}])
    ]
    assert [d for d in after if d in set(before)] == before


def live(rollout_id: str, spec: RolloutSpec, ids: set[str], phase: str = "baking") -> Covered:
    rollout = Rollout(rollout_id, spec, phase=phase, stage=1)  # type: ignore[arg-type]
    return Covered(rollout, frozenset(ids))


def test_a_second_rollout_of_the_model_on_the_same_devices_is_refused_with_its_reason() -> None:
    running = live(
        "r-7", RolloutSpec("churn", 3, target=Target(device_ids=("a", "b", "c"))), {"a", "b", "c"}
    )
    spec = RolloutSpec("churn", 4, target=Target(device_ids=("c", "d")))
    with pytest.raises(
        RolloutConflict,
        match=r"rollout r-7 \(churn v3, baking, stage 2\) already covers 1 of these devices: c",
    ) as caught:
        check_conflict(spec, {"c", "d"}, [running])
    assert caught.value.status_hint == 409


def test_other_models_and_finished_rollouts_do_not_conflict() -> None:
    other_model = live("r-1", RolloutSpec("vision", 1), {"a"})
    finished = live("r-2", RolloutSpec("churn", 1), {"a"}, phase="completed")
    check_conflict(RolloutSpec("churn", 2), {"a"}, [other_model, finished])


def test_tag_targets_that_could_share_a_future_device_conflict() -> None:
    site_a = live("r-3", RolloutSpec("churn", 3, target=Target(tags={"site": "a"})), set())
    with pytest.raises(RolloutConflict, match="when they enroll"):
        check_conflict(RolloutSpec("churn", 4, target=Target(tags={"hw": "rev2"})), set(), [site_a])
    check_conflict(RolloutSpec("churn", 4, target=Target(tags={"site": "b"})), set(), [site_a])
