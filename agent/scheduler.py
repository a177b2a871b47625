"""The agent's seam to time: periodic jobs, run soon on demand, cancelled cleanly.

Everything the daemon does over time is a job on a :class:`Scheduler`: telemetry, hello
retries, the components' jobs (models, learning, retrain, sketch window), and the two
that used to be threads of their own: the outbox **pump** (woken by a send, an ack or a
reconnect; every ``drain_interval_s`` for resend deadlines) and the **downlink** job
(woken by each inbound event). So an agent owns no thread but what its transport and its
scheduler bring, and a thousand agents can share one scheduler (its thread pool) and one
transport loop, which is what the fleet simulator needs.

:class:`Job` semantics, whatever the implementation:

- one run at a time per job; a periodic run that comes while one is running is dropped
  (coalesced), never queued;
- :meth:`Job.run_soon` runs it as soon as a worker is free; asked while the job runs, it
  runs once more right after (so a wake-up is never lost, and any number of wake-ups
  during one run cost one more run);
- an exception is logged and the job keeps its schedule;
- :meth:`Job.cancel` removes it and waits for a run in progress to end (unless called
  from that very run), so after it returns the job's function is not running and never
  will again.

:class:`ApsScheduler` is the implementation. APScheduler 3's ``BackgroundScheduler``
keeps time (one scheduling thread; job ids made unique so agents sharing it never
collide; no misfire grace limit, since on a busy shared pool "late" is normal); each due
job is handed to one worker pool, where the guard above wraps the function. ``run_soon``
hands the job to the pool directly: a wake-up (one per outbox send) costs a queue put,
not a pass through APScheduler's job store and loop (moving the next run time to now
cut the drain rate of ``python -m bench agent`` from 670-860 to about 480 msg/s on
mosquitto; handing to the pool keeps it at the old thread's 680-720).
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC
from typing import Protocol

from apscheduler.executors.pool import ThreadPoolExecutor as ApsPool
from apscheduler.jobstores.base import JobLookupError
from apscheduler.schedulers import SchedulerNotRunningError
from apscheduler.schedulers.background import BackgroundScheduler

from edgefleet.clock import Clock

logger = logging.getLogger(__name__)

GUARD_INSTANCES = 1000
"""APScheduler's own per-job instance cap, set out of the way: the guard admits one run
and turns the others into a flag (APScheduler would log each as a skipped run)."""
TIMER_SLACK_S = 0.02
"""HeapScheduler runs a due job up to this late, so close due times share a wake-up."""
TIMEKEEPER_THREADS = 1
"""APScheduler's own pool only hands due jobs to the worker pool: one thread is plenty."""


class Job(Protocol):
    """A scheduled job; see the module docstring for its semantics."""

    def run_soon(self) -> None: ...

    def reschedule(self, interval_s: float) -> None: ...

    def cancel(self) -> None: ...


class Scheduler(Protocol):
    """Runs periodic jobs; shareable by many agents (each cancels only its own jobs)."""

    def every(self, interval_s: float, fn: Callable[[], None], *, name: str) -> Job:
        """Run ``fn()`` every ``interval_s`` seconds from now, first after one interval."""
        ...


class ApsScheduler:
    """:class:`Scheduler` on APScheduler's ``BackgroundScheduler``; ``threads`` bounds its pool.

    The creator starts and shuts it down; an agent given one only adds and cancels jobs.
    """

    _ids = itertools.count(1)

    def __init__(self, *, threads: int = 10) -> None:
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="agent-job")
        self._aps = BackgroundScheduler(
            timezone=UTC,
            executors={"default": ApsPool(TIMEKEEPER_THREADS)},
            job_defaults={
                "coalesce": True,
                "max_instances": GUARD_INSTANCES,
                "misfire_grace_time": None,
            },
        )
        self._lock = threading.Lock()

    @property
    def running(self) -> bool:
        return bool(self._aps.running)

    def start(self) -> None:
        """Start the scheduling thread (jobs added before wait until now). Idempotent."""
        with self._lock:
            if not self._aps.running:
                self._aps.start()

    def shutdown(self) -> None:
        """Stop scheduling and wait for the runs in progress. Idempotent."""
        with self._lock:
            with contextlib.suppress(SchedulerNotRunningError):
                self._aps.shutdown(wait=True)
            self._pool.shutdown(wait=True)

    def every(self, interval_s: float, fn: Callable[[], None], *, name: str) -> Job:
        job = _GuardedJob(self, f"{name}#{next(self._ids)}", name, fn)
        self._aps.add_job(job.due, "interval", seconds=interval_s, id=job.id, name=name)
        return job

    # ------------------------------------------------------------------ for _GuardedJob

    def _submit(self, run: Callable[[], None]) -> None:
        with contextlib.suppress(RuntimeError):  # the pool shut down: nothing runs any more
            self._pool.submit(run)

    def _reschedule(self, job_id: str, interval_s: float) -> None:
        with contextlib.suppress(JobLookupError):
            self._aps.reschedule_job(job_id, trigger="interval", seconds=interval_s)

    def _remove(self, job_id: str) -> None:
        with contextlib.suppress(JobLookupError):
            self._aps.remove_job(job_id)


