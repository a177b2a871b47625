"""The drift acceptance simulations on the hub's own path (a drop-in for ``simfleet.Run``).

:class:`StoreRun` takes the same device buckets as :class:`tests.hub.drift.simfleet.Run`,
but stores them as ingest does (``store.drift.put_device_buckets``, aggregates as columns),
and lets the scoring job's per-scope step (:func:`hub.monitor.jobs.score_scope`) find the
closed bucket, assess it from the stored buckets, plan the alerts from the stored
assessments and alerts, and store them. What a test reads back (assessments, alerts) is
decoded from the store, so the simulations check what the hub would report.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np

from hub.context import HubContext
from hub.drift.alerts import Action, Alert, Open
from hub.drift.assess import Assessment, DeviceBucket
from hub.drift.policy import DriftPolicy
from hub.drift.reference import Reference
from hub.monitor import codec
from hub.monitor.jobs import score_scope
from hub.settings import HubSettings
from hub.store.drift_rows import DriftDeviceBucket, DriftScope
from hub.store.sqlite import SqliteStore
from tests.clock import EPOCH_MS, FakeClock
from tests.hub.drift.helpers import make_reference

GRACE_MS = 120_000


@dataclass
class StoreRun:
    reference: Reference
    edges: list[np.ndarray]
    policy: DriftPolicy = field(default_factory=DriftPolicy)
    reference_accuracy: float | None = None
    assessments: list[Assessment] = field(default_factory=list)
    log: list[tuple[int, Action]] = field(default_factory=list)
    store: SqliteStore = field(default_factory=lambda: SqliteStore.open(":memory:"))
    clock: FakeClock = field(default_factory=FakeClock)

    @classmethod
    def new(cls, rng: np.random.Generator, features: int = 10, **policy: object) -> StoreRun:
        reference, edges = make_reference(rng, features=features)
        return cls(reference, edges, DriftPolicy(**policy))  # type: ignore[arg-type]

    @property
    def scope(self) -> DriftScope:
        return DriftScope(self.reference.digest, "sim", 1, self.reference_accuracy, EPOCH_MS)

    @property
    def alerts(self) -> dict[str, Alert]:
        return {r.id: codec.loads(Alert, r.body) for r in self.store.drift.alerts()}

    def bucket(self, devices: list[DeviceBucket]) -> Assessment:
        index = len(self.assessments)
        width = self.policy.bucket_ms
        start = EPOCH_MS + index * width
        self.store.drift.add_scope(self.scope)
        self.store.drift.put_device_buckets(
            [
                DriftDeviceBucket(
                    device_id=d.device_id,
                    width_ms=width,
                    start_ms=start,
                    model_name="sim",
                    model_version=d.version,
                    aggregate=codec.columns(d.aggregate),
                    updated_at=start + width,
                    tags=dict(d.tags),
                )
                for d in devices
            ]
        )
        self.clock = FakeClock(start + width + GRACE_MS)
        ctx = HubContext(self.store, cast(Any, None), self.clock, HubSettings(data_dir=Path()))
        actions, _ = score_scope(
            ctx, self.scope, self.reference, self.policy, ended_by_ms=start + width
        )
        self.log += [(index, a) for a in actions]
        [stored] = self.store.drift.assessments(self.scope.scope, width, limit=1)
        assert stored.start_ms == start
        assessment = codec.loads(Assessment, stored.body)
        self.assessments.append(assessment)
        return assessment

    def opened(self) -> list[tuple[int, Alert]]:
        return [(i, a.alert) for i, a in self.log if isinstance(a, Open)]
