"""Drift as Prometheus gauges, read from the store at each scrape (like the fleet's).

Series (prefix ``edgefleet_drift_``), from the newest scored bucket of each scope's fleet:

- ``psi{model,version,feature}``: the fleet's PSI per feature (and ``@prediction``);
- ``devices_drifting_ratio{model,version,feature}``: devices whose own test is
  significant, over the devices with enough data;
- ``estimated_accuracy{model,version}``: the label-free (CBPE) estimate, when known;
- ``alerts_open{kind,severity}``: alerts open or acknowledged.

``version`` is the version whose profile defines the scope (versions sharing a reference
share it). Ingest counts the windows it left out in ``edgefleet_drift_skipped_total``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from hub.monitor.views import fleet_gauges
from hub.store import Store

PREFIX = "edgefleet_drift_"


def _families() -> dict[str, GaugeMetricFamily]:
    return {
        "psi": GaugeMetricFamily(
            PREFIX + "psi",
            "Fleet PSI per feature in the newest scored bucket.",
            labels=["model", "version", "feature"],
        ),
        "ratio": GaugeMetricFamily(
            PREFIX + "devices_drifting_ratio",
            "Share of devices with enough data whose own test is significant, newest bucket.",
            labels=["model", "version", "feature"],
        ),
        "accuracy": GaugeMetricFamily(
            PREFIX + "estimated_accuracy",
            "Label-free estimated accuracy of the fleet in the newest scored bucket.",
            labels=["model", "version"],
        ),
        "alerts": GaugeMetricFamily(
            PREFIX + "alerts_open",
            "Drift and performance alerts open or acknowledged.",
            labels=["kind", "severity"],
        ),
    }


class DriftCollector(Collector):
    """Collects the drift series (module docstring) from ``store`` at every scrape."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def describe(self) -> Iterable[Metric]:
        return list(_families().values())

    def collect(self) -> Iterable[Metric]:
        families = _families()
        for model, version, _reference, view in fleet_gauges(self.store):
            labels = [model, str(version)]
            for score, drifting, scored in zip(
                view.scores, view.drifting_devices, view.scored_devices, strict=True
            ):
                if score.psi is not None:
                    families["psi"].add_metric([*labels, score.name], score.psi)
                if scored:
                    families["ratio"].add_metric([*labels, score.name], drifting / scored)
            if view.performance.estimated_accuracy is not None:
                families["accuracy"].add_metric(labels, view.performance.estimated_accuracy)
        live: Counter[tuple[str, str]] = Counter()
        for state in ("open", "acknowledged"):
            for row in self.store.drift.alerts(state=state):
                live[(row.kind, row.severity)] += 1
        for (kind, severity), n in sorted(live.items()):
            families["alerts"].add_metric([kind, severity], n)
        return list(families.values())
