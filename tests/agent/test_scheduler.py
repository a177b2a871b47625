"""The scheduler seam (agent/scheduler.py), on the real APScheduler and on the heap scheduler
the simulator shares: one run at a time, wake-ups never lost, cancel waits for the run in
progress, agents sharing one scheduler never collide."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import pytest

from agent.scheduler import ApsScheduler, HeapScheduler, JobBook
from tests.clock import FakeClock

LONG_S = 3600.0


@pytest.fixture(params=["aps", "heap"])
def scheduler(request: pytest.FixtureRequest) -> Iterator[ApsScheduler | HeapScheduler]:
    shared = ApsScheduler(threads=4) if request.param == "aps" else HeapScheduler(threads=4)
    shared.start()
    yield shared
    shared.shutdown()


def eventually(condition: Callable[[], bool], what: str, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def test_run_soon_runs_a_job_long_before_its_interval(
    scheduler: ApsScheduler | HeapScheduler,
) -> None:
    ran = threading.Event()
    job = scheduler.every(LONG_S, ran.set, name="probe")
    started = time.monotonic()
    job.run_soon()
    assert ran.wait(5)
    assert time.monotonic() - started < 1.0
    job.cancel()


def test_wake_ups_during_a_run_cost_exactly_one_more_run(
    scheduler: ApsScheduler | HeapScheduler,
) -> None:
    inside, release = threading.Event(), threading.Event()
    runs: list[float] = []

    def work() -> None:
        runs.append(time.monotonic())
        if len(runs) == 1:
            inside.set()
            release.wait(5)

    job = scheduler.every(LONG_S, work, name="probe")
    job.run_soon()
    assert inside.wait(5)
    for _ in range(50):  # a burst of sends while the pump drains
        job.run_soon()
    release.set()
    eventually(lambda: len(runs) == 2, "the one run the wake-ups asked for")
    time.sleep(0.3)
    assert len(runs) == 2
    job.cancel()


def test_a_periodic_run_that_comes_while_one_runs_is_dropped(
    scheduler: ApsScheduler | HeapScheduler,
) -> None:
    runs = 0
    concurrent, peak = 0, 0
    lock = threading.Lock()

    def slow() -> None:
        nonlocal runs, concurrent, peak
        with lock:
            runs, concurrent = runs + 1, concurrent + 1
            peak = max(peak, concurrent)
        time.sleep(0.25)
        with lock:
            concurrent -= 1

    job = scheduler.every(0.02, slow, name="slow")
    time.sleep(1.0)
    job.cancel()
    assert peak == 1
    assert runs <= 5  # back to back at most, never queued up (50 intervals passed)


def test_cancel_waits_for_the_run_in_progress_and_nothing_runs_after(
    scheduler: ApsScheduler | HeapScheduler,
) -> None:
    inside = threading.Event()
    finished: list[bool] = []

    def work() -> None:
        inside.set()
        time.sleep(0.3)
        finished.append(True)

    job = scheduler.every(0.05, work, name="probe")
    assert inside.wait(5)
    job.cancel()
    assert finished  # cancel returned only after the run ended
    count = len(finished)
    job.run_soon()
    time.sleep(0.3)
    assert len(finished) == count


def test_a_failing_job_is_logged_and_keeps_its_schedule(
    scheduler: ApsScheduler | HeapScheduler, caplog: pytest.LogCaptureFixture
) -> None:
    runs: list[int] = []

    def failing() -> None:
        runs.append(1)
        raise RuntimeError("boom")

    job = scheduler.every(0.05, failing, name="failing")
    eventually(lambda: len(runs) >= 3, "runs after the first failure")
    job.cancel()
    assert any("job failing failed" in r.getMessage() for r in caplog.records)


def test_two_agents_job_books_share_a_scheduler_without_colliding(
    scheduler: ApsScheduler | HeapScheduler, clock: FakeClock
) -> None:
    first, second = JobBook(scheduler, clock), JobBook(scheduler, clock)
    seen: dict[str, list[int]] = {"first": [], "second": []}
    first.add("telemetry", seen["first"].append, interval_s=0.05)
    second.add("telemetry", seen["second"].append, interval_s=0.05)
    first.start()
    second.start()
    eventually(lambda: bool(seen["first"]) and bool(seen["second"]), "both books' jobs")
    first.stop()
    before = len(seen["first"])
    eventually(lambda: len(seen["second"]) >= 3, "the second book running on")
    assert len(seen["first"]) == before
    assert seen["second"][0] == clock.now_ms()  # jobs are called with the clock's time
    second.stop()


def test_a_job_book_keeps_an_interval_set_before_start(
    scheduler: ApsScheduler | HeapScheduler, clock: FakeClock
) -> None:
    book = JobBook(scheduler, clock)
    ran = threading.Event()
    book.add("probe", lambda now_ms: ran.set(), interval_s=LONG_S)
    assert book.reschedule("probe", 0.05)
    assert not book.reschedule("probe", 0.05)  # unchanged
    with pytest.raises(ValueError, match="no job"):
        book.reschedule("nope", 1.0)
    with pytest.raises(ValueError, match="exists"):
        book.add("probe", lambda now_ms: None, interval_s=1.0)
    book.start()
    assert ran.wait(5)
    book.stop()


def test_a_running_job_rescheduled_shorter_runs_at_its_new_interval(
    scheduler: ApsScheduler | HeapScheduler,
) -> None:
    runs: list[float] = []
    job = scheduler.every(LONG_S, lambda: runs.append(time.monotonic()), name="probe")
    job.reschedule(0.05)
    eventually(lambda: len(runs) >= 3, "runs at the new interval")
    job.cancel()
