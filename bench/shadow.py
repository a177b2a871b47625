"""What a shadow run costs the served predict, and how fast the shadow keeps up.

A :class:`agent.updater.ModelManager` serving a classifier (the hand-built Gemm model of
the tests, as a package, real onnxruntime) runs a shadow of the same model with two
classes swapped, while a background thread plays the agent's ``shadow`` job (drain
every 10 ms). The served ``ModelManager.predict`` is timed call by call in blocks that
rotate the sampled share 0 (a shadow loaded, no request sampled: the baseline), 0.2 (the
default) and 1.0, so a slow patch of the shared machine hits all three alike; p50 and p99
per share, for 1 row and 32 rows. Goal: the p50 at the default share within 1.2x of the
baseline (sampling and queueing a request, never running the shadow on the caller's
thread). Then the drain rate: requests of 32 rows queued at once and run through the
shadow by its job, rows per second.

Writes ``bench/results/shadow.json``; takes a few seconds.
"""

from __future__ import annotations

import json
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

CALLS = 6_000  # per share and batch size
BLOCK = 200
SHARES = (0.0, 0.2, 1.0)
RATIO_GOAL = 1.2
RESULTS = Path(__file__).parent / "results" / "shadow.json"


def percentile(ordered: list[float], pct: float) -> float:
    return ordered[min(len(ordered) - 1, int(pct / 100 * len(ordered)))]


def run(state_dir: Path) -> dict[str, Any]:
    from bench.common import report
    from tests.agent.model_hub import FleetDouble
    from tests.agent.test_shadow import start_shadow, swapped
    from tests.agent.test_updater import Device, package
    from tests.clock import FakeClock
    from tests.protocol.trust_sim import TrustSim

    clock = FakeClock()
    fleet = FleetDouble(TrustSim(now=clock.now_ms(), device_id="dev-1"))
    device = Device(fleet, state_dir, clock)
    device.install(fleet.release(package(1)))
    device.commit()
    start_shadow(device, swapped(2))
    manager, shadow = device.manager, device.manager.shadow
    assert shadow.status == "running", shadow.status
    stop = threading.Event()

    def job() -> None:
        while not stop.wait(0.01):
            shadow.tick(clock.now_ms())

    drainer = threading.Thread(target=job, daemon=True)
    drainer.start()
    results: dict[str, Any] = {}
    rng = np.random.default_rng(0)
    try:
        for rows in (1, 32):
            x = rng.uniform(-1, 1, size=(rows, 4)).astype(np.float32)
            samples: dict[float, list[float]] = {share: [] for share in SHARES}
            for _ in range(500):
                manager.predict(x)
            for block in range(CALLS * len(SHARES) // BLOCK):
                share = SHARES[block % len(SHARES)]
                shadow.share = share
                for _ in range(BLOCK):
                    start = time.perf_counter_ns()
                    manager.predict(x)
                    samples[share].append((time.perf_counter_ns() - start) / 1000)
            stats = {}
            for share, values in samples.items():
                ordered = sorted(values)
                mean = sum(values) / len(values)
                stats[f"share_{share}"] = {
                    "p50_us": percentile(ordered, 50),
                    "p99_us": percentile(ordered, 99),
                    "mean_us": mean,
                }
                p50, p99 = percentile(ordered, 50), percentile(ordered, 99)
                report(
                    f"{rows:>2} row(s), share {share:.1f}: p50 / p99 / mean",
                    f"{p50:.1f} / {p99:.1f} / {mean:.1f} us",
                )
            ratio = stats["share_0.2"]["p50_us"] / stats["share_0.0"]["p50_us"]
            report(
                f"{rows:>2} row(s), p50 share 0.2 / 0.0",
                f"{ratio:.2f}x",
                goal=f"<= {RATIO_GOAL}",
                met=ratio <= RATIO_GOAL,
            )
            results[f"rows_{rows}"] = {**stats, "p50_ratio_default_share": ratio}
        results["dropped_requests"] = shadow.dropped
    finally:
        stop.set()
        drainer.join()
    shadow.share = 1.0
    shadow.report()  # empty the queue and the counts
    x = rng.uniform(-1, 1, size=(32, 4)).astype(np.float32)
    scores = manager.runtime.predict(x).scores  # type: ignore[union-attr]
    rounds, queued = 50, 64
    started = time.perf_counter()
    for _ in range(rounds):
        for _ in range(queued):
            shadow.offer(x, scores)
        shadow.tick(clock.now_ms())
    rate = rounds * queued * 32 / (time.perf_counter() - started)
    report("shadow drain, 32-row requests", f"{rate:,.0f} rows/s")
    results["drain_rows_per_s"] = rate
    return results


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        results = run(Path(tmp))
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    ratios = [r["p50_ratio_default_share"] for k, r in results.items() if k.startswith("rows_")]
    met = all(ratio <= RATIO_GOAL for ratio in ratios)
    return 0 if met else 1


if __name__ == "__main__":
    raise SystemExit(main())
