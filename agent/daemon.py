"""The agent daemon: owns the outbox, the MQTT link, the scheduler, identity and local API.

Threads, and what each may do::

    paho network thread   socket I/O; callbacks only put events on a queue (link.py)
    worker                takes link events: downlink guard + handlers, reconnect rewinds
    pump                  drains the outbox: woken by send(), acks and reconnects, and
                          every drain_interval_s for resend deadlines
    scheduler (APScheduler BackgroundScheduler)
                          telemetry, hello retries, and the jobs components add
    HTTP threads          the local API (http_api.py)

The outbox is drained by a pump thread woken by an event, not by a periodic APScheduler
job: a periodic drain adds up to one interval of latency to every ack round trip (so it
caps throughput at ``max_in_flight`` per interval), and APScheduler 3 cannot "run now"
a job that is running without logging a skipped run.

**Extension points** for the other agent components (model manager, learner, trust):

- :meth:`Agent.send` — enqueue an uplink message (durable; ``fetch`` is sent directly);
- :meth:`Agent.register_downlink` / :meth:`Agent.register_fleet` — handlers by kind;
- :meth:`Agent.add_job` — a periodic job, called with ``now_ms``;
  :meth:`Agent.reschedule` changes a job's interval (the hub's config does);
- :meth:`Agent.add_stop_hook` — called with ``now_ms`` on stop, after the last job run and
  before the ``offline`` report and the grace wait (flush what is buffered);
- :meth:`Agent.set_state_source` — the current :class:`StateReport` (the will and the
  ``offline`` report on shutdown are built from it);
- :meth:`Agent.set_inference` — the model runtime behind ``/predict`` and ``/feedback``;
- ``Agent(config, rollout_keys=...)`` — the trust module's current rollout-role keys,
  against which every downlink frame is verified;
- :attr:`Agent.stats` — the runtime records each inference there; telemetry reads it.

**Hello first.** The first message a process sends, whatever sends it, is preceded by a
``hello`` (:meth:`Agent.send` queues one before it), so on a fresh device seq 1 is the
hello and the hub knows the device's key before anything else arrives; components may
send during construction (the model manager's resume report does).

**Going offline.** The broker publishes the last will (a signed ``state`` with the
``offline`` flag, see link.py) when the connection dies uncleanly. On SIGTERM/SIGINT,
:meth:`Agent.stop` finishes the running jobs, runs the stop hooks, enqueues the same
``offline`` state through the outbox, waits up to ``stop_grace_s`` for the hub to
acknowledge what is left, then disconnects cleanly (which suppresses the will). Whatever
is still unacknowledged stays in the outbox and goes out on the next start, so the hub
learns of the shutdown either way.
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import signal
import threading
import time
from collections.abc import Callable, Mapping
from importlib import metadata
from types import FrameType
from typing import Any

from apscheduler.jobstores.base import JobLookupError
from apscheduler.schedulers.background import BackgroundScheduler

from agent.config import AgentConfig
from agent.downlink import Downlink, DownlinkHandler, FleetHandler, KeySource, WindowStore
from agent.errors import NotReady
from agent.http_api import HttpApi, InferenceService, Prediction
from agent.identity import load_or_create
from agent.link import Connected, Link, LinkEvent, LinkSettings
from agent.outbox import TRANSIENT_KINDS, Outbox, OutboxLimits
from agent.stats import InferenceStats
from edgefleet.clock import Clock, SystemClock
from protocol.errors import EdgefleetError
from protocol.frame import Envelope, Message
from protocol.messages import Hello, HubAck, Nudge, StateReport, Telemetry

logger = logging.getLogger(__name__)

STATE_DB = "agent.db"
HELLO_RETRY_S = 60.0
EVENT_QUEUE_SIZE = 10_000
MAX_FLAGS = 16


def agent_version() -> str:
    try:
        return metadata.version("edgefleet")
    except metadata.PackageNotFoundError:
        return "unknown"


class Agent:
    """One device's daemon. :meth:`run` for a process, :meth:`start`/:meth:`stop` in tests.

    Args:
        config: the loaded :class:`AgentConfig`.
        clock: what "now" is for stamps, deadlines and jobs; default the wall clock.
        rollout_keys: returns the rollout-role public keys downlink frames must verify
            under, asked anew for every frame; the default trusts none, so every downlink
            frame (acks included) is refused until the trust module provides them.

    Raises:
        ConfigError: on construction, for TLS files that cannot be loaded.
        IdentityError: on construction, for an unreadable device key.
    """

    def __init__(
        self,
        config: AgentConfig,
        *,
        clock: Clock | None = None,
        rollout_keys: KeySource = tuple,
    ) -> None:
        self.config = config
        self.clock: Clock = clock or SystemClock()
        self.topics = config.topics
        self.identity = load_or_create(config.state_dir, config.device_id)
        self.stats = InferenceStats()
        self._events: queue.Queue[LinkEvent] = queue.Queue(EVENT_QUEUE_SIZE)
        self.link = Link(self._link_settings(), self._events, will=self._seal_will)
        path = config.state_dir / STATE_DB
        self.outbox = Outbox(
            path,
            self.identity,
            OutboxLimits(
                max_messages=config.outbox_max_messages,
                max_bytes=config.outbox_max_bytes,
                max_in_flight=config.outbox_max_in_flight,
                ack_timeout_ms=round(config.ack_timeout_s * 1000),
            ),
        )
        self._window = WindowStore(path)
        self.downlink = Downlink(
            device_id=config.device_id,
            topics=self.topics,
            rollout_keys=rollout_keys,
            store=self._window,
        )
        self.downlink.register("ack", self._on_ack)
        self.downlink.register("nudge", self._on_nudge)
        self._scheduler = BackgroundScheduler(
            timezone="UTC", job_defaults={"coalesce": True, "max_instances": 1}
        )
        self._jobs: list[tuple[str, Callable[[int], None], float]] = []
        self._intervals: dict[str, float] = {}
        self._schedule_lock = threading.Lock()
        self._stop_hooks: list[tuple[str, Callable[[int], None]]] = []
        self._state_source: Callable[[], StateReport] = lambda: StateReport(active=None)
        self._inference: InferenceService | None = None
        self._http: HttpApi | None = None
        self._wake = threading.Event()
        self._settled = threading.Event()
        self._pump_stop = threading.Event()
        self._rewind = threading.Event()
        self._work_stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._started_ms: int | None = None
        self._stopped = False
        self._hello_seq: int | None = None
        self._hello_acked = False
        self._hello_lock = threading.RLock()
        self._greeted = False

    # ------------------------------------------------------------------ extension points

    def send(self, message: Message) -> int:
        """Send ``message`` to the hub; return its seq.

        Everything but ``fetch`` is committed to the outbox before this returns and
        leaves it only when the hub acknowledges it. A ``fetch`` is signed with a fresh
        seq and published at once if the link is up, else not at all (the downloader
        retries). A :class:`StateReport` sent after an outbox drop carries the
        ``outbox_dropped`` flag. The first message of a process is preceded by a
        ``hello`` (module docstring).

        Raises:
            Oversize: the frame would exceed the frame size limit.
            Malformed: a header field out of range.
        """
        now = self.clock.now_ms()
        if not self._greeted and not isinstance(message, Hello):
            self._greet(now)
        if message.KIND in TRANSIENT_KINDS:
            sealed = self.outbox.seal(message, now)
            topic = self.topics.up(self.config.device_id, sealed.kind)
            if not self.link.publish(topic, sealed.frame):
                logger.debug("%s seq %d not sent: no connection", sealed.kind, sealed.seq)
            return sealed.seq
        if isinstance(message, StateReport) and self.outbox.take_drop_flag():
            message = _with_flag(message, "outbox_dropped")
        seq = self.outbox.enqueue(message, now)
        self._wake.set()
        return seq

    def register_downlink(self, kind: str, handler: DownlinkHandler) -> None:
        """Run ``handler(envelope)`` for each new verified ``down/<kind>`` frame (worker thread).

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
        """
        with self._schedule_lock:
            self._jobs.append((name, job, interval_s))
            if self._scheduler.running:
                self._schedule(name, job, self._intervals.get(name, interval_s))

    def reschedule(self, name: str, interval_s: float) -> None:
        """Run the job ``name`` (``telemetry`` or an added one) every ``interval_s`` from now.

        Before :meth:`start` the new interval is kept and used when the job is scheduled.

        Raises:
            ValueError: no such job, or an interval that is not positive.
        """
        if not interval_s > 0:
            raise ValueError(f"interval for {name!r} must be positive, not {interval_s!r}")
        with self._schedule_lock:
            if name != "telemetry" and all(name != n for n, _, _ in self._jobs):
                raise ValueError(f"no job named {name!r}")
            if self._intervals.get(name) == interval_s:
                return
            self._intervals[name] = interval_s
            if self._scheduler.running:
                try:
                    self._scheduler.reschedule_job(name, trigger="interval", seconds=interval_s)
                except JobLookupError:  # the scheduler is shutting down
                    return
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
        box = self.outbox.stats()
        stats = self.stats.snapshot()
        out: dict[str, Any] = {
            "device_id": self.config.device_id,
            "connected": self.link.connected,
            "outbox": dataclasses.asdict(box),
            "inference": dataclasses.asdict(stats),
            "downlink": self.downlink.counters(),
        }
        if self._inference is not None:
            out["runtime"] = dict(self._inference.status())
        return out

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Serve the local API, connect, and start draining and the scheduled jobs.

        Raises:
            AgentError: the local API cannot listen on its port.
        """
        if self.config.http_port:
            self._http = HttpApi(self, self.config.http_host, self.config.http_port)
            self._http.start()
        now = self.clock.now_ms()
        self._started_ms = now
        self.send_hello(now)
        for target, name in ((self._work, "agent-worker"), (self._pump, "agent-pump")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        self.link.start()
        with self._schedule_lock:
            telemetry = self._intervals.get("telemetry", self.config.telemetry_interval_s)
            self._schedule("telemetry", self.send_telemetry, telemetry)
            self._schedule("hello", self.send_hello, HELLO_RETRY_S)
            for name, job, interval in self._jobs:
                self._schedule(name, job, self._intervals.get(name, interval))
            self._scheduler.start()
        logger.info("agent %s started", self.config.device_id)

    def stop(self) -> None:
        """Finish the running jobs, run the stop hooks, report ``offline``, flush what the
        hub acks, disconnect."""
        if self._stopped:
            return
        self._stopped = True
        if self._scheduler.running:
            self._scheduler.shutdown(wait=True)
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
                self._settled.wait(0.05)
                self._settled.clear()
        self._pump_stop.set()
        self._wake.set()
        self.link.stop()
        self._work_stop.set()
        for thread in self._threads:
            thread.join()
        self.outbox.close()
        self._window.close()
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
        with self._hello_lock:  # a message racing the first hello waits and goes after it
            pending = self._hello_seq is not None and self.outbox.contains(self._hello_seq)
            if self._hello_acked or pending:
                self._greeted = True
                return
            self._hello_seq = self.send(
                Hello(
                    public_key=self.identity.public_hex,
                    agent_version=agent_version()[:64],
                    tags=dict(self.config.tags),
                    enrollment_token=self.config.enrollment_token,
                    active=self._state_source().active,
                )
            )
            self._greeted = True

    def _greet(self, now_ms: int) -> None:
        """The hello that goes before the process's first message (module docstring)."""
        try:
            self.send_hello(now_ms)
        except EdgefleetError as e:  # start() and the hello job try again
            logger.error("cannot queue the hello: %s", e)
            self._greeted = True

    def drain(self, now_ms: int) -> int:
        """Publish what the outbox says is due, oldest first; return how many went out.

        Called by the pump thread only (the outbox's in-flight book assumes one drainer);
        reconnects and ``resend`` nudges ask the pump to rewind first.
        """
        sent = 0
        while self.link.connected:
            batch = self.outbox.due(now_ms)
            if not batch:
                break
            for sealed in batch:
                topic = self.topics.up(self.config.device_id, sealed.kind)
                if not self.link.publish(topic, sealed.frame):
                    return sent
                self.outbox.mark_sent(sealed.seq, now_ms)
                sent += 1
        return sent

    # ------------------------------------------------------------------ internals

    def _schedule(self, name: str, job: Callable[[int], None], interval_s: float) -> None:
        self._scheduler.add_job(
            lambda: job(self.clock.now_ms()), "interval", seconds=interval_s, id=name, name=name
        )

    def _pump(self) -> None:
        while not self._pump_stop.is_set():
            self._wake.wait(self.config.drain_interval_s)
            self._wake.clear()
            try:
                if self._rewind.is_set():
                    self._rewind.clear()
                    self.outbox.rewind()
                self.drain(self.clock.now_ms())
            except Exception:
                logger.exception("outbox drain failed; retrying on the next wake-up")

    def _work(self) -> None:
        while not self._work_stop.is_set():
            try:
                event = self._events.get(timeout=0.2)
            except queue.Empty:
                continue
            try:
                if isinstance(event, Connected):
                    self._rewind.set()
                    self._wake.set()
                else:
                    self.downlink.dispatch(event.topic, event.payload, retained=event.retained)
            except Exception:  # the worker must outlive any one frame; no payload logged
                logger.exception("downlink event not handled; the worker carries on")

    def _on_ack(self, envelope: Envelope) -> None:
        assert isinstance(envelope.message, HubAck)
        settled = self.outbox.settle(envelope.message)
        if any(kind == "hello" for _, kind in settled.committed):
            self._hello_acked = True
        if any(kind == "hello" for _, kind, _ in settled.refused):
            self._hello_seq = None
        self._settled.set()
        self._wake.set()

    def _on_nudge(self, envelope: Envelope) -> None:
        assert isinstance(envelope.message, Nudge)
        if envelope.message.reason == "resend":
            self._rewind.set()
            self._wake.set()

    def _offline_state(self) -> StateReport:
        return _with_flag(self._state_source(), "offline")

    def _seal_will(self) -> tuple[str, bytes]:
        sealed = self.outbox.seal(self._offline_state(), self.clock.now_ms())
        return self.topics.up(self.config.device_id, "state"), sealed.frame

    def _link_settings(self) -> LinkSettings:
        c = self.config
        return LinkSettings(
            broker=c.broker,
            client_id=f"ef-{c.device_id}",
            subscriptions=(self.topics.device_down(c.device_id), self.topics.all_fleet()),
            ca_file=c.ca_file,
            cert_file=c.cert_file,
            key_file=c.key_file,
            keepalive_s=c.keepalive_s,
            reconnect_min_s=c.reconnect_min_s,
            reconnect_max_s=c.reconnect_max_s,
        )


def _with_flag(report: StateReport, flag: str) -> StateReport:
    if flag in report.flags:
        return report
    return dataclasses.replace(report, flags=(*report.flags[: MAX_FLAGS - 1], flag))
