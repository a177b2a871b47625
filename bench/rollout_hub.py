"""Staged rollout, the hub's side alone: seconds for 1,000 devices to converge with zero bake,
against the floor of giving the same 1,000 devices their signed desired states directly.

Both run over a real SQLite store, key ring and registry (a temporary directory):

- **rollout**: ``hub.fleet.rollouts.create`` then ``tick`` until ``completed``, stages
  10 → 50 → 100 % with zero bake, gated on update success; each tick, every device whose
  desired state names v2 reports v2 active (written to the store as ingest writes it), so the
  time is the hub's: reading the inputs, planning, and committing assignments and progress;
- **floor**: ``assign_desired`` for the same 1,000 devices in one transaction (the same
  signed assignments and desired states, nothing else).

What this does not measure: publishing to a broker and real agents installing; that is
``bench/rollout.py`` (1,000 simulated agents against a bare MQTT floor). This one isolates
the hub's store and planner work per rollout. Goal for the ratio here: <= 1.5.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from bench.common import report, write_result
from hub.fleet import rollouts
from hub.fleet.desired import assign_desired
from hub.fleet.documents import signed_release
from hub.rollouts import RolloutSpec, Stage
from hub.rollouts.spec import GateSpec
from hub.store.rows import Device
from tests import models
from tests.clock import FakeClock
from tests.hub.test_registry import Hub, make_hub

DEVICES = 1_000
RATIO_GOAL = 1.5
MODEL = "iris"
SPEC = RolloutSpec(
    MODEL,
    2,
    stages=tuple(
        Stage(p, bake_ms=0, extend_ms=0, gates=(GateSpec.default("update_success"),))
        for p in (10, 50, 100)
    ),
    max_updating=DEVICES,
)


def hub(root: Path) -> Hub:
    made = make_hub(root, FakeClock())
    made.register(models.gemm_classifier(hidden=6))
    made.register(models.gemm_classifier(hidden=7))
    v1 = made.store.registry.version(MODEL, 1)
    assert v1 is not None
    for k in range(DEVICES):
        made.store.devices.add(
            Device(f"d-{k:05d}", "ab" * 32, "active", first_seen=0, online=True,
                   active_name=MODEL, active_version=1, active_sha256=v1.sha256)
        )  # fmt: skip
    return made


def converge(made: Hub) -> None:
    """Devices whose desired state names v2 report it active."""
    v2 = made.store.registry.version(MODEL, 2)
    assert v2 is not None
    with made.store.atomic():
        for twin in made.store.desired.twins():
            if twin.desired.model_version == 2 and twin.device.active_version != 2:
                made.store.devices.put(
                    replace(twin.device, active_version=2, active_sha256=v2.sha256)
                )


def rollout_seconds(made: Hub) -> tuple[float, int]:
    ctx = made.context()
    started = time.perf_counter()
    rollout_id = rollouts.create(ctx, SPEC, actor="bench").rollout.rollout_id
    ticks = 0
    while rollouts.get(ctx, rollout_id).rollout.phase != "completed":
        rollouts.tick_one(ctx, rollout_id)
        converge(made)
        ticks += 1
        assert ticks < 100, "the rollout did not complete"
    return time.perf_counter() - started, ticks


def floor_seconds(made: Hub) -> float:
    ctx = made.context()
    started = time.perf_counter()
    current = signed_release(made.store)
    with made.store.immediate():
        for k in range(DEVICES):
            assign_desired(ctx, device_id=f"d-{k:05d}", model_name=MODEL, model_version=2,
                           actor="bench", now_ms=ctx.now_ms(), current=current)  # fmt: skip
    converge(made)
    return time.perf_counter() - started


def main() -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as a, tempfile.TemporaryDirectory() as b:
        floor_hub, rollout_hub = hub(Path(a)), hub(Path(b))
        try:
            floor = floor_seconds(floor_hub)
            seconds, ticks = rollout_seconds(rollout_hub)
        finally:
            floor_hub.store.close()
            rollout_hub.store.close()
    ratio = seconds / floor
    met = ratio <= RATIO_GOAL
    print(f"staged rollout on the hub, {DEVICES:,} devices, zero bake, stages 10/50/100:")
    report("floor: the same desired states, one transaction", f"{floor:.2f} s")
    report(f"rollout: create + {ticks} ticks to completed", f"{seconds:.2f} s")
    report("  ratio to the floor", f"{ratio:.2f}", goal=f"<= {RATIO_GOAL:g}", met=met)
    results: dict[str, Any] = {
        "devices": DEVICES,
        "floor_s": round(floor, 3),
        "rollout_s": round(seconds, 3),
        "ticks": ticks,
        "ratio": round(ratio, 2),
        "ratio_goal": RATIO_GOAL,
        "met": met,
    }
    write_result("rollout_hub", results)
    return results


if __name__ == "__main__":
    main()
