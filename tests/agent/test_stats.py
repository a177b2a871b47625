"""InferenceStats: counters since start, percentiles over the recent window, thread-safe."""

from __future__ import annotations

import threading

from agent.stats import InferenceStats, StatsSnapshot


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
    stats.record(float("nan"), ok=False)
    stats.record(3.0)
    assert stats.snapshot() == StatsSnapshot(2, 1, 3.0, 3.0)


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
