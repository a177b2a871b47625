"""Scripted faults on a running fleet: each one real, none faking a delivery.

A scenario's ``[[faults]]`` (:class:`simulator.scenario.Fault`) run on one thread, each
``at`` seconds after the traffic starts (docs/simulator.md, *Faults*):

- ``disconnect-storm``: the relay (:mod:`simulator.relay`) aborts ``share`` of the devices'
  TCP connections, ``repeat`` times ``every_s`` apart: no DISCONNECT, the broker publishes
  their last wills, the agents reconnect with backoff and resend what was not acknowledged;
- ``broker-restart``: the embedded broker of an in-process hub stops for ``down_s`` and
  starts again on the same port (a remote broker is not this process's to restart: the
  fault is recorded as skipped);
- ``agent-crash``: ``share`` of the agents stop without waiting for the hub's acks and new
  agents start ``down_s`` later from the same state directories (what was in flight is
  resent from the durable outbox; the hub drops the duplicates);
- ``clock-skew``: as ``agent-crash``, and the new agents' clocks run ``skew_s`` ahead;
- ``garbage-frames``: ``frames`` random byte strings published on each chosen device's
  uplink topic from its own session: the hub must count them rejected and go on;
- ``corrupted-chunk``: the relay damages the next model chunks towards the devices (one per
  device hit); they must refuse them and fetch again.

:meth:`Faults.offline` takes devices offline for the ``rollout`` story's ``[offline]`` the
same way (a graceful stop, then new agents). What happened is in :attr:`Faults.log`.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from agent.device import Device
from protocol.topics import Topics
from simulator.fleet import SimulatedFleet
from simulator.hubs import HubLink
from simulator.relay import Relay
from simulator.scenario import Fault

logger = logging.getLogger(__name__)
NETWORK = frozenset({"disconnect-storm", "corrupted-chunk"})
"""Faults that need the devices to reach the broker through a :class:`Relay`."""


@dataclass(frozen=True)
class SkewedClock:
    """The wall clock, ``offset_ms`` off."""

    offset_ms: int

    def now_ms(self) -> int:
        return time.time_ns() // 1_000_000 + self.offset_ms


@dataclass(eq=False)
class Faults:
    """Runs ``plan`` against ``fleets`` (by cohort); ``devices``: the live agents by id, the
    map the traffic reads, kept current as agents stop and start again."""

    plan: tuple[Fault, ...]
    fleets: dict[str, SimulatedFleet]
    devices: dict[str, Device]
    hub: HubLink
    relay: Relay | None
    seed: int = 5
    log: list[dict[str, Any]] = field(default_factory=list)
    _threads: list[threading.Thread] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _started: float = 0.0

    def start(self) -> None:
        """Start the clock of ``at``: every fault runs on its own schedule from now."""
        self._started = time.monotonic()
        for index, fault in enumerate(self.plan):
            self._spawn(f"fault-{index}", lambda f=fault: self._at(f))

    def offline(self, ids: list[str], down_s: float) -> None:
        """Stop ``ids``' agents now (gracefully: they report offline), and start new ones
        ``down_s`` later."""
        owners = self._halt("offline", ids, crash=False)
        self._spawn("offline", lambda: self._revive("offline", owners, down_s))

    def join(self, timeout_s: float) -> bool:
        """Wait until every fault has run and every stopped agent runs again."""
        deadline = time.monotonic() + timeout_s
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        return not any(t.is_alive() for t in self._threads)

    def stop(self) -> None:
        self._stop.set()
        self.join(60.0)

    def summary(self) -> dict[str, Any]:
        """The report's ``faults``: what ran, and what the relay saw."""
        found: dict[str, Any] = {"events": list(self.log)}
        if self.relay is not None:
            found["relay"] = {"connections": self.relay.accepted, "cut": self.relay.cut_total,
                              "chunks_corrupted": self.relay.corrupted}  # fmt: skip
        return found

    def _spawn(self, name: str, fn: Any) -> None:
        thread = threading.Thread(target=self._guard, args=(name, fn), name=name, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _guard(self, name: str, fn: Any) -> None:
        try:
            fn()
        except Exception as e:  # recorded: the report says the fault did not run
            logger.exception("fault %s failed", name)
            self._record(name, error=str(e))

    def _record(self, kind: str, **what: Any) -> None:
        self.log.append({"at_s": round(time.monotonic() - self._started, 1), "kind": kind} | what)

    def _at(self, fault: Fault) -> None:
        if self._stop.wait(max(0.0, self._started + fault.at - time.monotonic())):
            return
        rng = random.Random(f"{self.seed}-{fault.at}-{fault.kind}")
        chosen = self._choose(fault.share, rng)
        if fault.kind == "disconnect-storm":
            self._storm(fault, rng)
        elif fault.kind == "broker-restart":
            self._restart_broker(fault)
        elif fault.kind in ("agent-crash", "clock-skew"):
            skew = int(fault.skew_s * 1000) if fault.kind == "clock-skew" else 0
            self._cycle(fault.kind, chosen, fault.down_s, crash=True, skew_ms=skew)
        elif fault.kind == "garbage-frames":
            self._garbage(chosen, fault.frames)
        elif fault.kind == "corrupted-chunk":
            assert self.relay is not None
            self.relay.corrupt(len(chosen))
            self._record(fault.kind, chunks=len(chosen))

    def _choose(self, share: float, rng: random.Random) -> list[str]:
        ids = sorted(self.devices)
        return sorted(rng.sample(ids, max(1, round(share * len(ids))))) if ids else []

    def _storm(self, fault: Fault, rng: random.Random) -> None:
        assert self.relay is not None
        for i in range(fault.repeat):
            if i and self._stop.wait(fault.every_s):
                return
            cut = self.relay.cut(fault.share, rng)
            self._record(fault.kind, connections_cut=cut)

    def _restart_broker(self, fault: Fault) -> None:
        broker = self.hub.broker
        if broker is None:
            self._record(fault.kind, skipped="the broker is not this process's to restart")
            return
        broker.stop()
        self._record(fault.kind, phase="stopped")
        self._stop.wait(fault.down_s)
        broker.start()
        self._record(fault.kind, phase="started", port=broker.port)

    def _cycle(
        self, kind: str, ids: list[str], down_s: float, *, crash: bool, skew_ms: int = 0
    ) -> None:
        self._revive(kind, self._halt(kind, ids, crash=crash), down_s, skew_ms)

    def _halt(self, kind: str, ids: list[str], *, crash: bool) -> dict[str, SimulatedFleet]:
        owners = {i: f for f in self.fleets.values() for i in f.configs if i in ids}
        started = time.monotonic()
        for device_id, fleet in owners.items():
            self.devices.pop(device_id, None)
            fleet.halt(device_id, crash=crash)
        took = round(time.monotonic() - started, 2)
        self._record(kind, phase="stopped", devices=sorted(owners), stop_s=took)
        return owners

    def _revive(
        self, kind: str, owners: dict[str, SimulatedFleet], down_s: float, skew_ms: int = 0
    ) -> None:
        time.sleep(down_s)  # not cut short: every agent must come back
        clock = SkewedClock(skew_ms) if skew_ms else None
        for device_id, fleet in owners.items():
            self.devices[device_id] = fleet.revive(device_id, clock=clock)
        self._record(kind, phase="started", devices=sorted(owners),
                     **({"skew_s": skew_ms / 1000} if skew_ms else {}))  # fmt: skip

    def _garbage(self, ids: list[str], frames: int) -> None:
        sent = 0
        for device_id in ids:
            device = self.devices.get(device_id)
            if device is None:
                continue
            topics = Topics(device.agent.config.topic_prefix)
            topic = topics.up(device_id, "telemetry")
            for _ in range(frames):
                sent += bool(device.agent.transport.publish(topic, os.urandom(48)))
        self._record("garbage-frames", devices=ids, frames_published=sent)
