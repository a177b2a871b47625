"""The fleet as Prometheus gauges, counted from the store each time ``/metrics`` is scraped.

Nothing is kept in process memory: a hub restarted, a second hub over the same store, or
the CLI changing the store beside a running hub all report the same numbers, and no
count can drift from the rows it describes. Each scrape runs five grouped queries
(a few milliseconds for ten thousand devices); Prometheus scrapes every 15 to 60 s.

Series (prefix ``edgefleet_fleet_``):

- ``devices{status}``: pending (waiting for approval), active, revoked;
- ``devices_online``: active devices heard from within ``offline_after_s``;
- ``devices_by_model{model,version}``: active devices by the model they report running;
- ``devices_by_health{health}``: active devices by :class:`hub.health.Health`;
- ``updates_pending``: active devices whose reported model is not yet the desired one;
- ``installs{outcome,reason}``: active devices by the outcome of the last install they
  reported (``installed``, ``refused``, ``failed``, ``rolled_back``...) and its reason's
  code (the text before the first colon, at most :data:`MAX_REASONS` distinct codes, the
  rest counted as ``other``, so a free-text reason cannot explode the label set);
- ``deltas_received_total``, ``windows_received_total``: model deltas and data windows
  the hub has stored.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from hub.store import Store
from hub.store.rows import DataWindowRecord, DeltaRecord, DeviceStatus

PREFIX = "edgefleet_fleet_"
MAX_REASONS = 20
MAX_REASON_CHARS = 60
STATUSES: tuple[DeviceStatus, ...] = ("pending", "active", "revoked")


class FleetCollector(Collector):
    """Collects the fleet's series (module docstring) from ``store`` at every scrape."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def describe(self) -> Iterable[Metric]:
        """The families without samples: registering must not query the store."""
        return list(_families().values())

    def collect(self) -> Iterable[Metric]:
        families = _families()
        by_status: Counter[str] = Counter()
        online = 0
        by_model: Counter[tuple[str, str]] = Counter()
        by_health: Counter[str] = Counter()
        for row in self.store.devices.census():
            by_status[row.status] += row.count
            if row.status != "active":
                continue
            online += row.count if row.online else 0
            by_health[row.health.value] += row.count
            if row.model_name is not None:
                by_model[(row.model_name, str(row.model_version))] += row.count
        for status in STATUSES:
            families["devices"].add_metric([status], by_status[status])
        families["devices_online"].add_metric([], online)
        for (model, version), n in sorted(by_model.items()):
            families["devices_by_model"].add_metric([model, version], n)
        for health, n in sorted(by_health.items()):
            families["devices_by_health"].add_metric([health], n)
        families["updates_pending"].add_metric([], self.store.desired.unconverged())
        installs: Counter[tuple[str, str]] = Counter()
        for outcome in self.store.devices.install_outcomes():
            installs[(outcome.status[:MAX_REASON_CHARS], reason_code(outcome.reason))] += (
                outcome.count
            )
        for (outcome_status, reason), n in _capped(installs).items():
            families["installs"].add_metric([outcome_status, reason], n)
        families["deltas_received"].add_metric([], self.store.uplink.count(DeltaRecord))
        families["windows_received"].add_metric([], self.store.uplink.count(DataWindowRecord))
        return list(families.values())


def reason_code(reason: str) -> str:
    """A refusal reason's code: ``"incompatible: its inputs differ"`` -> ``incompatible``."""
    return reason.split(":", 1)[0].strip()[:MAX_REASON_CHARS]


def _capped(counts: Counter[tuple[str, str]]) -> dict[tuple[str, str], int]:
    """The :data:`MAX_REASONS` most common (outcome, reason) pairs; the rest as ``other``."""
    kept: dict[tuple[str, str], int] = {}
    for (outcome, reason), n in counts.most_common():
        key = (outcome, reason) if len(kept) < MAX_REASONS else (outcome, "other")
        kept[key] = kept.get(key, 0) + n
    return dict(sorted(kept.items()))


def _families() -> dict[str, GaugeMetricFamily | CounterMetricFamily]:
    def gauge(name: str, text: str, labels: list[str] | None = None) -> GaugeMetricFamily:
        return GaugeMetricFamily(PREFIX + name, text, labels=labels or [])

    return {
        "devices": gauge("devices", "Devices by status (pending: awaiting approval).", ["status"]),
        "devices_online": gauge("devices_online", "Active devices heard from recently."),
        "devices_by_model": gauge(
            "devices_by_model", "Active devices by the model they report.", ["model", "version"]
        ),
        "devices_by_health": gauge("devices_by_health", "Active devices by health.", ["health"]),
        "updates_pending": gauge(
            "updates_pending", "Active devices not yet running their desired model."
        ),
        "installs": gauge(
            "installs",
            "Active devices by the outcome of their last reported install and its reason.",
            ["outcome", "reason"],
        ),
        "deltas_received": CounterMetricFamily(
            PREFIX + "deltas_received", "Model deltas stored by the hub."
        ),
        "windows_received": CounterMetricFamily(
            PREFIX + "windows_received", "Data windows (sketches) stored by the hub."
        ),
    }