class HeapScheduler:
    """:class:`Scheduler` on a heap of due times and one timekeeping thread; ``threads``
    bounds its worker pool. What many agents in one process share (the simulator): a
    due job costs a heap pop and a pool hand-off, where APScheduler's job store and
    executor cost several times that (``python -m bench sim``: APScheduler's threads
    took 40 % of a steady fleet's CPU). The same job semantics; no wall-clock triggers,
    only intervals, which is all the agent asks for.
    """

    _ids = itertools.count(1)

    def __init__(self, *, threads: int = 10) -> None:
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="agent-job")
        self._heap: list[tuple[float, int, _GuardedJob]] = []
        self._intervals: dict[str, float] = {}  # job id -> interval; absent once removed
        self._due: dict[str, float] = {}  # job id -> its next run; other heap entries are stale
        self._jobs: dict[str, _GuardedJob] = {}
        self._cv = threading.Condition()
        self._seq = itertools.count()
        self._thread: threading.Thread | None = None
        self._stopped = False

    @property
    def running(self) -> bool:
        return self._thread is not None and not self._stopped

    def start(self) -> None:
        """Start the timekeeping thread (jobs added before wait until now). Idempotent."""
        with self._cv:
            if self._thread is None and not self._stopped:
                self._thread = threading.Thread(
                    target=self._keep_time, name="agent-timekeeper", daemon=True
                )
                self._thread.start()

    def shutdown(self) -> None:
        """Stop scheduling and wait for the runs in progress. Idempotent."""
        with self._cv:
            self._stopped = True
            self._cv.notify()
        if self._thread is not None:
            self._thread.join()
        self._pool.shutdown(wait=True)

    def every(self, interval_s: float, fn: Callable[[], None], *, name: str) -> Job:
        job = _GuardedJob(self, f"{name}#{next(self._ids)}", name, fn)
        with self._cv:
            self._intervals[job.id] = interval_s
            self._jobs[job.id] = job
            self._push(time.monotonic() + interval_s, job)
        return job

    def _push(self, when: float, job: _GuardedJob) -> None:
        first = not self._heap or when < self._heap[0][0]
        self._due[job.id] = when
        heapq.heappush(self._heap, (when, next(self._seq), job))
        if first:
            self._cv.notify()

    def _keep_time(self) -> None:
        while True:
            with self._cv:
                if self._stopped:
                    return
                now = time.monotonic()
                due_now: list[_GuardedJob] = []
                while self._heap and self._heap[0][0] <= now:
                    due, _, job = heapq.heappop(self._heap)
                    interval = self._intervals.get(job.id)
                    if interval is None or due != self._due.get(job.id):
                        continue  # removed, or rescheduled: a newer entry stands for it
                    due_now.append(job)
                    # the next run one interval on; a late one is coalesced, not queued
                    self._push(max(due + interval, now), job)
            for job in due_now:  # outside the lock: every() and cancel() never wait on it
                self._submit(job.run)
            with self._cv:
                if self._halted():  # shutdown() ran while the lock was free
                    return
                # due times closer than TIMER_SLACK_S share one wake-up: a thousand
                # agents' jobs cost a few dozen wake-ups a second, not thousands
                wait = self._heap[0][0] - time.monotonic() if self._heap else None
                self._cv.wait(None if wait is None else max(wait, TIMER_SLACK_S))

    def _halted(self) -> bool:
        return self._stopped

    # ------------------------------------------------------------------ for _GuardedJob

    def _submit(self, run: Callable[[], None]) -> None:
        with contextlib.suppress(RuntimeError):  # the pool shut down: nothing runs any more
            self._pool.submit(run)

    def _reschedule(self, job_id: str, interval_s: float) -> None:
        with self._cv:
            job = self._jobs.get(job_id)
            if job is None:
                return
            self._intervals[job_id] = interval_s
            self._push(time.monotonic() + interval_s, job)

    def _remove(self, job_id: str) -> None:
        with self._cv:
            self._intervals.pop(job_id, None)
            self._due.pop(job_id, None)
            self._jobs.pop(job_id, None)


