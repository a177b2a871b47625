"""A few complete agents in one process: for the demo and for ``edgefleet sim``.

Each simulated device is a real :class:`agent.device.Device` (its own Ed25519 key,
outbox, trusted state, model slots and local HTTP API on a loopback port) with its own
state directory under one root. What the hub sees is what it would see from separate
machines. They share the process and one job scheduler (agent/scheduler.py): every
device's jobs, outbox pump and downlink dispatch run on one pool instead of a scheduler
thread and pool per device. Each still has its own paho link; one transport loop for
all of them is the seam's next user (agent/transport.py).

What it does not do (yet): thousands of devices, scripted faults or clock skew per
device, recorded traffic. That is the fleet simulator of a later issue.
"""

from __future__ import annotations

import argparse
import dataclasses
import signal
import socket
import sys
import threading
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from agent.config import AgentConfig
from agent.device import Device
from agent.errors import AgentError
from agent.scheduler import ApsScheduler


@dataclasses.dataclass(eq=False)
class SimulatedFleet:
    """Running devices by id; stop them with :meth:`stop` or a ``with`` block."""

    devices: dict[str, Device]
    urls: dict[str, str]
    scheduler: ApsScheduler = dataclasses.field(default_factory=ApsScheduler)

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
        **settings: Any,
    ) -> SimulatedFleet:
        """Start ``count`` devices ``{prefix}-0`` ... (``settings``: more AgentConfig fields;
        ``tags``: what each device says about itself, ``{"fleet": prefix}`` by default).

        Each logs in to the broker as itself with a password it made (access control is on
        wherever the hub runs the broker, and on Mosquitto configured by ``edgefleet broker
        config``: pass ``enroll_broker_url`` for its enrollment listener).

        Raises:
            ConfigError, StateCorrupt, IdentityError: a device cannot be built.
            AgentError: a local API port cannot be bound.
        """
        fleet = cls({}, {}, ApsScheduler(threads=max(4, min(count, 16))))
        fleet.scheduler.start()
        try:
            for i in range(count):
                device_id = f"{prefix}-{i}"
                port = _free_port()
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
                device = Device(config, scheduler=fleet.scheduler)
                device.start()
                fleet.devices[device_id] = device
                fleet.urls[device_id] = f"http://127.0.0.1:{port}"
        except BaseException:
            fleet.stop()
            raise
        return fleet

    @property
    def device_ids(self) -> list[str]:
        return list(self.devices)

    def stop(self) -> None:
        """Stop every device, in parallel (each waits up to its stop grace for acks), then
        the scheduler they shared."""
        stoppers = [threading.Thread(target=d.stop) for d in self.devices.values()]
        for thread in stoppers:
            thread.start()
        for thread in stoppers:
            thread.join()
        self.devices.clear()
        self.scheduler.shutdown()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _free_port() -> int:
    """A loopback port free right now (the local API binds it a moment later)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def main(args: argparse.Namespace) -> int:
    if not 1 <= args.devices <= 100:
        print("edgefleet sim: --devices must be between 1 and 100", file=sys.stderr)
        return 2
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    try:
        fleet = SimulatedFleet.start(
            args.state,
            count=args.devices,
            broker_url=args.broker,
            root_metadata=args.root_metadata,
            enrollment_token=args.enrollment_token,
            prefix=args.prefix,
            enroll_broker_url=args.enroll_broker,
        )
    except AgentError as e:
        print(f"edgefleet sim: error: {e}", file=sys.stderr)
        return 2
    with fleet:
        for device_id, url in fleet.urls.items():
            print(f"{device_id}: {url}", flush=True)
        stop.wait()
    return 0
