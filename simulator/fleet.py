"""Many complete agents in one process: for the demo, ``edgefleet sim`` and the scale bench.

Each simulated device is a real :class:`agent.device.Device` (its own Ed25519 key,
outbox, trusted state, model slots and learning loop) with its own state directory
under one root, so what the hub sees is what it would see from separate machines. What
they share is what costs threads and memory when every device has its own:

- **one MQTT loop** (:class:`agent.shared_loop.SharedLoop`): every device's session is
  a paho client driven by one selector thread, not a network thread and a supervisor
  thread per device;
- **one job scheduler** (:class:`agent.scheduler.HeapScheduler`): every device's jobs,
  outbox pump and downlink dispatch are due times on one heap, run on one pool;
- **one onnxruntime session per model** (agent/runtime.py's cache): devices serving the
  same version share it;
- **no local HTTP API** unless ``http=True``: then each device serves its own on a
  loopback port (``urls``), a thread each, as the demo's requests need. Without it the
  process drives devices directly (:meth:`agent.device.Device.predict`).

Starting is paced (:class:`Pacing`): at most ``rate`` devices a second, and no more than
``max_unacked`` started devices whose hello the hub has not acknowledged yet, so a
thousand devices enrolling do not storm the hub and the broker at once.

:class:`ResourceMeter` reads the process's CPU time and resident memory, so a run can
report what a device costs: CPU seconds and megabytes per device, over the whole process
(the hub's share too, when it runs in this process).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import resource
import signal
import socket
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from agent.config import AgentConfig
from agent.device import Device
from agent.errors import AgentError
from agent.scheduler import HeapScheduler
from agent.shared_loop import SharedLoop
from edgefleet.clock import Clock

logger = logging.getLogger(__name__)

MAX_DEVICES = 5000
STOP_WORKERS = 32
"""Devices stopping at once: each waits up to its stop grace for the hub's acks."""


@dataclasses.dataclass(frozen=True)
class Pacing:
    """How fast devices start: ``rate`` a second at most, and no new one while
    ``max_unacked`` started devices wait for the hub to acknowledge their hello (for at
    most ``ack_wait_s`` at a time: a hub that never answers slows the start, it does not
    stop it)."""

    rate: float = 50.0
    max_unacked: int = 100
    ack_wait_s: float = 5.0


@dataclasses.dataclass(eq=False)
class SimulatedFleet:
    """Running devices by id; stop them with :meth:`stop` or a ``with`` block."""

    devices: dict[str, Device]
    urls: dict[str, str]
    scheduler: HeapScheduler = dataclasses.field(default_factory=HeapScheduler)
    loop: SharedLoop = dataclasses.field(default_factory=SharedLoop)
    configs: dict[str, AgentConfig] = dataclasses.field(default_factory=dict)
    retired: list[tuple[int, int]] = dataclasses.field(default_factory=list)
    """``(enqueued, committed)`` of the outboxes of agents :meth:`halt` stopped (a new agent
    counts anew from its start; dropped and refused counts are kept in the outbox's file)."""

    @classmethod
    def start(
        cls,
        state_root: Path,
        *,
        count: int,
        broker_url: str,
        root_metadata: Path,
        enrollment_token: str | None,
        prefix: str = "sim",
        tags: dict[str, str] | None = None,
        http: bool = True,
        pacing: Pacing | None = None,
        **settings: Any,
    ) -> SimulatedFleet:
        """Start ``count`` devices ``{prefix}-0`` ... (``settings``: more AgentConfig fields;
        ``tags``: what each device says about itself, ``{"fleet": prefix}`` by default).

        Each logs in to the broker as itself with a password it made (access control is on
        wherever the hub runs the broker, and on Mosquitto configured by ``edgefleet broker
        config``: pass ``enroll_broker_url`` for its enrollment listener). With ``http``
        each serves its local API on a free loopback port (``urls``).

        Raises:
            ConfigError, StateCorrupt, IdentityError: a device cannot be built.
            AgentError: a local API port cannot be bound.
        """
        pace = pacing or Pacing()
        fleet = cls({}, {}, HeapScheduler(threads=max(4, min(count, 16))), SharedLoop())
        fleet.scheduler.start()
        fleet.loop.start()
        try:
            started = time.monotonic()
            for i in range(count):
                fleet._pace(i, started, pace)
                device_id = f"{prefix}-{i}"
                port = _free_port() if http else 0
                config = AgentConfig(
                    device_id=device_id,
                    state_dir=state_root / device_id,
                    broker_url=broker_url,
                    root_metadata=root_metadata,
                    enrollment_token=enrollment_token,
                    tags=tags if tags is not None else {"fleet": prefix},
                    http_port=port,
                    **settings,
                )
                fleet.configs[device_id] = config
                device = Device(config, scheduler=fleet.scheduler, loop=fleet.loop)
                device.start()
                fleet.devices[device_id] = device
                if http:
                    fleet.urls[device_id] = f"http://127.0.0.1:{port}"
        except BaseException:
            fleet.stop()
            raise
        return fleet

    @property
    def device_ids(self) -> list[str]:
        return list(self.devices)

    def connected(self) -> int:
        """Devices whose broker session is up right now."""
        return sum(1 for d in self.devices.values() if d.agent.transport.connected)

    def enrolled(self) -> int:
        """Devices whose hello the hub acknowledged."""
        return sum(1 for d in self.devices.values() if d.agent.uplink.hello_acked)

    def messages(self) -> dict[str, int]:
        """What the devices sent and what became of it, summed over the fleet.

        ``sent``: messages their outboxes took (every seq); ``acknowledged``: settled by
        the hub's acks (``refused`` of them refused); ``pending``: still in an outbox,
        to be resent; ``dropped``: evicted from a full outbox (lost). ``downlink``:
        frames the devices received, by outcome (accepted, duplicate, refused...).
        """
        sent = pending = dropped = refused = 0
        downlink: dict[str, int] = {}
        for device in self.devices.values():
            outbox = device.agent.outbox
            stats = outbox.stats()
            sent += outbox.sent()
            pending += stats.depth
            dropped += stats.dropped
            refused += stats.refused
            for outcome, n in device.agent.downlink.counters().items():
                downlink[outcome] = downlink.get(outcome, 0) + n
        return {
            "sent": sent,
            "acknowledged": sent - pending - dropped,
            "refused": refused,
            "pending": pending,
            "dropped": dropped,
            **{f"downlink.{k}": v for k, v in sorted(downlink.items())},
        }

    def halt(self, device_id: str, *, crash: bool = False) -> None:
        """Stop one agent (it goes offline); ``crash``: without waiting for the hub's acks,
        so what was in flight stays in its outbox for the next agent to resend."""
        device = self.devices.pop(device_id)
        if crash:
            device.agent.config = dataclasses.replace(device.agent.config, stop_grace_s=0.0)
        device.stop()
        self.retired.append(device.agent.outbox.opened_counts())

    def revive(self, device_id: str, *, clock: Clock | None = None) -> Device:
        """Start a new agent for a halted device from its state directory (same identity,
        outbox, slots); ``clock``: a clock of its own (a skewed one)."""
        device = Device(
            self.configs[device_id], clock=clock, scheduler=self.scheduler, loop=self.loop
        )
        device.start()
        self.devices[device_id] = device
        return device

    def stop(self) -> None:
        """Stop every device, a few dozen at a time (each waits up to its stop grace for
        acks), then the scheduler and the loop they shared."""
        with ThreadPoolExecutor(STOP_WORKERS, thread_name_prefix="sim-stop") as pool:
            for failure in pool.map(_stop, list(self.devices.values())):
                if failure is not None:
                    logger.error("a device failed to stop cleanly: %s", failure)
        self.devices.clear()
        self.scheduler.shutdown()
        self.loop.stop()

    def _pace(self, index: int, started: float, pace: Pacing) -> None:
        """Wait until device ``index`` may start (module docstring)."""
        due = started + index / pace.rate
        if (delay := due - time.monotonic()) > 0:
            time.sleep(delay)
        waited_until = time.monotonic() + pace.ack_wait_s
        while len(self.devices) - self.enrolled() >= pace.max_unacked:
            if time.monotonic() > waited_until:
                logger.info(
                    "the hub has not acknowledged %d hellos; starting more", pace.max_unacked
                )
                return
            time.sleep(0.05)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _stop(device: Device) -> BaseException | None:
    try:
        device.stop()
    except Exception as e:  # the others must still stop
        return e
    return None


