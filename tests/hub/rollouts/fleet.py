"""A seeded, in-memory fleet and store for driving the rollout planner tick by tick.

It stands in for what the next phase puts around the pure core: the store (it keeps the
rollout, progress and shadow records and applies each :class:`Plan` to them), the agents
(a device installs what it is assigned after a few ticks if online, fails the health
check of an unhealthy version and reports ``rolled_back``) and ingest (it sums each
device's inferences, errors, latency and shadow agreement since it last switched version,
into :class:`DeviceMetrics`).

Noise is realistic on purpose: devices differ in base error rate (Beta-distributed around
5 %) and latency, every device's rate wanders tick to tick, and the whole fleet drifts
together (an AR(1) on the log-odds, like a daily cycle): per-request tests that ignore
this false-alarm, the gates must not.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hub.rollouts import (
    DeviceMetrics,
    DeviceView,
    InstallReport,
    Plan,
    Rollout,
    RolloutSpec,
    plan,
)
from hub.rollouts.devices import ShadowProgress
from hub.rollouts.machine import DeviceProgress
from tests.clock import EPOCH_MS

TICK_MS = 60_000
OLD, NEW = 1, 2
CLASSES = 4


@dataclass(frozen=True)
class Behaviour:
    """How the new version behaves on devices."""

    healthy: bool = True
    error_delta: float = 0.0
    latency_factor: float = 1.0
    swapped: tuple[int, int] | None = None


class Fleet:
    """``n`` devices running v1 of model ``m``, a rollout of v2 over them (module docstring)."""

    def __init__(
        self,
        spec: RolloutSpec,
        n: int,
        *,
        seed: int,
        behaviour: Behaviour = Behaviour(),
        offline_share: float = 0.0,
        back_online_tick: int | None = None,
        tags: list[dict[str, str]] | None = None,
        inferences_per_tick: float = 30.0,
        baseline_ticks: int = 30,
    ) -> None:
        self.rng = np.random.default_rng(seed)
        self.n = n
        self.ids = [f"dev-{i:05d}" for i in range(n)]
        self.index = {d: i for i, d in enumerate(self.ids)}
        self.tags = tags or [{} for _ in range(n)]
        self.behaviour = behaviour
        self.rate = inferences_per_tick
        self.base = self.rng.beta(6, 114, size=n)
        self.latency = np.exp(self.rng.normal(np.log(20.0), 0.3, size=n))
        self.active = np.full(n, OLD)
        self.desired = np.full(n, OLD)
        self.eta = np.full(n, -1)
        self.online = self.rng.random(n) >= offline_share
        self.back_online_tick = back_online_tick
        self.inferences = np.zeros(n)
        self.errors = np.zeros(n)
        self.shadow_inputs = np.zeros((n, CLASSES), dtype=np.int64)
        self.shadow_agreed = np.zeros((n, CLASSES), dtype=np.int64)
        self.level = 0.0
        self.tick_no = 0
        self.baselines = self._baselines(baseline_ticks)
        self.rollout = Rollout("r-1", spec, changed_ms=EPOCH_MS)
        self.progress: dict[str, DeviceProgress] = {}
        self.shadows: dict[str, ShadowProgress] = {}
        self.reports: dict[str, InstallReport] = {}
        self.assignments = np.zeros(n, dtype=np.int64)
        self.plans: list[Plan] = []
        self.halted_at: int | None = None
        self.served_at_halt = 0

    @property
    def now_ms(self) -> int:
        return EPOCH_MS + self.tick_no * TICK_MS

    def views(self) -> list[DeviceView]:
        return [
            DeviceView(
                device_id=d,
                tags=self.tags[i],
                online=bool(self.online[i]),
                active_version=int(self.active[i]),
                report=self.reports.get(d),
                progress=self.progress.get(d),
                shadow=self.shadows.get(d),
            )
            for i, d in enumerate(self.ids)
        ]

    def _baselines(self, ticks: int) -> list[DeviceMetrics | None]:
        """Each device's metrics over ``ticks`` before the rollout (None: none kept)."""
        if not ticks:
            return [None] * self.n
        served = self.rng.poisson(self.rate * ticks, self.n)
        errors = self.rng.binomial(served, self.base)
        p95 = self.latency * np.exp(self.rng.normal(0.0, 0.05, self.n))
        return [DeviceMetrics(int(served[i]), int(errors[i]), float(p95[i])) for i in range(self.n)]

    def metrics(self) -> dict[str, DeviceMetrics]:
        factor = np.where(self.active == NEW, self.behaviour.latency_factor, 1.0)
        p95 = self.latency * factor * np.exp(self.rng.normal(0.0, 0.05, self.n))
        return {
            d: DeviceMetrics(
                inferences=int(self.inferences[i]),
                errors=int(self.errors[i]),
                latency_p95_ms=float(p95[i]) if self.inferences[i] else None,
                shadow_inputs=tuple(int(x) for x in self.shadow_inputs[i]),
                shadow_agreed=tuple(int(x) for x in self.shadow_agreed[i]),
                baseline=self.baselines[i],
            )
            for i, d in enumerate(self.ids)
        }

    def plan(self) -> Plan:
        return plan(self.rollout, self.views(), self.metrics(), self.now_ms)

    def apply(self, p: Plan) -> None:
        """What the shell does with a plan: store it, then assign (retained desired state)."""
        self.plans.append(p)
        if self.halted_at is None and any(line.startswith("halt:") for line in p.timeline):
            self.halted_at = self.rollout.stage
            self.served_at_halt = int(np.sum(self.active == NEW))
        if p.rollout.stage_started_ms != self.rollout.stage_started_ms:
            # the gate window opens when a stage starts, the same for every device
            self.inferences[:] = 0
            self.errors[:] = 0
        self.rollout = p.rollout
        for record in p.progress:
            self.progress[record.device_id] = record
        for shadow in p.shadows:
            self.shadows[shadow.device_id] = shadow
        for device_id in p.assign:
            self._desire(device_id, NEW)
        for revert in p.revert:
            self._desire(revert.device_id, OLD if revert.version is None else revert.version)
        for device_id in p.shadow_stop:
            i = self.index[device_id]
            self.shadow_inputs[i] = 0
            self.shadow_agreed[i] = 0

    def _desire(self, device_id: str, version: int) -> None:
        i = self.index[device_id]
        self.desired[i] = version
        self.assignments[i] += 1
        self.eta[i] = self.tick_no + int(self.rng.integers(1, 3))

    def advance(self) -> None:
        """One tick of the devices: installs finish, traffic flows, time moves."""
        self.tick_no += 1
        now = self.now_ms
        if self.back_online_tick is not None and self.tick_no >= self.back_online_tick:
            self.online[:] = True
        for i in np.flatnonzero((self.desired != self.active) & self.online & (self.eta >= 0)):
            if self.tick_no < self.eta[i]:
                continue
            if self.desired[i] == NEW and not self.behaviour.healthy:
                self.reports[self.ids[i]] = InstallReport(NEW, "rolled_back", "unhealthy", now)
                self.eta[i] = -1
                continue
            self.active[i] = self.desired[i]
            self.reports[self.ids[i]] = InstallReport(int(self.active[i]), "installed", "", now)
            self.inferences[i] = self.errors[i] = 0
        self._traffic()

    def _traffic(self) -> None:
        rng, on = self.rng, self.online
        self.level = 0.8 * self.level + rng.normal(0.0, 0.3)
        logit = np.log(self.base / (1 - self.base)) + self.level + rng.normal(0, 0.3, self.n)
        delta = np.where(self.active == NEW, self.behaviour.error_delta, 0.0)
        rate = 1 / (1 + np.exp(-logit)) + delta
        served = np.where(on, rng.poisson(self.rate, self.n), 0)
        self.inferences += served
        self.errors += rng.binomial(served, np.clip(rate, 0.0, 1.0))
        running = np.array([self._shadowing(d) for d in self.ids]) & on
        if running.any():
            inputs = rng.multinomial(int(self.rate), [0.4, 0.3, 0.2, 0.1], size=int(running.sum()))
            agree = np.full(CLASSES, 0.97)
            if self.behaviour.swapped is not None:
                agree[list(self.behaviour.swapped)] = 0.0
            self.shadow_inputs[running] += inputs
            self.shadow_agreed[running] += rng.binomial(inputs, agree)

    def join(self, device_id: str, tags: dict[str, str] | None = None) -> None:
        """A device enrolls mid-rollout, running the old version."""
        self.index[device_id] = self.n
        self.ids.append(device_id)
        self.tags.append(tags or {})
        self.n += 1
        grow = {
            "base": self.rng.beta(6, 114),
            "latency": 20.0,
            "active": OLD,
            "desired": OLD,
            "eta": -1,
            "online": True,
            "inferences": 0.0,
            "errors": 0.0,
            "assignments": 0,
        }
        for name, value in grow.items():
            setattr(self, name, np.append(getattr(self, name), value))
        for name in ("shadow_inputs", "shadow_agreed"):
            setattr(self, name, np.vstack([getattr(self, name), np.zeros(CLASSES, np.int64)]))
        self.baselines.append(None)

    def _shadowing(self, device_id: str) -> bool:
        s = self.shadows.get(device_id)
        return s is not None and s.state == "running"

    def run(self, max_ticks: int = 400) -> Rollout:
        """Plan, apply and advance until the rollout ends (or ``max_ticks``)."""
        for _ in range(max_ticks):
            self.apply(self.plan())
            phase = self.rollout.phase
            if phase in ("rolled_back", "aborted", "paused") or (
                phase == "completed" and self.converged()
            ):
                return self.rollout
            self.advance()
        return self.rollout

    def converged(self) -> bool:
        return bool(np.all(self.active == NEW))
