"""A seeded, numpy-only fleet for the drift acceptance simulations.

Each device has a version, tags and a number of rows per bucket; per bucket it draws its
rows from ``N(shift, 1)`` per feature (the reference is ``N(0, 1)``), counts them the
way the agent does (tests.hub.drift.helpers.window_counts) and becomes a
:class:`~hub.drift.assess.DeviceBucket`. Runs of buckets go through the real
:func:`~hub.drift.assess.assess` and :func:`~hub.drift.alerts.evaluate`, with the alert
actions applied the way the store will apply them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from hub.drift.aggregate import PERFORMANCE_ROWS, Aggregate
from hub.drift.alerts import Action, Alert, Open, Resolve, Update, evaluate
from hub.drift.assess import Assessment, DeviceBucket, assess
from hub.drift.policy import DriftPolicy
from hub.drift.reference import Reference
from tests.clock import EPOCH_MS
from tests.hub.drift.helpers import make_reference, window_counts

Shift = Callable[[int, "SimDevice"], np.ndarray]  # (bucket index, device) -> mean per feature


@dataclass(frozen=True)
class SimDevice:
    device_id: str
    version: int
    tags: dict[str, str]
    rows: tuple[int, int]  # rows per bucket, drawn uniformly in [low, high]


def make_fleet(
    rng: np.random.Generator,
    devices: int,
    *,
    rows: tuple[int, int] = (30, 100),
    regions: dict[str, float] | None = None,
    hardware: dict[str, float] | None = None,
) -> list[SimDevice]:
    """Devices with a region and a hardware tag drawn independently, in exact shares."""
    regions = regions or {"eu": 0.3, "us": 0.5, "asia": 0.2}
    hardware = hardware or {"a": 0.6, "b": 0.4}

    def spread(shares: dict[str, float]) -> list[str]:
        values = [k for k, s in shares.items() for _ in range(round(s * devices))]
        values = (values + [next(iter(shares))] * devices)[:devices]
        return list(rng.permutation(values))

    region, hw = spread(regions), spread(hardware)
    return [
        SimDevice(f"dev-{i:04d}", 1, {"region": region[i], "hw": hw[i]}, rows)
        for i in range(devices)
    ]


def no_shift(features: int) -> Shift:
    return lambda _bucket, _device: np.zeros(features)


def device_buckets(
    rng: np.random.Generator,
    fleet: list[SimDevice],
    reference: Reference,
    edges: list[np.ndarray],
    bucket: int,
    shift: Shift,
) -> list[DeviceBucket]:
    """One bucket of every device, as the store would hand them to assess()."""
    features = len(edges)
    n = np.array([rng.integers(d.rows[0], d.rows[1] + 1) for d in fleet])
    x = rng.normal(size=(len(fleet), int(n.max()), features))
    x += np.stack([shift(bucket, d) for d in fleet])[:, None, :]
    x[np.arange(n.max())[None, :] >= n[:, None]] = np.nan  # padding rows
    counts = window_counts(reference, edges, x)
    counts[:, :features, reference.width + 2] = 0  # padding is not data
    return [
        DeviceBucket.of(d.device_id, d.version, d.tags, _aggregate(reference, c, d, bucket))
        for d, c in zip(fleet, counts, strict=True)
    ]


def _aggregate(
    reference: Reference, counts: np.ndarray, device: SimDevice, bucket: int
) -> Aggregate:
    return Aggregate(
        scope=reference.digest,
        counts=counts,
        moments=np.zeros((reference.features, 3)),
        performance=np.zeros((PERFORMANCE_ROWS, reference.confidence_bins)),
        inferences=int(counts[0, :-1].sum()),
        errors=0,
        windows=1,
        parts=frozenset({(device.device_id, bucket)}),
    )


@dataclass
class Run:
    """Buckets assessed and evaluated one after another, alerts kept like the store."""

    reference: Reference
    edges: list[np.ndarray]
    policy: DriftPolicy = field(default_factory=DriftPolicy)
    reference_accuracy: float | None = None
    assessments: list[Assessment] = field(default_factory=list)
    alerts: dict[str, Alert] = field(default_factory=dict)
    log: list[tuple[int, Action]] = field(default_factory=list)

    @classmethod
    def new(cls, rng: np.random.Generator, features: int = 10, **policy: object) -> Run:
        reference, edges = make_reference(rng, features=features)
        return cls(reference, edges, DriftPolicy(**policy))  # type: ignore[arg-type]

    def bucket(self, devices: list[DeviceBucket]) -> Assessment:
        index = len(self.assessments)
        width = self.policy.bucket_ms
        start = EPOCH_MS + index * width
        assessment = assess(
            devices,
            self.reference,
            self.policy,
            start_ms=start,
            width_ms=width,
            reference_accuracy=self.reference_accuracy,
        )
        self.assessments.append(assessment)
        now = start + width + 120_000
        recent = self.assessments[-self.policy.history :]
        open_alerts = [a for a in self.alerts.values() if a.state != "resolved"]
        for action in evaluate(recent, self.policy, open_alerts, now):
            self.log.append((index, action))
            if isinstance(action, Open | Update | Resolve):
                self.alerts[action.alert.id] = action.alert
        return assessment

    def opened(self) -> list[tuple[int, Alert]]:
        return [(i, a.alert) for i, a in self.log if isinstance(a, Open)]
