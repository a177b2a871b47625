"""The rollout shell over a real store, key ring and registry, with a fake clock: the
planner's plans land in SQLite and in signed assignments, and a device's report (written
as ingest writes it) moves its progress. Real agents on a broker: test_live.py."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from hub.errors import Conflict
from hub.fleet import rollouts
from hub.fleet.desired import set_desired
from hub.rollouts import Abort, Pause, RolloutConflict, RolloutSpec, ShadowStage, Stage
from hub.rollouts.spec import GateSpec
from hub.store import NotFound, Store
from hub.store.rows import Device
from protocol import canonical, schema
from protocol.messages import InstallOutcome, ModelRef, StateReport
from tests import models
from tests.clock import FakeClock
from tests.hub.test_registry import Hub, make_hub

MODEL = "iris"
FLEET = 20


def stages(*percents: float) -> tuple[Stage, ...]:
    only_success = (GateSpec.default("update_success"),)
    return tuple(Stage(p, bake_ms=1000, extend_ms=0, gates=only_success) for p in percents)


SPEC = RolloutSpec(MODEL, 2, stages=stages(10, 50, 100), device_timeout_ms=60_000, seed=3)


@pytest.fixture
def hub(tmp_path: Path, clock: FakeClock) -> Hub:
    hub = make_hub(tmp_path, clock)
    hub.register(models.gemm_classifier(hidden=6))
    hub.register(models.gemm_classifier(hidden=7))
    v1 = hub.store.registry.version(MODEL, 1)
    assert v1 is not None
    for k in range(FLEET):
        hub.store.devices.add(
            Device(
                f"d-{k:02d}", "ab" * 32, "active", first_seen=0, online=True,
                tags={"ring": "canary" if k < 2 else "main"},
                active_name=MODEL, active_version=1, active_sha256=v1.sha256,
            )
        )  # fmt: skip
    return hub


def run_devices(store: Store, *, fail_version: int | None = None, now_ms: int = 0) -> None:
    """Each online device does what its desired state says: installs it, or (for
    ``fail_version``) reports its health check rolled it back and stays where it was."""
    for twin in store.desired.twins():
        device, desired = twin.device, twin.desired
        if device.active_version == desired.model_version:
            continue
        if desired.model_version == fail_version:
            if device.reported is None:
                report = StateReport(
                    active=ModelRef(MODEL, device.active_version or 1, device.active_sha256 or ""),
                    install=InstallOutcome(
                        desired.assignment_version,
                        ModelRef(MODEL, desired.model_version, "00" * 32),
                        "rolled_back",
                        "health check failed",
                    ),
                )
                body = canonical.dumps(schema.to_json(report)).decode()
                store.devices.put(replace(device, reported=body, reported_at=now_ms))
            continue
        version = store.registry.version(MODEL, desired.model_version)
        assert version is not None
        store.devices.put(
            replace(device, active_version=version.version, active_sha256=version.sha256)
        )


def drive(hub: Hub, rollout_id: str, *, fail_version: int | None = None, ticks: int = 40) -> str:
    ctx = hub.context()
    for _ in range(ticks):
        rollouts.tick(ctx)
        run_devices(hub.store, fail_version=fail_version, now_ms=hub.clock.now_ms())
        hub.clock.advance(2)
        phase = rollouts.get(ctx, rollout_id).rollout.phase
        if phase in ("completed", "rolled_back"):
            return phase
    return rollouts.get(ctx, rollout_id).rollout.phase


def assignments_to(store: Store, device_id: str) -> list[int]:
    versions = []
    for k in range(1, store.desired.next_assignment_version(device_id)):
        record = store.desired.assignment(device_id, k)
        assert record is not None
        versions.append(record.model_version)
    return versions


def test_a_good_version_goes_through_every_stage_and_the_whole_target_ends_on_it(
    hub: Hub,
) -> None:
    record = rollouts.create(hub.context(), SPEC, actor="operator")
    assert drive(hub, record.rollout.rollout_id) == "completed"
    for device in hub.store.rollouts.active_devices():
        assert device.active_version == 2
        assert assignments_to(hub.store, device.id) == [2], "one signed assignment each"
    lines = [t.line for t in hub.store.rollouts.timeline(record.rollout.rollout_id)]
    assert any(line.startswith("advance: baking stage 1 -> baking stage 2") for line in lines)
    assert any(line.startswith("complete:") for line in lines)


def test_a_version_failing_the_health_check_halts_at_the_first_stage_and_goes_back(
    hub: Hub,
) -> None:
    record = rollouts.create(hub.context(), SPEC, actor="operator")
    assert drive(hub, record.rollout.rollout_id, fail_version=2) == "rolled_back"
    touched = hub.store.rollouts.progress(record.rollout.rollout_id)
    assert 0 < len(touched) <= 2, "only the first stage (10 % of 20) was touched"
    for p in touched:
        assert p.state == "rolled_back"
        assert hub.store.desired.get(p.device_id).model_version == 1
        assert assignments_to(hub.store, p.device_id) == [2, 1]
    assert all(d.active_version == 1 for d in hub.store.rollouts.active_devices())
    reason = rollouts.get(hub.context(), record.rollout.rollout_id).rollout.reason
    assert "update_success failed" in reason


def test_a_second_live_rollout_over_the_same_devices_is_refused_and_a_paused_one_holds(
    hub: Hub,
) -> None:
    ctx = hub.context()
    first = rollouts.create(ctx, SPEC, actor="operator").rollout.rollout_id
    with pytest.raises(RolloutConflict, match=first):
        rollouts.create(ctx, replace(SPEC, version=1), actor="operator")
    rollouts.tick(ctx)
    paused = rollouts.operate(ctx, first, Pause("look first"), actor="operator")
    assert paused.phase == "paused"
    touched = len(hub.store.rollouts.progress(first))
    run_devices(hub.store)
    for _ in range(5):
        hub.clock.advance(2)
        rollouts.tick(ctx)
    assert len(hub.store.rollouts.progress(first)) == touched, "paused: nobody new"


def test_an_unknown_version_is_refused(hub: Hub) -> None:
    with pytest.raises(NotFound, match="no version 9"):
        rollouts.create(hub.context(), replace(SPEC, version=9), actor="operator")


def test_rollout_set_refuses_a_device_a_live_rollout_covers(hub: Hub) -> None:
    ctx = hub.context()
    first = rollouts.create(ctx, SPEC, actor="operator").rollout.rollout_id
    with pytest.raises(Conflict, match=f"d-05 is in rollout {first}"):
        set_desired(ctx, device_id="d-05", model_name=MODEL, model_version=2, actor="cli")


def shadowed(hub: Hub) -> str:
    """Every device's desired state on v1, then a rollout of v2 with a 10 % shadow stage,
    ticked once: its shadows start."""
    ctx = hub.context()
    for k in range(FLEET):
        set_desired(ctx, device_id=f"d-{k:02d}", model_name=MODEL, model_version=1, actor="t")
    spec = replace(SPEC, shadow=ShadowStage(percent=10))
    rollout_id = rollouts.create(ctx, spec, actor="test").rollout.rollout_id
    rollouts.tick(ctx)
    return rollout_id


def test_the_shadow_stage_puts_a_shadow_assignment_beside_the_served_one(hub: Hub) -> None:
    rollout_id = shadowed(hub)
    running = [s.device_id for s in hub.store.rollouts.shadows(rollout_id)]
    assert len(running) == 2
    for device_id in running:
        desired = hub.store.desired.get(device_id)
        assert desired.model_version == 1
        assert desired.shadow_version is not None
        shadow = hub.store.desired.assignment(device_id, desired.shadow_version)
        assert shadow is not None
        assert shadow.model_version == 2
    others = {f"d-{k:02d}" for k in range(FLEET)} - set(running)
    assert all(hub.store.desired.get(d).shadow_version is None for d in others)
    assert rollouts.get(hub.context(), rollout_id).rollout.phase == "shadow"


def test_aborting_in_the_shadow_stage_drops_every_shadow(hub: Hub) -> None:
    rollout_id = shadowed(hub)
    running = [s.device_id for s in hub.store.rollouts.shadows(rollout_id)]
    rollouts.operate(hub.context(), rollout_id, Abort("wrong model"), actor="op")
    assert all(hub.store.desired.get(d).shadow_version is None for d in running)
    assert {s.state for s in hub.store.rollouts.shadows(rollout_id)} == {"stopped"}
    assert all(hub.store.desired.get(d).model_version == 1 for d in running)
