"""Screening at ingest: every new ``up/delta`` gets a verdict in the batch's transaction.

The ingest worker (:mod:`hub.ingest.worker`) hands each admitted, new :class:`DeltaUpload`
to :meth:`DeltaScreening.screen`, which reads what :func:`hub.rounds.screening.screen` needs
from the store (the base version, the round or buffer, the devices already in it, whether
the tensor bytes were seen before), adding what earlier frames of the same batch did, and
puts the verdict, an audit row for a refusal, and a strike for a reason no honest agent
causes into the batch. The frame itself is committed and acknowledged either way: it was
authentic; its content is what screening judged, and a refused delta is never
aggregated. One delta per device and slot counts (the first; later ones are stored as
``flagged``); the same tensor bytes under a new seq are refused as ``replayed``, so a
replay counts once.
"""

from __future__ import annotations

from typing import Protocol

from hub.federated.models import base_version, latest_released, policy_of
from hub.rounds.screening import OpenSlot, ScreenContext, digest, screen
from hub.store import NotFound, Store
from hub.store.round_rows import DeltaVerdict
from hub.store.rows import AuditRecord
from protocol import canonical
from protocol.messages import DeltaUpload


class Batch(Protocol):
    """What screening adds to an ingest batch (:class:`hub.ingest.batch.Batch`)."""

    now_ms: int
    verdicts: list[DeltaVerdict]
    strikes: dict[str, int]
    audits: list[AuditRecord]


def buffer_slot(model: str) -> str:
    return f"buffer:{model}"


def buffer_version(store: Store, model: str) -> int:
    """The version a buffered model's deltas apply to now: the buffer's, or a newer
    release made by another route (an upload), which the buffer moves onto.

    Raises:
        NotFound: the model has neither a buffer nor a released version.
    """
    state = store.rounds.buffer(model)
    try:
        latest = latest_released(store, model).version
    except NotFound:
        if state is None:
            raise
        return state.current_version
    return latest if state is None else max(state.current_version, latest)


class DeltaScreening:
    """Screens deltas for the ingest worker, against ``store``."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def screen(self, device_id: str, seq: int, upload: DeltaUpload, batch: Batch) -> DeltaVerdict:
        store, model = self.store, upload.base.name
        policy = policy_of(store, model)
        base = base_version(store, model, upload.base.version, policy.max_norm)
        earlier = [v for v in batch.verdicts if v.model == model]
        slot_id: str | None
        if policy.mode == "buffered":
            slot_id = buffer_slot(model)
            try:
                current = buffer_version(store, model)
            except NotFound:
                current = upload.base.version
            slot: OpenSlot | None = OpenSlot(
                None, model, current, True, self._devices(slot_id, earlier)
            )
        else:
            slot_id = upload.round_id
            record = store.rounds.round(slot_id) if slot_id is not None else None
            current = upload.base.version
            slot = (
                None
                if record is None
                else OpenSlot(
                    record.round_id,
                    record.model,
                    record.base_version,
                    record.state == "open",
                    self._devices(record.round_id, earlier),
                )
            )
        tensor_digest = digest(upload.tensors)
        seen = store.rounds.digest_seen(model, tensor_digest) or any(
            v.digest == tensor_digest for v in earlier
        )
        verdict = screen(
            upload,
            device_id,
            ScreenContext(
                mode=policy.mode,
                base=base,
                slot=slot,
                current_version=current,
                max_staleness=policy.buffer.max_staleness,
                seen_digests=frozenset({tensor_digest}) if seen else frozenset(),
                min_rows=policy.exact_min_rows,
            ),
        )
        row = DeltaVerdict(
            device_id=device_id,
            seq=seq,
            model=model,
            base_version=upload.base.version,
            slot=slot_id,
            status=verdict.status,
            reason=verdict.reason,
            detail=verdict.detail,
            digest=verdict.digest,
            norm=verdict.norm,
            staleness=verdict.staleness,
            num_samples=upload.num_samples,
            received_at=batch.now_ms,
        )
        batch.verdicts.append(row)
        if verdict.strike:
            batch.strikes[device_id] = batch.strikes.get(device_id, 0) + 1
        if verdict.status == "refused":
            batch.audits.append(
                AuditRecord(
                    at=batch.now_ms,
                    actor=f"device:{device_id}",
                    action="delta.refused",
                    target=slot_id or model,
                    outcome="rejected",
                    reason=verdict.reason or "",
                    detail=canonical.dumps({"seq": seq, "detail": verdict.detail}).decode(),
                )
            )
        return row

    def _devices(self, slot_id: str, earlier: list[DeltaVerdict]) -> frozenset[str]:
        in_batch = {v.device_id for v in earlier if v.slot == slot_id and v.status != "refused"}
        return self.store.rounds.slot_devices(slot_id) | in_batch


__all__ = ["DeltaScreening", "buffer_slot", "buffer_version"]
