"""Inference counters and latencies, fed by the model manager, read by telemetry and /metrics.

**Rows, not requests.** A predict request carries a batch; ``inference_count`` counts the
rows predicted and ``error_count`` the rows that did not get a prediction: rows of a
request the model failed on (an onnxruntime error, NaN/Inf scores) *and* rows of a
request refused as invalid input (wrong shape or dtype). An application that sends
bad inputs is a fleet problem an operator must see, so it counts as errors; the
breakdown (``failed_count`` / ``invalid_count``) stays on the device, in ``/status`` and
``/metrics``. The post-install watch judges the model only, on the runtime's own
counters (agent/runtime.py), where invalid inputs never reach.

Latency is per request (one session run, whatever its batch): percentiles over the most
recent ``window`` requests (1024 by default) for telemetry, since a heartbeat should say
how the device behaves now; and a cumulative histogram (fixed buckets,
:data:`LATENCY_BUCKETS_MS`) for ``/metrics``, which Prometheus turns into rates and
quantiles itself. Invalid requests never ran the model and record no latency.

:class:`InferenceStats` is shared by threads (request threads record, the telemetry job
and the metrics endpoint read), so every method takes one lock.
"""

from __future__ import annotations

import bisect
import math
import threading
from collections import deque
from dataclasses import dataclass
from typing import Literal

from edgefleet.stats import nearest_rank

Outcome = Literal["ok", "failed", "invalid"]
LATENCY_BUCKETS_MS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 1000.0)
"""Upper bounds of the latency histogram's buckets (ms); a last ``+Inf`` bucket is implied."""


@dataclass(frozen=True)
class StatsSnapshot:
    """Counters since start (rows) and latency percentiles over the recent window (ms)."""

    inference_count: int
    error_count: int
    latency_p50_ms: float
    latency_p95_ms: float
    requests: int = 0
    failed_count: int = 0
    invalid_count: int = 0


@dataclass(frozen=True)
class LatencyHistogram:
    """Cumulative counts per bucket bound (ms; the last is ``+Inf``) and the sum (ms)."""

    bounds_ms: tuple[float, ...]
    cumulative: tuple[int, ...]
    sum_ms: float


class InferenceStats:
    """Thread-safe row counters, a ring of recent latencies and a latency histogram."""

    def __init__(self, window: int = 1024) -> None:
        if window < 1:
            raise ValueError("window must be at least 1")
        self._lock = threading.Lock()
        self._latencies: deque[float] = deque(maxlen=window)
        self._buckets = [0] * (len(LATENCY_BUCKETS_MS) + 1)
        self._latency_sum = 0.0
        self._requests = self._rows = self._failed = self._invalid = 0

    def record(self, latency_ms: float, *, rows: int = 1, outcome: Outcome = "ok") -> None:
        """Count one request of ``rows`` rows and, unless it was invalid, its latency."""
        with self._lock:
            self._requests += 1
            self._rows += rows
            if outcome == "failed":
                self._failed += rows
            elif outcome == "invalid":
                self._invalid += rows
                return
            if math.isfinite(latency_ms) and latency_ms >= 0:
                self._latencies.append(latency_ms)
                self._buckets[bisect.bisect_left(LATENCY_BUCKETS_MS, latency_ms)] += 1
                self._latency_sum += latency_ms

    def snapshot(self) -> StatsSnapshot:
        with self._lock:
            ordered = sorted(self._latencies)
            rows, failed, invalid, requests = (
                self._rows,
                self._failed,
                self._invalid,
                self._requests,
            )
        return StatsSnapshot(
            rows,
            failed + invalid,
            nearest_rank(ordered, 50),
            nearest_rank(ordered, 95),
            requests=requests,
            failed_count=failed,
            invalid_count=invalid,
        )

    def histogram(self) -> LatencyHistogram:
        with self._lock:
            counts, total = list(self._buckets), self._latency_sum
        running, cumulative = 0, []
        for count in counts:
            running += count
            cumulative.append(running)
        return LatencyHistogram((*LATENCY_BUCKETS_MS, math.inf), tuple(cumulative), total)


__all__ = ["LATENCY_BUCKETS_MS", "InferenceStats", "LatencyHistogram", "Outcome", "StatsSnapshot"]