class _GuardedJob:
    """One job's run guard (module docstring): one run at a time, wake-ups never lost."""

    def __init__(
        self,
        owner: ApsScheduler | HeapScheduler,
        job_id: str,
        name: str,
        fn: Callable[[], None],
    ):
        self.id = job_id
        self.name = name
        self._owner = owner
        self._fn = fn
        self._state = threading.Condition()
        self._runner: int | None = None  # the thread running it now
        self._again = False  # run once more when the current run ends
        self._soon = False  # a run_soon is on its way through APScheduler
        self._cancelled = False

    def due(self) -> None:
        """What APScheduler calls at each interval: hand a run to the pool."""
        self._owner._submit(self.run)

    def run(self) -> None:
        """One run in a pool worker (periodic, or after :meth:`run_soon`)."""
        with self._state:
            if self._cancelled:
                return
            if self._runner is not None:
                self._again = self._again or self._soon
                self._soon = False
                return
            self._runner = threading.get_ident()
            self._soon = False
        try:
            while True:
                try:
                    self._fn()
                except Exception:
                    logger.exception("job %s failed; it keeps its schedule", self.name)
                with self._state:
                    if not self._again or self._cancelled:
                        break
                    self._again = False
        finally:
            with self._state:
                self._runner = None
                self._state.notify_all()

    def run_soon(self) -> None:
        with self._state:
            if self._cancelled or self._soon:
                return
            if self._runner is not None:
                self._again = True
                return
            self._soon = True
        self._owner._submit(self.run)

    def reschedule(self, interval_s: float) -> None:
        self._owner._reschedule(self.id, interval_s)

    def cancel(self) -> None:
        with self._state:
            self._cancelled = True
        self._owner._remove(self.id)
        with self._state:
            if self._runner == threading.get_ident():
                return
            while self._runner is not None:
                self._state.wait()


class JobBook:
    """One agent's named periodic jobs on a (possibly shared) scheduler.

    Jobs are kept by name before :meth:`start` (with the interval last asked for) and put
    on the scheduler then; after :meth:`stop` nothing runs again. Each run is called with
    the clock's ``now_ms``.
    """

    def __init__(self, scheduler: Scheduler, clock: Clock) -> None:
        self._scheduler = scheduler
        self._clock = clock
        self._lock = threading.Lock()
        self._jobs: dict[str, tuple[Callable[[int], None], float]] = {}
        self._running: dict[str, Job] = {}
        self._state = "new"  # new -> started -> stopped

    def add(self, name: str, fn: Callable[[int], None], *, interval_s: float) -> None:
        """Raises: ValueError: a job of that name exists."""
        with self._lock:
            if name in self._jobs:
                raise ValueError(f"a job named {name!r} exists")
            self._jobs[name] = (fn, interval_s)
            if self._state == "started":
                self._schedule(name)

    def reschedule(self, name: str, interval_s: float) -> bool:
        """Run ``name`` every ``interval_s`` from now; False when it already did.

        Raises:
            ValueError: no such job, or an interval that is not positive.
        """
        if not interval_s > 0:
            raise ValueError(f"interval for {name!r} must be positive, not {interval_s!r}")
        with self._lock:
            if name not in self._jobs:
                raise ValueError(f"no job named {name!r}")
            fn, before = self._jobs[name]
            if before == interval_s:
                return False
            self._jobs[name] = (fn, interval_s)
            running = self._running.get(name)
            if running is not None:
                running.reschedule(interval_s)
            return True

    def start(self) -> None:
        with self._lock:
            if self._state != "new":
                return
            self._state = "started"
            for name in self._jobs:
                self._schedule(name)

    def stop(self) -> None:
        """Cancel every job, waiting for runs in progress; none runs again."""
        with self._lock:
            self._state = "stopped"
            running, self._running = list(self._running.values()), {}
        for job in running:
            job.cancel()

    def _schedule(self, name: str) -> None:
        fn, interval_s = self._jobs[name]
        clock = self._clock
        self._running[name] = self._scheduler.every(
            interval_s, lambda: fn(clock.now_ms()), name=name
        )


__all__ = ["ApsScheduler", "HeapScheduler", "Job", "JobBook", "Scheduler"]
