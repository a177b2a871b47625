"""The agent daemon: the uplink, the downlink guard, the jobs and the local API of one device.

Two seams carry everything that is I/O or time, each injectable, each defaulting to the
real implementation:

- a :class:`~agent.transport.Transport` (default :class:`agent.link.Link`: one paho
  client, its network thread and a reconnect supervisor) delivers inbound events and
  publishes frames;
- a :class:`~agent.scheduler.Scheduler` (default: an :class:`~agent.scheduler.ApsScheduler`
  the agent owns) runs every job: ``telemetry``, ``hello``, the components' jobs, the
  outbox ``pump`` (agent/uplink.py) and the ``downlink`` job that dispatches inbound
  events (agent/downlink.py). Given a shared one, the agent only adds and cancels its own.

So the daemon has no thread of its own (the local HTTP API keeps its server thread):
many agents can share one scheduler and one transport loop (the fleet simulator).
docs/agent-architecture.md draws the whole picture.

**Extension points** for the other components: :meth:`Agent.send` (durable until the hub
acks; ``fetch`` goes directly) and :meth:`Agent.fate`; :meth:`Agent.register_downlink`
and :meth:`Agent.register_fleet`; :meth:`Agent.add_job` and :meth:`Agent.reschedule`
(jobs get ``now_ms``); :meth:`Agent.add_stop_hook`; :meth:`Agent.set_state_source` (the
will and the ``offline`` report); :meth:`Agent.set_inference` (``/predict``,
``/feedback``); :meth:`Agent.add_metrics` (``/metrics``); ``rollout_keys`` (every
downlink frame verifies under them); :attr:`Agent.stats` (rows, agent/stats.py).

**One process per state directory.** The agent takes the directory's lock
(edgefleet/lock.py) before it opens anything there, unless its owner (agent/device.py)
passes the lock it holds; a second agent fails with :class:`~agent.errors.StateDirInUse`
before it reads or repairs anything.

**Going offline.** The broker publishes the last will (a signed ``offline`` state) when
the connection dies uncleanly. :meth:`Agent.stop` cancels the periodic jobs (waiting for
runs in progress), runs the stop hooks, enqueues the same ``offline`` state, waits up to
``stop_grace_s`` for the hub's acks, then disconnects cleanly (no will). What is still
unacknowledged goes out on the next start, so the hub learns of the shutdown either way.
"""

from __future__ import annotations

import dataclasses
import logging
import signal
import threading
import time
from collections.abc import Callable, Mapping
from types import FrameType
from typing import Any

from agent.config import AgentConfig
from agent.downlink import (
    Downlink,
    DownlinkHandler,
    FleetHandler,
    Inbox,
    KeySource,
    WindowStore,
)
from agent.errors import NotReady, StateDirInUse
from agent.http_api import HttpApi, InferenceService, Prediction
from agent.identity import load_or_create
from agent.link import Link, LinkSettings
from agent.metrics import Metric, MetricSource, daemon_metrics, render
from agent.scheduler import ApsScheduler, Job, JobBook, Scheduler
from agent.shared_loop import SharedLoop
from agent.stats import InferenceStats
from agent.transport import Transport
from agent.uplink import Uplink, with_flag
from edgefleet.clock import Clock, SystemClock
from edgefleet.lock import DirectoryInUse, DirectoryLock
from protocol.frame import Message
from protocol.messages import StateReport, Telemetry

logger = logging.getLogger(__name__)

STATE_DB = "agent.db"
HELLO_RETRY_S = 60.0
DOWNLINK_POLL_S = 1.0
"""The downlink job also runs this often, so an event whose wake-up was lost still goes."""


def lock_state_dir(config: AgentConfig) -> DirectoryLock:
    """Take ``config.state_dir``'s lock (creating the directory).

    Raises:
        StateDirInUse: another agent holds it.
    """
    try:
        return DirectoryLock(config.state_dir).acquire()
    except DirectoryInUse as e:
        raise StateDirInUse(f"state_dir {e}: another agent runs on it; not starting") from e


