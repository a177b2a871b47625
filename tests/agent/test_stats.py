"""InferenceStats: rows since start (invalid inputs count as errors), percentiles over the
recent window, a cumulative latency histogram, thread-safe."""

from __future__ import annotations

import math
import threading

from agent.stats import LATENCY_BUCKETS_MS, InferenceStats, StatsSnapshot


def test_stats_without_inferences_report_zeros() -> None:
    assert InferenceStats().snapshot() == StatsSnapshot(0, 0, 0.0, 0.0)


def test_stats_percentiles_are_nearest_rank_over_recorded_latencies() -> None:
    stats = InferenceStats()
    for latency in range(1, 101):
        stats.record(float(latency))
    snap = stats.snapshot()
    assert (snap.latency_p50_ms, snap.latency_p95_ms) == (50.0, 95.0)


def test_stats_percentiles_forget_latencies_older_than_the_window() -> None:
    stats = InferenceStats(window=10)
    for _ in range(100):
        stats.record(500.0)
    for _ in range(10):
        stats.record(2.0)
    snap = stats.snapshot()
    assert (snap.inference_count, snap.latency_p95_ms) == (110, 2.0)


def test_stats_count_errors_and_ignore_non_finite_latencies() -> None:
    stats = InferenceStats()
    stats.record(float("nan"), outcome="failed")
    stats.record(3.0)
    assert stats.snapshot() == StatsSnapshot(2, 1, 3.0, 3.0, requests=2, failed_count=1)


def test_stats_count_rows_and_invalid_inputs_as_errors() -> None:
    stats = InferenceStats()
    stats.record(2.0, rows=40)
    stats.record(5.0, rows=8, outcome="failed")
    stats.record(0.1, rows=3, outcome="invalid")  # the caller's inputs did not fit the model
    assert stats.snapshot() == StatsSnapshot(
        51, 11, 2.0, 5.0, requests=3, failed_count=8, invalid_count=3
    )


def test_stats_histogram_is_cumulative_over_requests_that_ran_the_model() -> None:
    stats = InferenceStats()
    for latency in (0.05, 0.3, 0.3, 7.0, 5000.0):
        stats.record(latency, rows=10)
    stats.record(0.01, outcome="invalid")
    hist = stats.histogram()
    assert hist.bounds_ms == (*LATENCY_BUCKETS_MS, math.inf)
    assert hist.cumulative[0] == 1  # <= 0.1 ms
    assert hist.cumulative[LATENCY_BUCKETS_MS.index(0.5)] == 3
    assert hist.cumulative[LATENCY_BUCKETS_MS.index(10.0)] == 4
    assert hist.cumulative[-2:] == (4, 5)  # 5 s is only in +Inf
    assert hist.sum_ms == 5007.65


def test_stats_lose_no_counts_under_concurrent_recording() -> None:
    stats = InferenceStats()

    def work() -> None:
        for _ in range(2000):
            stats.record(1.0)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert stats.snapshot().inference_count == 8000
