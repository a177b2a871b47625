"""One ingest batch: what it writes, per device and per table, and the audit rate limit.

A :class:`Batch` collects everything the frames of one batch change (uplink rows, state
twins, re-hello updates, device windows and last_seen, rejection audit rows) so
:meth:`Batch.write` can write it with a few statement batches inside the worker's single
transaction. :class:`SeenDevice` is one device's part, including what its HubAck will say.
:class:`AuditLimiter` bounds how many rejections per sender reach the audit log.

Pure bookkeeping plus one write method; the worker (:mod:`hub.ingest.worker`) owns the
transaction, the caches and the acknowledgements.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hub.ingest.rules import Admitted, Device, online_after
from hub.store.database import Row, Store
from protocol.messages import FetchRequest


class AuditLimiter:
    """At most ``per_minute`` audited rejections per sender per clock minute.

    Senders are keyed by the device id in the topic. Ids the hub does not know are
    attacker-chosen, so at most ``max_unknown`` of them are tracked per minute; the rest
    share one bucket, ``"*"``. Memory stays bounded by the fleet plus ``max_unknown``.
    """

    def __init__(self, per_minute: int, max_unknown: int = 256) -> None:
        self.per_minute = per_minute
        self.max_unknown = max_unknown
        self._minute = -1
        self._counts: dict[str, int] = {}
        self._unknown = 0

    def allow(self, key: str, *, known: bool, now_ms: int) -> bool:
        """Count one rejection from ``key``; True if it may still be audited."""
        minute = now_ms // 60_000
        if minute != self._minute:
            self._minute, self._counts, self._unknown = minute, {}, 0
        if not known and key not in self._counts:
            if self._unknown >= self.max_unknown:
                key = "*"
            else:
                self._unknown += 1
        used = self._counts.get(key, 0)
        if used >= self.per_minute:
            return False
        self._counts[key] = used + 1
        return True


@dataclass
class SeenDevice:
    """What one batch did for one device."""

    device: Device
    committed: list[int] = field(default_factory=list)
    duplicates: list[int] = field(default_factory=list)
    refused: list[tuple[int, str]] = field(default_factory=list)
    last_seen: int | None = None
    online: bool = True

    def accept(self, frame: Admitted, now_ms: int) -> None:
        """Admit a new frame: into the window, the ack, last_seen and online."""
        device = self.device
        window = device.window.accept(frame.seq)
        self.device = Device(device.id, device.status, device.key_hex, device.key, window)
        self.committed.append(frame.seq)
        self.last_seen = now_ms
        self.online = online_after(frame)


@dataclass
class Batch:
    """Everything one batch writes, collected before one bulk write."""

    now_ms: int
    seen: dict[str, SeenDevice] = field(default_factory=dict)
    rows: dict[str, list[Row]] = field(default_factory=dict)
    twins: list[tuple[str, int, Row]] = field(default_factory=list)
    hellos: dict[str, Row] = field(default_factory=dict)
    audits: list[Row] = field(default_factory=list)
    fetches: list[tuple[str, FetchRequest]] = field(default_factory=list)
    admitted: list[Admitted] = field(default_factory=list)
    enrolled: set[str] = field(default_factory=set)

    def write(self, store: Store) -> None:
        """Write it all (the caller holds the transaction): uplink rows first, so a state
        report's twin update sees its own row."""
        for table, rows in self.rows.items():
            store.insert_new(table, rows)
        for device_id, seq, changes in self.twins:
            store.report_twin(device_id, seq, changes)
        for device_id, changes in self.hellos.items():
            store.update("devices", device_id, changes)
        store.note_uplink(
            [
                (s.device.id, s.device.window.to_bytes(), s.last_seen, int(s.online))
                for s in self.seen.values()
                if s.last_seen is not None
            ]
        )
        store.insert_new("audit", self.audits)
