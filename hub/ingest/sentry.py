"""The shell of ingest's security bookkeeping: metrics, log lines and audit rows.

:mod:`hub.ingest.security` decides (which refusals get a row, what a stream of last wills
means); this module counts every refusal that proves an attack in
``edgefleet_hub_security_events_total{action}`` whatever the audit budget says, counts
takeovers, logs a cloned device once per episode, and puts the rows into the batch the
worker is writing, so they commit with it.
"""

from __future__ import annotations

import logging

from hub.health import OFFLINE_FLAG
from hub.ingest.batch import Batch
from hub.ingest.rules import Refused
from hub.ingest.security import CLONED_DEVICE, Ledger, TakeoverWatch, is_alert
from hub.metrics import AUDIT_SUPPRESSED, CLONED_DEVICES, SECURITY_EVENTS, SESSION_TAKEOVERS
from hub.settings import HubSettings
from hub.store import Store
from hub.store.rows import AuditRecord
from protocol import canonical
from protocol.messages import StateReport

logger = logging.getLogger(__name__)


class Sentry:
    """One per ingest worker, used from its thread only."""

    def __init__(self, settings: HubSettings) -> None:
        self.window_s = settings.cloned_window_s
        self.ledger = Ledger(
            garbage_per_sender=settings.audit_rejections_per_device_per_min,
            alerts_per_sender=settings.audit_alerts_per_device_per_min,
        )
        self.takeovers = TakeoverWatch(
            window_ms=round(settings.cloned_window_s * 1000),
            threshold=settings.cloned_takeovers,
        )

    def refused(self, refused: Refused, batch: Batch) -> None:
        """Count ``refused`` and audit it as the ledger says."""
        if is_alert(refused):
            SECURITY_EVENTS.labels(refused.action).inc()
        row = self.ledger.refused(refused, batch.now_ms)
        if row is None:
            AUDIT_SUPPRESSED.inc()
        else:
            batch.audits.append(row)

    def report(self, device_id: str, report: StateReport, batch: Batch) -> None:
        """An admitted state report: a last will counts towards a clone; the batch learns
        whether the device is in a cloned episode (its health says so)."""
        if OFFLINE_FLAG in report.flags:
            seen = self.takeovers.will(device_id, batch.now_ms)
            if seen.takeover:
                SESSION_TAKEOVERS.inc()
            if seen.became_cloned:
                CLONED_DEVICES.inc()
                SECURITY_EVENTS.labels(CLONED_DEVICE).inc()
                logger.warning(
                    "device %s looks cloned: %d of its sessions replaced each other within %.0f s",
                    device_id,
                    seen.wills_in_window,
                    self.window_s,
                )
                batch.audits.append(
                    AuditRecord(
                        at=batch.now_ms,
                        actor="system",
                        action=CLONED_DEVICE,
                        target=device_id,
                        outcome="alert",
                        reason=CLONED_DEVICE,
                        detail=canonical.dumps({"wills": seen.wills_in_window}).decode(),
                    )
                )
        if self.takeovers.cloned(device_id, batch.now_ms):
            batch.cloned.add(device_id)

    def summaries(self, now_ms: int, *, flush: bool = False) -> list[AuditRecord]:
        return self.ledger.summaries(now_ms, flush=flush)

    def write_summaries(self, store: Store, now_ms: int, *, flush: bool = False) -> None:
        """Write the summaries of the intervals that ended (all so far, with ``flush``)
        outside a batch: when ingest is idle or stopping."""
        rows = self.summaries(now_ms, flush=flush)
        if rows:
            try:
                store.audit.append_many(rows)
            except Exception:
                logger.exception("could not write %d rejection summaries", len(rows))
