"""``GET /metrics`` on the local API: the agent's counters in the Prometheus text format.

Components describe their metrics as plain values (:class:`Family`, :class:`Histogram`)
from a :data:`MetricSource` registered with the daemon (:meth:`Agent.add_metrics`);
:func:`render` turns them into the exposition format with prometheus-client at scrape
time. Nothing is registered in prometheus-client's global registry: many agents may run
in one process (the simulator), each serving its own numbers, and a source is read only
when scraped, so the hot path (a predict) pays nothing for it. prometheus-client itself
is imported on the first scrape (it adds ~45 ms and a few MB to an agent that is never
scraped).

Every name is prefixed ``edgefleet_agent_``; counters get ``_total``. What the daemon and
the model manager export:

============================================  =======  ===================================
name                                          type     labels, meaning
============================================  =======  ===================================
``inference_rows_total``                      counter  rows predicted (agent/stats.py)
``inference_errors_total``                    counter  ``reason``: ``inference_failed``,
                                                       ``invalid_input``; rows
``inference_requests_total``                  counter  predict requests
``inference_latency_seconds``                 histo    per request that ran the model
``outbox_depth`` / ``outbox_bytes``           gauge    frames waiting for the hub's ack
``outbox_in_flight``                          gauge    sent, not yet acknowledged
``outbox_dropped_total`` / ``_refused_total`` counter  dropped over the bound; refused
``connected``                                 gauge    1 while the broker link is up
``downlink_frames_total``                     counter  ``outcome``: accepted, duplicate,
                                                       failed, ``refused.<reason>``
``installs_total``                            counter  ``outcome``: installed, unchanged,
                                                       refused, failed, rolled_back
``download_chunks_total``                     counter  ``verdict`` of each chunk
``shadow_rows_total``                         counter  ``outcome``: agreed, disagreed, failed
``shadow_dropped_total``                      counter  sampled requests the queue dropped
``shadow_running``                            gauge    1 while a shadow model runs
============================================  =======  ===================================
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from agent.outbox import OutboxStats
from agent.stats import LatencyHistogram, StatsSnapshot

logger = logging.getLogger(__name__)

PREFIX = "edgefleet_agent_"
Kind = Literal["counter", "gauge"]


@dataclass
class Family:
    """One metric and its samples, each a label set and a value (counters: ``_total`` is
    added on export, so ``name`` goes without it)."""

    name: str
    help: str
    kind: Kind = "counter"
    samples: list[tuple[dict[str, str], float]] = field(default_factory=list)

    def add(self, value: float, **labels: str) -> Family:
        self.samples.append((labels, float(value)))
        return self


@dataclass(frozen=True)
class Histogram:
    """A cumulative histogram: ``buckets`` of (upper bound, count so far), the last bound
    ``inf``; ``sum`` in the metric's unit."""

    name: str
    help: str
    buckets: tuple[tuple[float, int], ...]
    sum: float


Metric = Family | Histogram
MetricSource = Callable[[], Iterable[Metric]]
"""Called on each scrape, from an HTTP request thread: it must only read."""


def daemon_metrics(
    stats: StatsSnapshot,
    latency: LatencyHistogram,
    box: OutboxStats,
    downlink: Mapping[str, int],
    *,
    connected: bool,
) -> list[Metric]:
    """The daemon's own metrics (the table above, all but installs and chunks)."""
    errors = Family("inference_errors", "Rows that got no prediction, by reason.")
    errors.add(stats.failed_count, reason="inference_failed")
    errors.add(stats.invalid_count, reason="invalid_input")
    frames = Family("downlink_frames", "Downlink frames by outcome.")
    for outcome, count in sorted(downlink.items()):
        frames.add(count, outcome=outcome)
    buckets = zip(latency.bounds_ms, latency.cumulative, strict=True)
    return [
        Family("inference_rows", "Rows predicted since start.").add(stats.inference_count),
        errors,
        Family("inference_requests", "Predict requests since start.").add(stats.requests),
        Histogram(
            "inference_latency_seconds",
            "Latency of predict requests that ran the model.",
            tuple((bound / 1000, count) for bound, count in buckets),
            latency.sum_ms / 1000,
        ),
        Family("outbox_depth", "Frames waiting for the hub's ack.", "gauge").add(box.depth),
        Family("outbox_bytes", "Bytes waiting for the hub's ack.", "gauge").add(box.size_bytes),
        Family("outbox_in_flight", "Frames sent, not yet acked.", "gauge").add(box.in_flight),
        Family("outbox_dropped", "Frames dropped over the outbox bound.").add(box.dropped),
        Family("outbox_refused", "Frames the hub refused for good.").add(box.refused),
        Family("connected", "1 while the broker link is up.", "gauge").add(int(connected)),
        frames,
    ]


def render(sources: Iterable[MetricSource]) -> tuple[bytes, str]:
    """The exposition text of every source's metrics, and its content type.

    A source that raises is skipped (and the others still served): a scrape must not
    fail because one component is half-built.
    """
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(list(sources)))
    return generate_latest(registry), CONTENT_TYPE_LATEST


class _Collector:
    """prometheus-client's collector protocol over our sources (``collect`` only, so the
    registry never calls it on registration)."""

    def __init__(self, sources: list[MetricSource]) -> None:
        self._sources = sources

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )

        for source in self._sources:
            try:
                metrics = list(source())
            except Exception:  # a half-built component: leave its metrics out
                logger.exception("a metrics source failed; its metrics are left out")
                continue
            for metric in metrics:
                name = PREFIX + metric.name
                if isinstance(metric, Histogram):
                    yield HistogramMetricFamily(
                        name,
                        metric.help,
                        buckets=[(_bound(b), c) for b, c in metric.buckets],
                        sum_value=metric.sum,
                    )
                    continue
                labels = sorted(metric.samples[0][0]) if metric.samples else []
                cls = CounterMetricFamily if metric.kind == "counter" else GaugeMetricFamily
                family = cls(name, metric.help, labels=labels)
                for sample_labels, value in metric.samples:
                    family.add_metric([sample_labels[k] for k in labels], value)
                yield family


def _bound(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(bound)


__all__ = ["PREFIX", "Family", "Histogram", "Metric", "MetricSource", "daemon_metrics", "render"]
