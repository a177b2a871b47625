"""Rollouts as Prometheus gauges, counted from the store at each ``/metrics`` scrape (as
:mod:`hub.api.fleet_metrics` does for the fleet, and for the same reason: a restarted hub,
or the CLI beside it, reports the same numbers).

- ``edgefleet_rollouts{phase}``: rollouts per phase (every phase, zeros included);
- ``edgefleet_rollout_devices{rollout,state}``: devices per progress state, for rollouts
  that still act (live, or completed and not superseded);
- ``edgefleet_rollout_gate{rollout,metric,outcome}``: 1 for each gate's latest outcome at
  the rollout's current stage.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from hub.rollouts.devices import COUNTED
from hub.store import Store

PHASES = (
    "pending", "shadow", "baking", "awaiting_approval", "paused", "rolling_back", "rolled_back",
    "completed", "aborted",
)  # fmt: skip


def _families() -> tuple[GaugeMetricFamily, GaugeMetricFamily, GaugeMetricFamily]:
    return (
        GaugeMetricFamily("edgefleet_rollouts", "Rollouts by phase.", labels=["phase"]),
        GaugeMetricFamily(
            "edgefleet_rollout_devices",
            "Devices of each acting rollout by progress state.",
            labels=["rollout", "state"],
        ),
        GaugeMetricFamily(
            "edgefleet_rollout_gate",
            "1 for each gate's latest outcome at the rollout's current stage.",
            labels=["rollout", "metric", "outcome"],
        ),
    )


class RolloutCollector(Collector):
    def __init__(self, store: Store) -> None:
        self.store = store

    def describe(self) -> Iterable[Metric]:
        return list(_families())

    def collect(self) -> Iterable[Metric]:
        phases, devices, gates = _families()
        rollouts = self.store.rollouts
        by_phase: Counter[str] = Counter(r.rollout.phase for r in rollouts.listing())
        for phase in PHASES:
            phases.add_metric([phase], by_phase[phase])
        for record in rollouts.ticking():
            rollout = record.rollout
            states = Counter(p.state for p in rollouts.progress(rollout.rollout_id))
            for state in COUNTED:
                devices.add_metric([rollout.rollout_id, state], states[state])
            for stored in rollouts.verdicts(rollout.rollout_id):
                if stored.stage == rollout.stage:
                    verdict = stored.verdict
                    gates.add_metric([rollout.rollout_id, verdict.metric, verdict.outcome], 1)
        return [phases, devices, gates]
