"""Rollout planner cost per tick over 10,000 devices, against a plain sort of the same ids
by the same keyed hash, measured in the same run.

The planner runs on every scheduler tick for every live rollout, so its cost per tick
bounds how many devices and rollouts one hub can drive. Its floor is what any planner with
a stable hash order pays: hashing every id and sorting by it (``baseline_sort``). The
scenarios, each one tick of :func:`hub.rollouts.plan` with inputs built beforehand:

- ``start``: 10,000 pending devices, the first tick (starts, assigns the first stage);
- ``mid_stage``: the 50 % stage of a healthy rollout, 5,000 devices touched (4,950
  succeeded, 50 updating), every device with metrics and a baseline, gates evaluated
  (update success, error rate and p95 latency, canaries against 5,000 controls);
- ``rolling_back``: a halted rollout sending 5,000 devices back.

Reported: ms per tick for each, and its ratio to the baseline sort (goal: each tick
<= 10x the sort, so the planner's own work stays within an order of magnitude of the
minimum, and well under the scheduler's 1 s tick). ``bench/rollout.py`` measures convergence
with real agents over a real broker. Writes ``bench/results/rollout_plan.json``.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np

from bench.common import calibrate, interleaved, report, write_result
from hub.rollouts import DeviceMetrics, DeviceView, RolloutSpec, order_key, plan
from hub.rollouts.machine import DeviceProgress, Rollout
from tests.clock import EPOCH_MS

DEVICES = 10_000
RATIO_GOAL = 10.0
NEW, OLD = 2, 1
SPEC = RolloutSpec("churn", NEW, seed=2026, max_updating=100)


def fleet(touched: int, *, state: str = "succeeded") -> list[DeviceView]:
    rng = np.random.default_rng(7)
    ids = [f"device-{i:05d}" for i in range(DEVICES)]
    order = sorted(ids, key=lambda d: order_key(SPEC.seed, d))
    views = []
    for rank, device_id in enumerate(order):
        tags = {"site": f"s{rank % 7}", "hw": "rev2" if rank % 3 else "rev1"}
        progress = None
        active = OLD
        if rank < touched:
            busy = state == "succeeded" and rank >= touched - 50
            progress = DeviceProgress(
                device_id,
                "updating" if busy else state,  # type: ignore[arg-type]
                target_version=NEW,
                previous_version=OLD,
                stage=2,
                attempts=1,
                since_ms=EPOCH_MS + int(rng.integers(0, 60_000)),
            )
            active = OLD if busy else NEW
        views.append(DeviceView(device_id, tags, True, active, None, progress))
    rng.shuffle(views)  # the store returns rows in no particular order
    return views


def metrics(views: list[DeviceView]) -> dict[str, DeviceMetrics]:
    rng = np.random.default_rng(8)
    served = rng.poisson(3000, len(views))
    errors = rng.binomial(served, 0.05)
    p95 = np.exp(rng.normal(np.log(20.0), 0.3, len(views)))
    return {
        v.device_id: DeviceMetrics(
            int(served[i]),
            int(errors[i]),
            float(p95[i]),
            baseline=DeviceMetrics(int(served[i]), int(errors[i] * 0.98), float(p95[i])),
        )
        for i, v in enumerate(views)
    }


def main() -> dict[str, Any]:
    now = EPOCH_MS + 3_600_000
    pending = fleet(0)
    mid = fleet(5_000)
    mid_metrics = metrics(mid)
    baking = Rollout("r-1", SPEC, phase="baking", stage=2, stage_started_ms=EPOCH_MS)
    halted = replace(baking, phase="rolling_back", reason="error_rate failed")
    back = fleet(5_000, state="succeeded")
    ids = [v.device_id for v in pending]

    def baseline_sort() -> object:
        return sorted(ids, key=lambda d: order_key(SPEC.seed, d))

    fns = {
        "baseline_sort": baseline_sort,
        "start": lambda: plan(Rollout("r-1", SPEC), pending, {}, now),
        "mid_stage": lambda: plan(baking, mid, mid_metrics, now),
        "rolling_back": lambda: plan(halted, back, {}, now),
    }
    checks = {name: fns[name]() for name in ("start", "mid_stage", "rolling_back")}
    assert len(checks["start"].assign) == 100  # type: ignore[attr-defined]
    assert {v.metric for v in checks["mid_stage"].verdicts} == {  # type: ignore[attr-defined]
        "update_success",
        "error_rate",
        "latency_p95",
    }
    assert len(checks["rolling_back"].revert) == 5_000  # type: ignore[attr-defined]
    counts = {name: calibrate(fn, target_s=0.3) for name, fn in fns.items()}
    seconds = interleaved(fns, repeat=5, number=counts, statistic="median")
    floor = seconds["baseline_sort"]
    results: dict[str, Any] = {
        "devices": DEVICES,
        "baseline_sort_ms": round(floor * 1000, 2),
        "ratio_goal": RATIO_GOAL,
    }
    print(f"rollout planner, one tick over {DEVICES:,} devices:")
    report("hash + sort of the ids (baseline)", f"{floor * 1000:.1f} ms")
    for name in ("start", "mid_stage", "rolling_back"):
        ratio = seconds[name] / floor
        met = ratio <= RATIO_GOAL
        results[name] = {"ms": round(seconds[name] * 1000, 2), "ratio": round(ratio, 2), "met": met}
        report(f"plan(), {name}", f"{seconds[name] * 1000:.1f} ms")
        report("  ratio to the baseline sort", f"{ratio:.2f}", goal=f"<= {RATIO_GOAL:g}", met=met)
    write_result("rollout_plan", results)
    return results


if __name__ == "__main__":
    main()
