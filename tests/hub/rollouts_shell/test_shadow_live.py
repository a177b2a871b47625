"""Issue 12's shadow stage with real agents on a real broker: a version whose outputs are
valid probabilities under two swapped labels is caught before anything is served, and a
good version passes the shadow stage and goes on (10 agents in ``make test``, 50 ``slow``).

v4 is v1 with classes 0 and 1 swapped (:func:`tests.models.swap_classes`); v5 is v1 with
its weights moved by noise of 1e-3 (:func:`tests.models.nudged`), which agrees with v1 on
nearly every row. Every device serves v1 first.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from hub.fleet import rollouts
from hub.rollouts import RolloutSpec, ShadowStage, Stage
from hub.rollouts.spec import GateSpec
from tests import models
from tests.brokers import BrokerRunner
from tests.hub.rollouts_shell.live import MODEL, Fleet, Load, eventually, live_fleet

SUCCESS = (GateSpec.default("update_success"),)
SWAPPED, GOOD = 4, 5


def extra() -> list[bytes]:
    v1 = models.gemm_classifier()
    return [models.swap_classes(v1), models.nudged(v1)]


def spec(version: int) -> RolloutSpec:
    return RolloutSpec(
        MODEL,
        version,
        stages=(
            Stage(50, bake_ms=300, extend_ms=0, gates=SUCCESS),
            Stage(100, bake_ms=0, gates=SUCCESS),
        ),
        shadow=ShadowStage(percent=30, bake_ms=300, extend_ms=60_000),
        device_timeout_ms=30_000,
        seed=11,
    )


def run_to_end(fleet: Fleet, rollout_id: str, timeout_s: float = 120.0) -> str:
    ctx = fleet.context
    ends = ("completed", "rolled_back", "paused", "aborted")
    eventually(lambda: rollouts.get(ctx, rollout_id).rollout.phase in ends, "the rollout ends",
               timeout_s)  # fmt: skip
    return rollouts.get(ctx, rollout_id).rollout.phase


def timeline(fleet: Fleet, rollout_id: str) -> str:
    return "\n".join(t.line for t in fleet.context.store.rollouts.timeline(rollout_id))


def served_assignments(fleet: Fleet, version: int) -> list[str]:
    """Devices ever given ``version`` to serve (a ``desired.set`` audit entry)."""
    entries = fleet.context.store.audit.page(action="desired.set", limit=10_000).items
    return [e.target for e in entries if json.loads(e.detail or "{}").get("version") == version]


def run_under_load(fleet: Fleet, version: int) -> tuple[str, str]:
    """A rollout of ``version`` run to its end while every device predicts: its id and how
    it ended."""
    load = Load(fleet.devices, rows=4)
    load.start()
    try:
        rollout_id = rollouts.create(fleet.context, spec(version), actor="test").rollout.rollout_id
        return rollout_id, run_to_end(fleet, rollout_id)
    finally:
        load.stop()


@pytest.mark.parametrize("count", [10, pytest.param(50, marks=pytest.mark.slow)])
def test_a_version_with_two_classes_swapped_halts_in_the_shadow_stage_and_is_never_served(
    tmp_path: Path, mosquitto_broker: BrokerRunner, count: int
) -> None:
    with live_fleet(tmp_path, mosquitto_broker, count, extra()) as fleet:
        ctx = fleet.context
        rollout_id, outcome = run_under_load(fleet, SWAPPED)
        assert outcome == "rolled_back", timeline(fleet, rollout_id)
        found = rollouts.get(ctx, rollout_id).rollout
        assert found.stage == -1, "halted in the shadow stage"
        assert "shadow_agreement failed" in found.reason
        shadows = ctx.store.rollouts.shadows(rollout_id)
        assert len(shadows) >= 3
        assert ctx.store.rollouts.progress(rollout_id) == [], "no device was touched"
        assert served_assignments(fleet, SWAPPED) == []
        assert all(fleet.serving(d) == 1 for d in fleet.devices)
        assert all(ctx.store.devices.get(d).active_version == 1 for d in fleet.devices)
        eventually(
            lambda: all(d.manager.shadow.entry is None for d in fleet.devices.values()),
            "every shadow stopped on the devices",
        )


@pytest.mark.parametrize("count", [10, pytest.param(50, marks=pytest.mark.slow)])
def test_a_good_version_passes_the_shadow_stage_then_the_next_stages(
    tmp_path: Path, mosquitto_broker: BrokerRunner, count: int
) -> None:
    with live_fleet(tmp_path, mosquitto_broker, count, extra()) as fleet:
        rollout_id, outcome = run_under_load(fleet, GOOD)
        assert outcome == "completed", timeline(fleet, rollout_id)
        text = timeline(fleet, rollout_id)
        assert "gate shadow_agreement at shadow stage: inconclusive -> pass" in text
        assert "advance: shadow -> baking stage 1" in text
        eventually(lambda: all(fleet.serving(d) == GOOD for d in fleet.devices), "all on v5")
        assert sorted(served_assignments(fleet, GOOD)) == sorted(fleet.devices)


def test_a_shadow_the_devices_refuse_is_stopped_with_their_reason_and_never_waited_for(
    tmp_path: Path, mosquitto_broker: BrokerRunner
) -> None:
    """v4 regresses (one output, no classes): agents refuse to run it as a shadow, and
    say why in their state reports; the hub stops each refused shadow, tries the next
    device, writes the reason in the timeline, and pauses the stage when none is left."""
    regressor = models.matmul_add_regressor(n_features=4, n_outputs=1)
    with live_fleet(tmp_path, mosquitto_broker, 4, [regressor]) as fleet:
        ctx = fleet.context
        refused = replace(spec(4), shadow=ShadowStage(percent=50, bake_ms=300, extend_ms=1_000))
        rollout_id = rollouts.create(ctx, refused, actor="test").rollout.rollout_id
        assert run_to_end(fleet, rollout_id, timeout_s=60) == "paused", timeline(fleet, rollout_id)
        text = timeline(fleet, rollout_id)
        for device_id in fleet.devices:
            assert f"shadow refused by {device_id}: " in text, text
        assert "does not classify" in text
        shadows = ctx.store.rollouts.shadows(rollout_id)
        assert len(shadows) == 4
        assert all(s.state == "stopped" for s in shadows)
        assert served_assignments(fleet, 4) == []
