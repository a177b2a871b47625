"""Issue 12's acceptance with real agents on a real broker (a small fleet in ``make test``;
the >= 50-agent variants are ``slow``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from hub.fleet import rollouts
from hub.fleet.rollout_inputs import device_metrics, device_views
from hub.rollouts import Rollout, RolloutSpec, Stage
from hub.rollouts.spec import GateSpec
from tests.brokers import BrokerRunner
from tests.hub.rollouts_shell.live import MODEL, Fleet, Load, eventually, live_fleet

SUCCESS = (GateSpec.default("update_success"),)
BEHAVIOUR = (*SUCCESS, GateSpec.default("error_rate"))


def spec(version: int, *stages: Stage) -> RolloutSpec:
    return RolloutSpec(MODEL, version, stages=stages, device_timeout_ms=30_000, seed=11)


def run_to_end(fleet: Fleet, rollout_id: str, timeout_s: float = 90.0) -> str:
    ctx = fleet.context
    ends = ("completed", "rolled_back", "paused", "aborted")
    eventually(lambda: rollouts.get(ctx, rollout_id).rollout.phase in ends, "the rollout ends",
               timeout_s)  # fmt: skip
    return rollouts.get(ctx, rollout_id).rollout.phase


def timeline(fleet: Fleet, rollout_id: str) -> str:
    return "\n".join(t.line for t in fleet.context.store.rollouts.timeline(rollout_id))


@pytest.mark.parametrize("count", [10, pytest.param(50, marks=pytest.mark.slow)])
def test_a_good_version_goes_10_50_100_and_the_whole_target_ends_on_it(
    tmp_path: Path, mosquitto_broker: BrokerRunner, count: int, database: str
) -> None:
    """On both stores (the ``database`` fixture: SQLite, PostgreSQL)."""
    with live_fleet(tmp_path, mosquitto_broker, count, database=database) as fleet:
        load = Load(fleet.devices)
        load.start()
        try:
            good = spec(
                2,
                Stage(10, bake_ms=500, extend_ms=0, gates=SUCCESS),
                Stage(50, bake_ms=500, extend_ms=60_000, gates=BEHAVIOUR),
                Stage(100, bake_ms=0, gates=SUCCESS),
            )
            rollout_id = rollouts.create(fleet.context, good, actor="test").rollout.rollout_id
            assert run_to_end(fleet, rollout_id) == "completed", timeline(fleet, rollout_id)
        finally:
            load.stop()
        eventually(lambda: all(fleet.serving(d) == 2 for d in fleet.devices), "all on v2")
        text = timeline(fleet, rollout_id)
        assert "advance: baking stage 1 -> baking stage 2" in text
        assert "advance: baking stage 2 -> baking stage 3" in text
        assert "gate error_rate at stage 2: inconclusive -> pass" in text


@pytest.mark.parametrize("count", [10, pytest.param(50, marks=pytest.mark.slow)])
def test_a_version_failing_the_devices_health_check_halts_at_the_first_stage_and_goes_back(
    tmp_path: Path, mosquitto_broker: BrokerRunner, count: int
) -> None:
    with live_fleet(tmp_path, mosquitto_broker, count) as fleet:
        load = Load(fleet.devices, bad_share=1.0)
        load.start()
        try:
            bad = spec(
                3,
                Stage(20, bake_ms=500, extend_ms=0, gates=SUCCESS),
                Stage(100, bake_ms=0, gates=SUCCESS),
            )
            rollout_id = rollouts.create(fleet.context, bad, actor="test").rollout.rollout_id
            assert run_to_end(fleet, rollout_id) == "rolled_back", timeline(fleet, rollout_id)
        finally:
            load.stop()
        touched = fleet.context.store.rollouts.progress(rollout_id)
        assert len(touched) == count // 5, "only the first stage's devices were touched"
        assert all(p.state == "rolled_back" for p in touched)
        assert all(fleet.serving(d) == 1 for d in fleet.devices)
        assert "update_success failed" in rollouts.get(fleet.context, rollout_id).rollout.reason


@pytest.mark.parametrize("count", [10, pytest.param(50, marks=pytest.mark.slow)])
def test_a_version_raising_the_error_rate_halts_at_the_first_stage_and_goes_back(
    tmp_path: Path, mosquitto_broker: BrokerRunner, count: int
) -> None:
    with live_fleet(tmp_path, mosquitto_broker, count) as fleet:
        load = Load(fleet.devices, bad_share=0.25)
        load.start()
        try:
            raising = spec(
                3,
                Stage(50, bake_ms=500, extend_ms=60_000, gates=BEHAVIOUR),
                Stage(100, bake_ms=0, gates=SUCCESS),
            )
            ctx = fleet.context
            rollout_id = rollouts.create(ctx, raising, actor="test").rollout.rollout_id
            assert run_to_end(fleet, rollout_id) == "rolled_back", timeline(fleet, rollout_id)
        finally:
            load.stop()
        touched = fleet.context.store.rollouts.progress(rollout_id)
        assert len(touched) == count // 2
        eventually(lambda: all(fleet.serving(d) == 1 for d in fleet.devices), "all back on v1")
        assert "error_rate failed" in rollouts.get(ctx, rollout_id).rollout.reason


def test_offline_devices_converge_after_they_reconnect_and_a_device_that_joins_gets_it(
    tmp_path: Path, mosquitto_broker: BrokerRunner
) -> None:
    with live_fleet(tmp_path, mosquitto_broker, 10) as fleet:
        ctx = fleet.context
        fleet.stop_device("dev-03")
        eventually(lambda: not ctx.store.devices.get("dev-03").online, "dev-03 offline")
        good = spec(
            2,
            Stage(10, bake_ms=300, extend_ms=0, gates=SUCCESS),
            Stage(50, bake_ms=300, extend_ms=0, gates=SUCCESS),
            Stage(100, bake_ms=0, gates=SUCCESS),
        )
        rollout_id = rollouts.create(ctx, good, actor="test").rollout.rollout_id
        fleet.start_device("dev-new")
        assert run_to_end(fleet, rollout_id) == "completed", timeline(fleet, rollout_id)
        assert ctx.store.devices.get("dev-03").active_version == 1, "offline: skipped"
        fleet.start_device("dev-03")
        eventually(lambda: all(fleet.serving(d) == 2 for d in fleet.devices), "all on v2")
        assert len(fleet.devices) == 11

        def recorded() -> bool:
            states = {p.device_id: p.state for p in ctx.store.rollouts.progress(rollout_id)}
            return states.get("dev-03") == states.get("dev-new") == "succeeded"

        eventually(recorded, "both recorded as succeeded")


def test_labels_scored_on_the_device_reach_the_gate_inputs_as_feedback_counts(
    tmp_path: Path, mosquitto_broker: BrokerRunner
) -> None:
    with live_fleet(tmp_path, mosquitto_broker, 1) as fleet:
        ctx = fleet.context
        started = ctx.now_ms()
        device = fleet.devices["dev-00"]
        x = np.random.default_rng(3).uniform(-1, 1, size=(10, 4)).astype(np.float32)
        served = device.predict(x)
        classes = np.argmax(np.asarray(served.outputs), axis=1).tolist()
        labels = {i: (k if n < 7 else (k + 1) % 3) for n, (i, k) in enumerate(zip(
            served.ids, classes, strict=True))}  # fmt: skip
        assert sorted(device.feedback(labels)["accepted"]) == sorted(served.ids)
        accuracy = (GateSpec.default("feedback_accuracy"),)
        gated = spec(2, Stage(50, gates=accuracy), Stage(100, gates=SUCCESS))
        # windows that began before the stage are left out: start it well before the labels
        rollout = Rollout("r-x", gated, stage_started_ms=started - 60_000)

        def counted() -> bool:
            found = device_metrics(ctx.store, rollout, device_views(ctx.store, rollout))
            got = found.get("dev-00")
            return got is not None and (got.feedback_total, got.feedback_correct) == (10, 7)

        eventually(counted, "the window with 10 labels, 7 right")


def test_a_devices_predictions_reach_the_drift_gate_inputs(
    tmp_path: Path, mosquitto_broker: BrokerRunner
) -> None:
    """Its data windows' prediction counts are scored against v1's reference (PSI) and
    its confidence sketches averaged (the label-free accuracy estimate)."""
    with live_fleet(tmp_path, mosquitto_broker, 1) as fleet:
        ctx = fleet.context
        started = ctx.now_ms()
        device = fleet.devices["dev-00"]
        rng = np.random.default_rng(4)
        top = [
            np.asarray(device.predict(rng.uniform(-1, 1, size=(10, 4)).astype(np.float32))
                       .outputs).max(axis=1)
            for _ in range(20)
        ]  # fmt: skip
        served = float(np.mean(np.concatenate(top)))  # the top-label probability v1 served
        gates = (GateSpec.default("prediction_drift"), GateSpec.default("label_free_accuracy"))
        gated = spec(2, Stage(50, gates=gates), Stage(100, gates=SUCCESS))
        rollout = Rollout("r-x", gated, stage_started_ms=started - 60_000)

        def scored() -> bool:
            found = device_metrics(ctx.store, rollout, device_views(ctx.store, rollout))
            got = found.get("dev-00")
            return got is not None and got.inferences >= 200 and got.prediction_drift is not None

        eventually(scored, "200 predictions in the windows, scored")
        got = device_metrics(ctx.store, rollout, device_views(ctx.store, rollout))["dev-00"]
        assert got.prediction_drift is not None
        assert 0.0 <= got.prediction_drift < 0.5, "v1 on inputs like its reference's"
        assert got.label_free_accuracy is not None
        print(f"label-free accuracy {got.label_free_accuracy:.4f}, served top {served:.4f}")
        assert got.label_free_accuracy == pytest.approx(served, abs=0.02)
