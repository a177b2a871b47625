"""Data windows into device buckets, inside the ingest batch's transaction.

:meth:`DriftMerger.merge` runs after :meth:`hub.ingest.batch.Batch.write` and before the
commit, so a window, its stored row and its drift bucket commit together or not at all
(a crash rolls all three back; the agent resends). Replays count once twice over: the
ingest replay window drops a duplicate frame, and a bucket's aggregate already holding
the part ``(device_id, seq)`` is left unchanged by :func:`hub.drift.merge`.

A window drift cannot use (no model named, a version without a usable profile, features
that do not fit the reference) is still stored as a data window; it is left out of drift
and counted in ``edgefleet_drift_skipped_total{reason}``. Refusing the frame instead
would make the agent drop the window from its outbox, and the hub would lose the data.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from hub.drift.aggregate import Aggregate, empty, from_window, merge
from hub.drift.buckets import DeviceBucketKey, route
from hub.drift.policy import DriftPolicy
from hub.errors import HubError
from hub.ingest.rules import Admitted
from hub.metrics import DRIFT_SKIPPED
from hub.monitor import codec
from hub.monitor.references import Baseline, References, policy
from hub.store import Store
from hub.store.drift_rows import DriftDeviceBucket, DriftScope
from protocol.messages import DataDelta, ModelRef

logger = logging.getLogger(__name__)


@dataclass
class _Bucket:
    aggregate: Aggregate
    model: ModelRef
    changed: bool = False


class DriftMerger:
    """Merges a batch's data windows into device buckets (module docstring)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.references = References(store)
        self._scopes: set[str] = set()

    def merge(self, frames: Sequence[Admitted], now_ms: int) -> int:
        """Merge the new data windows among ``frames``; how many changed a bucket.

        The caller holds the transaction; the store is written once per batch.
        """
        buckets: dict[DeviceBucketKey, _Bucket] = {}
        policies: dict[str, DriftPolicy] = {}
        merged = 0
        for frame in frames:
            delta = frame.message
            if not isinstance(delta, DataDelta) or frame.duplicate:
                continue
            try:
                merged += self._one(frame.device_id, frame.seq, delta, buckets, policies, now_ms)
            except HubError as e:
                DRIFT_SKIPPED.labels(e.reason).inc()
            except Exception:  # a bug: the window is stored, drift skips it
                logger.exception("drift could not merge a window of %s", frame.device_id)
                DRIFT_SKIPPED.labels("internal").inc()
        self._write(buckets, now_ms)
        return merged

    def _one(
        self,
        device_id: str,
        seq: int,
        delta: DataDelta,
        buckets: dict[DeviceBucketKey, _Bucket],
        policies: dict[str, DriftPolicy],
        now_ms: int,
    ) -> int:
        model = delta.model
        if model is None:
            DRIFT_SKIPPED.labels("no_model").inc()
            return 0
        if delta.inference_count == 0:
            return 0  # nothing observed: an empty window adds nothing but a part
        baseline = self.references.of(model.name, model.version)
        if model.name not in policies:
            policies[model.name] = policy(self.store, model.name)
        self._note_scope(model, baseline, now_ms)
        reference = baseline.reference
        key = route(
            delta.window_start,
            scope=reference.digest,
            device_id=device_id,
            width_ms=policies[model.name].bucket_ms,
        )
        confidence = delta.confidence.rows() if delta.confidence is not None else None
        window = from_window(delta, reference, device_id=device_id, seq=seq, confidence=confidence)
        bucket = buckets.get(key)
        if bucket is None:
            stored = self.store.drift.device_bucket(*_key(key))
            current = (
                empty(reference) if stored is None else codec.aggregate(stored.aggregate, reference)
            )
            bucket = buckets[key] = _Bucket(current, model)
        result = merge(bucket.aggregate, window)
        if result is bucket.aggregate:
            return 0  # a replay: its part is already inside
        bucket.aggregate, bucket.model, bucket.changed = result, model, True
        return 1

    def _note_scope(self, model: ModelRef, baseline: Baseline, now_ms: int) -> None:
        digest = baseline.reference.digest
        if digest not in self._scopes:
            self.store.drift.add_scope(
                DriftScope(digest, model.name, model.version, baseline.accuracy, now_ms)
            )
            self._scopes.add(digest)

    def _write(self, buckets: dict[DeviceBucketKey, _Bucket], now_ms: int) -> None:
        changed = [(k, b) for k, b in buckets.items() if b.changed]
        if not changed:
            return
        tags = {}
        for key, _ in changed:
            if key.device_id not in tags:
                device = self.store.devices.find(key.device_id)
                tags[key.device_id] = dict(device.tags) if device is not None else {}
        self.store.drift.put_device_buckets(
            [
                DriftDeviceBucket(
                    device_id=key.device_id,
                    width_ms=key.width_ms,
                    start_ms=key.start_ms,
                    model_name=bucket.model.name,
                    model_version=bucket.model.version,
                    aggregate=codec.columns(bucket.aggregate),
                    updated_at=now_ms,
                    tags=tags[key.device_id],
                )
                for key, bucket in changed
            ]
        )


def _key(key: DeviceBucketKey) -> tuple[str, str, int, int]:
    return key.scope, key.device_id, key.width_ms, key.start_ms