@dataclasses.dataclass
class ResourceMeter:
    """This process's CPU time and resident memory, from a baseline :meth:`mark`-ed
    before the devices started (the per-device figures divide the growth by ``devices``).
    """

    rss_before: int = 0
    cpu_before: float = 0.0
    wall_before: float = 0.0

    @classmethod
    def now(cls) -> ResourceMeter:
        return cls(_rss_bytes(), _cpu_s(), time.monotonic())

    def per_device(self, devices: int, since: ResourceMeter | None = None) -> dict[str, float]:
        """``rss_mb_per_device`` (growth of resident memory since this mark),
        ``cpu_s_per_device`` and ``cpu_share_per_device`` (a fraction of one core) since
        ``since`` (default this mark), and the seconds that covers."""
        window = since or self
        cpu, wall = _cpu_s() - window.cpu_before, time.monotonic() - window.wall_before
        n = max(1, devices)
        return {
            "rss_mb_per_device": round((_rss_bytes() - self.rss_before) / n / 2**20, 4),
            "cpu_s_per_device": round(cpu / n, 5),
            "cpu_share_per_device": round(cpu / n / max(wall, 1e-9), 6),
            "seconds": round(wall, 1),
        }


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize()


def _free_port() -> int:
    """A loopback port free right now (the local API binds it a moment later)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def main(args: argparse.Namespace) -> int:
    if not 1 <= args.devices <= MAX_DEVICES:
        print(f"edgefleet sim: --devices must be between 1 and {MAX_DEVICES}", file=sys.stderr)
        return 2
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    before = ResourceMeter.now()
    try:
        fleet = SimulatedFleet.start(
            args.state,
            count=args.devices,
            broker_url=args.broker,
            root_metadata=args.root_metadata,
            enrollment_token=args.enrollment_token,
            prefix=args.prefix,
            enroll_broker_url=args.enroll_broker,
            http=args.http,
        )
    except AgentError as e:
        print(f"edgefleet sim: error: {e}", file=sys.stderr)
        return 2
    with fleet:
        for device_id, url in fleet.urls.items():
            print(f"{device_id}: {url}", flush=True)
        print(f"{len(fleet.devices)} devices started", flush=True)
        steady = ResourceMeter.now()
        stop.wait(args.duration)
        report = {
            "devices": len(fleet.devices),
            "connected": fleet.connected(),
            "enrolled": fleet.enrolled(),
            "messages": fleet.messages(),
            "resources": before.per_device(len(fleet.devices), since=steady),
        }
    text = json.dumps(report, indent=2)
    print(text)
    if args.json_out is not None:
        args.json_out.write_text(text + "\n")
    return 0
