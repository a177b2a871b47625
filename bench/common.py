"""What every benchmark shares: interleaved timing, a results file, aligned report lines.

Benchmarks here run on a small shared machine (two cores, other work beside them), so
absolute times drift from run to run. Each benchmark therefore reports ratios against a
baseline measured in the same run, and :func:`interleaved` times the candidates and the
baseline round-robin so a slow patch of the machine hits all of them alike.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

RESULTS = Path(__file__).resolve().parent / "results"


def calibrate(fn: Callable[[], object], *, target_s: float = 0.05) -> int:
    """How many calls of ``fn`` take about ``target_s`` (at least one), after a warm-up call."""
    fn()
    start = time.perf_counter()
    fn()
    once = time.perf_counter() - start
    return max(1, round(target_s / max(once, 1e-9)))


def interleaved(
    fns: Mapping[str, Callable[[], object]],
    *,
    repeat: int = 7,
    number: int | Mapping[str, int] = 100,
    statistic: Literal["median", "min"] = "median",
) -> dict[str, float]:
    """Seconds per call of each candidate, timed in round-robin trials.

    Each of ``repeat`` trials runs every candidate ``number`` times back to back (one
    count for all, or one per name), starting one candidate later each trial so no
    candidate always runs first. The median (or min) over trials damps noise from
    neighbours on the machine.
    """
    names = list(fns)
    counts = {name: number if isinstance(number, int) else number[name] for name in names}
    samples: dict[str, list[float]] = {name: [] for name in names}
    for trial in range(repeat):
        shift = trial % len(names)
        for name in names[shift:] + names[:shift]:
            fn, count = fns[name], counts[name]
            start = time.perf_counter()
            for _ in range(count):
                fn()
            samples[name].append((time.perf_counter() - start) / count)
    pick = statistics.median if statistic == "median" else min
    return {name: pick(values) for name, values in samples.items()}


def write_result(name: str, data: Mapping[str, Any]) -> Path:
    """Write ``bench/results/<name>.json`` with a timestamp and what machine ran it."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    record = {
        "benchmark": name,
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
        "platform": {
            "python": platform.python_version(),
            "implementation": platform.python_implementation(),
            "system": platform.platform(),
            "machine": platform.machine(),
            "cpus": os.cpu_count(),
            "loadavg": [round(x, 2) for x in os.getloadavg()],
        },
        "results": data,
    }
    path.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    return path


def report(label: str, value: str, *, goal: str | None = None, met: bool | None = None) -> None:
    """Print one aligned line, with the goal and whether this run met it when there is one."""
    line = f"  {label:<46} {value:>14}"
    if goal is not None:
        line += f"   goal {goal}" + ("" if met is None else (": met" if met else ": NOT MET"))
    print(line, flush=True)