class Agent:
    """One device's daemon. :meth:`run` for a process, :meth:`start`/:meth:`stop` in tests.

    Args:
        config: the loaded :class:`AgentConfig`.
        clock: what "now" is for stamps, deadlines and jobs; default the wall clock.
        rollout_keys: returns the rollout-role public keys downlink frames must verify
            under, asked anew for every frame; the default trusts none, so every downlink
            frame (acks included) is refused until the trust module provides them.
        trusted_now: lifts the clock's ``now_ms`` to trusted time (the trust store's time
            floor) for the downlink window's bound on seqs from the future; default the
            clock as it is.
        transport: the broker session; default a :class:`~agent.link.Link` from config,
            or a session on ``loop`` when one is given.
        loop: a :class:`~agent.shared_loop.SharedLoop` many agents' sessions share (one
            thread for all: the fleet simulator); ignored when ``transport`` is given.
        scheduler: runs the jobs; default one of its own (started and shut down here).
        lock: the state directory's lock, already held by the caller (who releases it);
            default: the agent takes it and releases it on :meth:`stop`.

    Raises:
        StateDirInUse: on construction, another agent runs on ``state_dir``.
        ConfigError: on construction, for TLS files that cannot be loaded.
        IdentityError: on construction, for an unreadable device key.
    """

    def __init__(
        self,
        config: AgentConfig,
        *,
        clock: Clock | None = None,
        rollout_keys: KeySource = tuple,
        trusted_now: Callable[[int], int] | None = None,
        transport: Transport | None = None,
        scheduler: Scheduler | None = None,
        lock: DirectoryLock | None = None,
        loop: SharedLoop | None = None,
    ) -> None:
        self._own_lock = lock_state_dir(config) if lock is None else None
        self.config = config
        self.clock: Clock = clock or SystemClock()
        self.topics = config.topics
        self.stats = InferenceStats()
        self._state_source: Callable[[], StateReport] = lambda: StateReport(active=None)
        try:  # what may raise, before anything else: the lock must not outlive a failure
            self.identity = load_or_create(config.state_dir, config.device_id)
            self.transport: Transport = transport or _link(config, loop)
            path = config.state_dir / STATE_DB
            self.uplink = Uplink(
                config,
                self.identity,
                self.transport,
                path=path,
                clock=self.clock,
                active=lambda: self._state_source().active,
            )
            self._window = WindowStore(path)
        except BaseException:
            if self._own_lock is not None:
                self._own_lock.release()
            raise
        self.outbox = self.uplink.outbox
        lift = trusted_now or (lambda now_ms: now_ms)
        self.downlink = Downlink(
            device_id=config.device_id,
            topics=self.topics,
            rollout_keys=rollout_keys,
            store=self._window,
            now_ms=lambda: lift(self.clock.now_ms()),
        )
        self.downlink.register("ack", self.uplink.on_ack)
        self.downlink.register("nudge", self.uplink.on_nudge)
        self.inbox = Inbox(self.downlink, self.uplink.reconnected)
        self._own_scheduler: ApsScheduler | None = None
        if scheduler is None:
            scheduler = self._own_scheduler = ApsScheduler()
        self._scheduler = scheduler
        self._jobs = JobBook(self._scheduler, self.clock)
        self._jobs.add("telemetry", self.send_telemetry, interval_s=config.telemetry_interval_s)
        self._jobs.add("hello", self.send_hello, interval_s=HELLO_RETRY_S)
        self._io_jobs: list[Job] = []
        self._stop_hooks: list[tuple[str, Callable[[int], None]]] = []
        self._metrics: list[MetricSource] = [self._own_metrics]
        self._inference: InferenceService | None = None
        self._http: HttpApi | None = None
        self._started_ms: int | None = None
        self._stopped = False

    # ------------------------------------------------------------------ extension points

    def send(self, message: Message) -> int:
        """Send ``message`` to the hub; return its seq. Committed to the outbox before this
        returns, it leaves only when the hub acks it; a ``fetch`` is published at once or
        not at all; the process's first message goes after a ``hello`` (agent/uplink.py).

        Raises:
            Oversize: the frame would exceed the frame size limit.
            Malformed: a header field out of range.
        """
        return self.uplink.send(message)

    def fate(self, seq: int, kind: str) -> str:
        """Where frame ``seq`` stands: ``queued``, ``committed``, ``refused: ...``, ``dropped``."""
        return self.uplink.fate(seq, kind)

    def register_downlink(self, kind: str, handler: DownlinkHandler) -> None:
        """Run ``handler(envelope)`` for each new verified ``down/<kind>`` frame (downlink job).

        Raises:
            ValueError: not a downlink kind.
        """
        self.downlink.register(kind, handler)

    def register_fleet(self, kind: str, handler: FleetHandler) -> None:
        """Run ``handler(raw_bytes)`` for each ``fleet/<kind>`` document; it must verify them.

        Raises:
            ValueError: not a fleet kind.
        """
        self.downlink.register_fleet(kind, handler)

    def add_job(self, name: str, job: Callable[[int], None], *, interval_s: float) -> None:
        """Run ``job(now_ms)`` every ``interval_s`` seconds from start until stop.

        One run at a time per job; a late run is coalesced. An exception is logged and the
        job keeps its schedule.

        Raises:
            ValueError: a job of that name exists (``telemetry`` and ``hello`` do).
        """
        self._jobs.add(name, job, interval_s=interval_s)

    def reschedule(self, name: str, interval_s: float) -> None:
        """Run the job ``name`` (``telemetry`` or an added one) every ``interval_s`` from now.

        Before :meth:`start` the new interval is kept and used when the job is scheduled.

        Raises:
            ValueError: no such job, or an interval that is not positive.
        """
        if self._jobs.reschedule(name, interval_s):
            logger.info("job %s now runs every %g s", name, interval_s)

    def add_stop_hook(self, name: str, hook: Callable[[int], None]) -> None:
        """Call ``hook(now_ms)`` on :meth:`stop`, after the jobs' last run and the local API
        stopped, before the ``offline`` report: what it sends is queued (durably) first
        and goes out within ``stop_grace_s`` if the hub acks in time, else on the next
        start. An exception is logged and the stop carries on.
        """
        self._stop_hooks.append((name, hook))

    def set_state_source(self, source: Callable[[], StateReport]) -> None:
        """Where the will and the shutdown ``offline`` report get the current state from."""
        self._state_source = source

    def set_inference(self, service: InferenceService) -> None:
        """The model runtime that answers ``/predict`` and ``/feedback``."""
        self._inference = service

    def add_metrics(self, source: MetricSource) -> None:
        """Serve ``source()``'s metrics on ``/metrics`` too (read on each scrape)."""
        self._metrics.append(source)

    # ------------------------------------------------------------------ InferenceService

    def predict(self, inputs: list[Any]) -> Prediction:
        """Forward to the runtime. Raises: NotReady, or whatever the runtime raises."""
        if self._inference is None:
            raise NotReady("no model runtime is running yet")
        return self._inference.predict(inputs)

    def feedback(self, labels: Mapping[str, Any]) -> Mapping[str, Any]:
        """Forward to the runtime. Raises: NotReady, or whatever the runtime raises."""
        if self._inference is None:
            raise NotReady("no model runtime is running yet")
        return self._inference.feedback(labels)

    def status(self) -> Mapping[str, Any]:
        out: dict[str, Any] = {
            "device_id": self.config.device_id,
            "connected": self.transport.connected,
            "outbox": dataclasses.asdict(self.outbox.stats()),
            "inference": dataclasses.asdict(self.stats.snapshot()),
            "downlink": self.downlink.counters(),
        }
        if self._inference is not None:
            out["runtime"] = dict(self._inference.status())
        return out

    def metrics(self) -> tuple[bytes, str]:
        """``/metrics``: the exposition text and its content type (agent/metrics.py)."""
        return render(self._metrics)

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Serve the local API, connect, and start draining and the scheduled jobs.

        Raises:
            AgentError: the local API cannot listen on its port.
        """
        if self.config.http_port:
            self._http = HttpApi(
                self, self.config.http_host, self.config.http_port, metrics=self.metrics
            )
            self._http.start()
        if self._own_scheduler is not None:
            self._own_scheduler.start()
        now_ms = self.clock.now_ms()
        self._started_ms = now_ms
        self.send_hello(now_ms)
        pump = self._scheduler.every(self.config.drain_interval_s, self._pump, name="pump")
        downlink = self._scheduler.every(DOWNLINK_POLL_S, self.inbox.dispatch, name="downlink")
        self._io_jobs = [pump, downlink]
        self.uplink.wake = pump.run_soon
        self.inbox.wake = downlink.run_soon
        self.transport.subscribe(
            self.topics.device_down(self.config.device_id), self.topics.all_fleet()
        )
        self.transport.on_event(self.inbox.put)
        self.transport.connect(will=self._seal_will)
        self._jobs.start()
        pump.run_soon()
        logger.info("agent %s started", self.config.device_id)

    def stop(self) -> None:
        """Finish the running jobs, run the stop hooks, report ``offline``, flush what the
        hub acks, disconnect."""
        if self._stopped:
            return
        self._stopped = True
        self._jobs.stop()
        if self._http is not None:
            self._http.stop()
        for name, hook in self._stop_hooks:
            try:
                hook(self.clock.now_ms())
            except Exception:
                logger.exception("stop hook %s failed; stopping anyway", name)
        if self._started_ms is not None:
            try:
                self.send(self._offline_state())
            except Exception:
                logger.exception("cannot report offline; stopping anyway")
            deadline = time.monotonic() + self.config.stop_grace_s
            while self.outbox.stats().depth and time.monotonic() < deadline:
                self.uplink.settled.wait(0.05)
                self.uplink.settled.clear()
        for job in self._io_jobs:
            job.cancel()
        self.transport.disconnect()
        if self._own_scheduler is not None:
            self._own_scheduler.shutdown()
        self.outbox.close()
        self._window.close()
        if self._own_lock is not None:
            self._own_lock.release()
        logger.info("agent %s stopped", self.config.device_id)

    def run(self) -> None:
        """Start, block until SIGTERM or SIGINT, then stop. Main thread only."""
        stop = threading.Event()

        def on_signal(signum: int, frame: FrameType | None) -> None:
            stop.set()

        previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            self.start()
            while not stop.wait(0.5):
                pass
            logger.info("signal received: stopping")
        finally:
            self.stop()
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    # ------------------------------------------------------------------ jobs

    def send_telemetry(self, now_ms: int) -> None:
        stats, box = self.stats.snapshot(), self.outbox.stats()
        self.send(
            Telemetry(
                uptime_s=max(0, now_ms - (self._started_ms or now_ms)) / 1000,
                inference_count=stats.inference_count,
                error_count=stats.error_count,
                latency_p50_ms=stats.latency_p50_ms,
                latency_p95_ms=stats.latency_p95_ms,
                outbox_depth=box.depth,
                outbox_dropped=box.dropped,
                model=self._state_source().active,
            )
        )

    def send_hello(self, now_ms: int) -> None:
        """Send a hello unless one was acknowledged or one is still waiting in the outbox."""
        self.uplink.send_hello(now_ms)

    # ------------------------------------------------------------------ internals

    def _pump(self) -> None:
        self.uplink.pump(self.clock.now_ms())

    def _offline_state(self) -> StateReport:
        return with_flag(self._state_source(), "offline")

    def _seal_will(self) -> tuple[str, bytes]:
        return self.uplink.seal(self._offline_state())

    def _own_metrics(self) -> list[Metric]:
        return daemon_metrics(
            self.stats.snapshot(),
            self.stats.histogram(),
            self.outbox.stats(),
            self.downlink.counters(),
            connected=self.transport.connected,
        )


def _link(config: AgentConfig, loop: SharedLoop | None) -> Transport:
    settings = LinkSettings.from_config(config)
    return Link(settings) if loop is None else loop.link(settings)


__all__ = ["HELLO_RETRY_S", "STATE_DB", "Agent", "lock_state_dir"]
