"""Aggregation cost: 1,000 deltas of 1M parameters, streaming strategies against stack-and-mean.

Deltas are generated lazily, one at a time, from their index (``delta(i)``: uniform
float32 in [-0.5, 0.5) times a per-delta scale, so norms differ and the norm bound
clips some), through the same ``load(key)`` seam the hub's store will provide: a
streaming strategy never holds more than one. Candidates, each timed once (every one
takes seconds; run order alternates so no candidate always meets a warm or cold
machine) with its peak traced memory (``tracemalloc``, which numpy reports to):

- ``generate``: producing the deltas and nothing else, the floor under every candidate;
- ``stack_mean`` (baseline): a float32 ``(n, P)`` stack filled from the deltas, then
  ``mean(axis=0)``: what aggregation looks like without streaming;
- ``fedavg``: :func:`hub.rounds.aggregate` with the ``fedavg`` preset (capped-sample
  weighted mean, no norm bound), streaming;
- ``default``: the ``default`` preset (norm bound at the median norm, then the weighted
  mean), streaming; the norms it plans with are computed at ingest (screening), timed
  apart as ``ingest_norms``;
- ``median``: coordinate median, which must hold every delta (a float32 stack plus
  column blocks). Skipped, with the reason printed, when the machine has less memory
  available than it needs plus 1 GiB.

Reported: seconds and peak MiB per candidate; each candidate's time as a ratio of the
baseline's (goal for the streaming ones: <= 1), and its peak against ``P`` float64
values (goal: O(parameters), here at most 4 x 8P bytes). ``EDGEFLEET_BENCH_ROUNDS_N`` and
``EDGEFLEET_BENCH_ROUNDS_P`` shrink the run (e.g. on a laptop). Writes
``bench/results/rounds.json``; takes about a minute at full size.
"""

from __future__ import annotations

import gc
import math
import os
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

import numpy as np
import psutil

from bench.common import report, write_result
from hub.rounds.aggregate import PRESETS, aggregate
from hub.rounds.layout import Layout
from hub.rounds.weighting import Submission
from protocol.tensors import l2_norm

N = int(os.environ.get("EDGEFLEET_BENCH_ROUNDS_N", "1000"))
P = int(os.environ.get("EDGEFLEET_BENCH_ROUNDS_P", "1000000"))
NAME = "head.weight"
MIB = 1024 * 1024


def delta(i: int) -> dict[str, np.ndarray]:
    """Delta ``i``, the same every time it is asked for."""
    rng = np.random.default_rng(i)
    values = rng.random(P, dtype=np.float32)
    values -= np.float32(0.5)
    values *= np.float32(1.0 + (i % 7) / 3)
    return {NAME: values}


def load(key: str) -> dict[str, np.ndarray]:
    return delta(int(key))


def measure(fn: Callable[[], object]) -> tuple[float, int]:
    """Seconds and peak traced bytes of one call."""
    gc.collect()
    tracemalloc.start()
    try:
        start = time.perf_counter()
        fn()
        seconds = time.perf_counter() - start
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return seconds, peak


def generate() -> None:
    for i in range(N):
        delta(i)


def stack_mean() -> np.ndarray:
    stack = np.empty((N, P), dtype=np.float32)
    for i in range(N):
        stack[i] = delta(i)[NAME]
    mean: np.ndarray = stack.mean(axis=0, dtype=np.float64)
    return mean


def main() -> int:
    layout = Layout.from_shapes({NAME: (P,)})
    claims = [100 + (i % 50) for i in range(N)]
    norms: list[float] = []

    def ingest_norms() -> None:
        norms.extend(l2_norm(delta(i)) for i in range(N))

    ingest_s, ingest_peak = measure(ingest_norms)
    subs = [Submission(str(i), f"d{i}", 1, claims[i], norms[i]) for i in range(N)]

    def run(preset: str) -> Callable[[], object]:
        return lambda: aggregate(subs, load, layout, PRESETS[preset], max_norm=math.inf)

    candidates: dict[str, Callable[[], object]] = {
        "generate": generate,
        "stack_mean": stack_mean,
        "fedavg": run("fedavg"),
        "default": run("default"),
    }
    median_need = PRESETS["median"].memory_bytes(N, P)
    available = psutil.virtual_memory().available
    skipped = None
    if available < median_need + 1024 * MIB:
        skipped = f"needs {median_need / MIB:.0f} MiB + 1 GiB, {available / MIB:.0f} available"
    else:
        candidates["median"] = run("median")
    if available < 4 * N * P + 1024 * MIB:
        print(f"  not enough memory for the {N} x {P} float32 baseline stack")
        return 1

    order = list(candidates)
    results: dict[str, dict[str, float]] = {}
    for name in order[::2] + order[1::2]:  # spread the big ones apart
        seconds, peak = measure(candidates[name])
        results[name] = {"seconds": seconds, "peak_mib": peak / MIB}

    base = results["stack_mean"]["seconds"]
    bound = 4 * 8 * P
    print(f"  {N} deltas of {P} parameters, generated lazily")
    report("ingest: L2 norms of every delta", f"{ingest_s:.2f} s")
    for name in order:
        r = results[name]
        report(f"{name}: time", f"{r['seconds']:.2f} s")
        report(f"{name}: peak traced memory", f"{r['peak_mib']:.1f} MiB")
        if name != "generate":
            net = r["seconds"] - results["generate"]["seconds"]
            report(f"{name}: time beyond generating the deltas", f"{net:.2f} s")
        if name in ("fedavg", "default"):
            ratio = r["seconds"] / base
            report(f"{name}: time / stack_mean", f"{ratio:.3f}", goal="<= 1", met=ratio <= 1)
            report(
                f"{name}: peak / (8 bytes x P)",
                f"{r['peak_mib'] * MIB / (8 * P):.2f}",
                goal="<= 4",
                met=r["peak_mib"] * MIB <= bound,
            )
        elif name == "median":
            report("median: time / stack_mean", f"{r['seconds'] / base:.3f}")
    if skipped:
        report("median", f"skipped: {skipped}")
    data: dict[str, Any] = {
        "deltas": N,
        "parameters": P,
        "ingest_norms_seconds": ingest_s,
        "ingest_norms_peak_mib": ingest_peak / MIB,
        "candidates": results,
        "median_skipped": skipped,
        "streaming_time_vs_stack_mean": {
            name: results[name]["seconds"] / base for name in ("fedavg", "default")
        },
    }
    path = write_result("rounds", data)
    print(f"  wrote {path.relative_to(path.parent.parent.parent)}")
    met = all(
        results[n]["seconds"] <= base and results[n]["peak_mib"] * MIB <= bound
        for n in ("fedavg", "default")
    )
    return 0 if met else 1


if __name__ == "__main__":
    raise SystemExit(main())
