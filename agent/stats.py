"""Inference counters and recent latencies, fed by the runtime and read by telemetry.

:class:`InferenceStats` is shared by threads (HTTP handler threads record, the telemetry
job reads), so every method takes one lock. Counts are totals since the agent started.
Latency percentiles are over the most recent ``window`` inferences (1024 by default), not
since start: a heartbeat should say how the device behaves now, and a bounded window keeps
memory and the cost of a snapshot constant.
"""

from __future__ import annotations

import math
import threading
from collections import deque
from dataclasses import dataclass

from edgefleet.stats import nearest_rank


@dataclass(frozen=True)
class StatsSnapshot:
    """Counters since start and latency percentiles over the recent window (ms)."""

    inference_count: int
    error_count: int
    latency_p50_ms: float
    latency_p95_ms: float


class InferenceStats:
    """Thread-safe counters plus a ring of the most recent latencies."""

    def __init__(self, window: int = 1024) -> None:
        if window < 1:
            raise ValueError("window must be at least 1")
        self._lock = threading.Lock()
        self._latencies: deque[float] = deque(maxlen=window)
        self._count = 0
        self._errors = 0

    def record(self, latency_ms: float, *, ok: bool = True) -> None:
        """Count one inference (``ok=False`` counts an error too) and keep its latency."""
        with self._lock:
            self._count += 1
            if not ok:
                self._errors += 1
            if math.isfinite(latency_ms) and latency_ms >= 0:
                self._latencies.append(latency_ms)

    def snapshot(self) -> StatsSnapshot:
        with self._lock:
            ordered = sorted(self._latencies)
            count, errors = self._count, self._errors
        return StatsSnapshot(count, errors, nearest_rank(ordered, 50), nearest_rank(ordered, 95))
