"""What every benchmark shares: interleaved timing, a results file, aligned report lines,
and the one-table summary of every benchmark's results; and, for the HTTP ones, an app
served on loopback and round trips sampled one at a time with their percentiles.

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
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import httpx
import uvicorn

RESULTS = Path(__file__).resolve().parent / "results"
SUMMARY = "SUMMARY.md"
_rows: list[dict[str, Any]] = []
"""The figures :func:`report` printed with a goal or a baseline since the last
:func:`write_result`, which stores them as the result's ``summary``."""


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


def sample(fns: Mapping[str, Callable[[], object]], rounds: int) -> dict[str, list[float]]:
    """Seconds of each call, one call per candidate per round, rotating who goes first:
    what percentiles need (:func:`interleaved` keeps only a statistic per trial)."""
    names = list(fns)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for i in range(rounds):
        shift = i % len(names)
        for name in names[shift:] + names[:shift]:
            start = time.perf_counter()
            fns[name]()
            samples[name].append(time.perf_counter() - start)
    return samples


def percentiles(values: list[float]) -> dict[str, float]:
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    return {"p50_ms": cuts[49] * 1000, "p95_ms": cuts[94] * 1000}


def report_percentiles(samples: Mapping[str, list[float]]) -> dict[str, dict[str, float]]:
    """p50 and p95 of each candidate's samples, each printed as a line."""
    found = {name: percentiles(values) for name, values in samples.items()}
    for name, cut in found.items():
        report(f"{name} p50 / p95", f"{cut['p50_ms']:.2f} / {cut['p95_ms']:.2f} ms")
    return found


def fetch(client: httpx.Client, path: str) -> Callable[[], object]:
    """A call that GETs ``path`` and fails on an error status: one round trip to time."""

    def call() -> object:
        response = client.get(path)
        response.raise_for_status()
        return response

    return call


@contextmanager
def serve(app: Any) -> Iterator[str]:
    """Run ``app`` with uvicorn on a free port of 127.0.0.1 in a thread; yield its URL."""
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", access_log=False)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="bench-uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


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
        "summary": list(_rows),
    }
    _rows.clear()
    path.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    return path


def report(
    label: str,
    value: str,
    *,
    goal: str | None = None,
    met: bool | None = None,
    baseline: str | None = None,
    ratio: str | None = None,
) -> None:
    """Print one aligned line, with the goal and whether this run met it when there is one.

    A line with a goal or a baseline is also a row of the benchmark's summary (the next
    :func:`write_result` keeps it; :func:`write_summary` tabulates them all).
    """
    line = f"  {label:<46} {value:>14}"
    if baseline is not None:
        line += f"   baseline {baseline}" + ("" if ratio is None else f" (x{ratio})")
    if goal is not None:
        line += f"   goal {goal}" + ("" if met is None else (": met" if met else ": NOT MET"))
    print(line, flush=True)
    if goal is not None or baseline is not None:
        _rows.append(
            {
                "figure": label.strip(),
                "value": value.strip(),
                "baseline": baseline,
                "ratio": ratio,
                "goal": goal,
                "met": met,
            }
        )


def write_summary(results: Path = RESULTS) -> Path:
    """Write ``SUMMARY.md`` in ``results``: one table of every benchmark's summary rows
    (figure, value, baseline, ratio, goal), from the ``*.json`` files there, each with
    the time it was measured."""
    lines = [
        "# Benchmark summary",
        "",
        "Written by `make bench` (`python -m bench`) from `bench/results/*.json`; each row is",
        "a figure a benchmark reported with a goal or a baseline measured in the same run.",
        "",
        "| benchmark | figure | value | baseline | ratio | goal | met |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for path in sorted(results.glob("*.json")):
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        name = f"{record.get('benchmark', path.stem)} ({record.get('timestamp', '?')})"
        for row in record.get("summary", []):
            met = {True: "yes", False: "**no**", None: ""}[row.get("met")]
            cells = [row.get(k) or "" for k in ("figure", "value", "baseline", "ratio", "goal")]
            lines.append("| " + " | ".join([name, *map(str, cells), met]) + " |")
    path = results / SUMMARY
    path.write_text("\n".join(lines) + "\n")
    return path
