"""Ingest's security bookkeeping, pure: attacks are always recorded, garbage is summarised,
and a device whose sessions keep replacing each other is flagged cloned.

**Why two budgets.** The audit log had one budget per sender: 100 unsigned frames on a
device's topic used it up, and the ``key_change_refused`` row of a real attack that came
next was never written. Now a refusal is one of two things:

- an **alert**: the frame proves something about an attacker, because a signature
  verified (:data:`ALERT_ACTIONS`: another key for an active device, a revoked device's
  key still in use, another device's signature, a hub-signed frame sent back up, a seq
  reused with other content, a pending device's id claimed with another key). Each gets
  its own audit row (outcome ``alert``), within a budget per sender *and action* that
  garbage cannot touch; past it (a flood of valid-signature attacks, possible only to
  someone holding a key) the rest are counted in one summary row per sender and action
  per interval. Alert rows are pruned on their own, never by garbage.
- **garbage**: anything anyone can send (bad signatures, malformed frames, unknown
  devices, replays). The first few per sender and interval get a row (outcome
  ``rejected``) for diagnosis; the rest are summarised, one row per reason per interval
  with the count, how many senders, and the top five. Bounded: at most a fleet's worth of
  senders plus ``max_senders`` strangers are tracked per interval.

Every refusal is still counted in ``/metrics`` by the worker (``rejected_total{reason}``,
``security_events_total{action}``), whatever the audit budget says.

**Cloned devices.** The broker publishes a device's last will when its connection ends
without a DISCONNECT, and also when another connection with the same client id takes the
session over. Two devices with one identity (a cloned disk image, stolen credentials)
take each other's session in turn, so their wills come in a stream; a healthy device
sends one will per crash or outage. :class:`TakeoverWatch` counts a device's wills in a
sliding window: every will after the first in the window is a takeover, and
``threshold`` of them flag the device ``cloned_device`` until a window passes without one.
A device restarting in a loop looks the same and deserves the same attention.

No I/O and no clock: times are arguments. The worker (:mod:`hub.ingest.worker`) writes
what these return.
"""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Final

from hub.ingest.rules import Refused
from hub.store.rows import AuditRecord
from protocol import canonical

GARBAGE: Final = "frame_rejected"
ALERT_ACTIONS: Final = frozenset(
    {
        "key_change_refused",
        "revoked_key_in_use",
        "identity_mismatch",
        "wrong_role",
        "seq_reused",
        "key_conflict",
    }
)
"""Refusal actions that prove an attacker (a signature verified); see the module docstring."""
CLONED_DEVICE: Final = "cloned_device"
STRANGERS: Final = "*"
TOP_SENDERS = 5


def is_alert(refused: Refused) -> bool:
    return refused.action in ALERT_ACTIONS


@dataclass
class _Interval:
    start_ms: int
    rows: Counter[tuple[str, str]] = field(default_factory=Counter)  # (sender, action) -> rows
    strangers: set[str] = field(default_factory=set)
    garbage: dict[str, Counter[str]] = field(default_factory=dict)  # reason -> sender -> n
    alerts_over: Counter[tuple[str, str, str]] = field(default_factory=Counter)


class Ledger:
    """Decides which refusals get their own audit row, and summarises the rest.

    Args:
        garbage_per_sender: garbage rows per sender per interval (then summarised).
        alerts_per_sender: alert rows per sender and action per interval (then summarised).
        interval_ms: the summary interval (a clock minute by default).
        max_senders: strangers (senders the hub does not know) tracked per interval; the
            rest share one bucket, ``"*"``.
    """

    def __init__(
        self,
        *,
        garbage_per_sender: int,
        alerts_per_sender: int,
        interval_ms: int = 60_000,
        max_senders: int = 256,
    ) -> None:
        self.garbage_per_sender = garbage_per_sender
        self.alerts_per_sender = alerts_per_sender
        self.interval_ms = interval_ms
        self.max_senders = max_senders
        self._now: _Interval | None = None
        self._closed: list[_Interval] = []

    def refused(self, refused: Refused, now_ms: int) -> AuditRecord | None:
        """Count ``refused``; the audit row it gets now, or None (summarised later)."""
        interval = self._interval(now_ms)
        sender = self._sender(interval, refused)
        alert = is_alert(refused)
        budget = self.alerts_per_sender if alert else self.garbage_per_sender
        key = (sender, refused.action if alert else GARBAGE)
        if not alert:
            interval.garbage.setdefault(refused.reason, Counter())[sender] += 1
        if interval.rows[key] >= budget:
            if alert:
                interval.alerts_over[(sender, refused.action, refused.reason)] += 1
            return None
        interval.rows[key] += 1
        return AuditRecord(
            at=now_ms,
            actor=f"device:{refused.key}",
            action=refused.action,
            target=f"up.{refused.kind}",
            outcome="alert" if alert else "rejected",
            reason=refused.reason,
            detail=_json(refused.detail()),
        )

    def summaries(self, now_ms: int, *, flush: bool = False) -> list[AuditRecord]:
        """Summary rows of every interval that has ended by ``now_ms`` (all of them, the
        current one too, with ``flush``), each once."""
        self._interval(now_ms)
        if flush and self._now is not None:
            self._closed.append(self._now)
            self._now = None
        closed, self._closed = self._closed, []
        return [row for interval in closed for row in self._rows(interval)]

    def _interval(self, now_ms: int) -> _Interval:
        start = now_ms - now_ms % self.interval_ms
        if self._now is not None and self._now.start_ms != start:
            self._closed.append(self._now)
            self._now = None
        if self._now is None:
            self._now = _Interval(start)
        return self._now

    def _sender(self, interval: _Interval, refused: Refused) -> str:
        sender = refused.key
        if refused.known or sender in interval.strangers:
            return sender
        if len(interval.strangers) >= self.max_senders:
            return STRANGERS
        interval.strangers.add(sender)
        return sender

    def _rows(self, interval: _Interval) -> list[AuditRecord]:
        end = interval.start_ms + self.interval_ms
        rows = []
        for reason, senders in sorted(interval.garbage.items()):
            count = sum(senders.values())
            audited = sum(min(n, self.garbage_per_sender) for n in senders.values())
            rows.append(
                AuditRecord(
                    at=end,
                    actor="system",
                    action="frames_rejected",
                    target="up",
                    outcome="rejected",
                    reason=reason,
                    detail=_json(
                        {
                            "count": count,
                            "audited": audited,
                            "from_ms": interval.start_ms,
                            "to_ms": end,
                            "senders": len(senders),
                            "top": [[s, n] for s, n in senders.most_common(TOP_SENDERS)],
                        }
                    ),
                )
            )
        for (sender, action, reason), count in sorted(interval.alerts_over.items()):
            rows.append(
                AuditRecord(
                    at=end,
                    actor=f"device:{sender}",
                    action=action,
                    target="up",
                    outcome="alert",
                    reason=reason,
                    detail=_json({"summarised": count, "from_ms": interval.start_ms, "to_ms": end}),
                )
            )
        return rows


@dataclass(frozen=True)
class WillSeen:
    """What one last will means: a takeover (another will came within the window), and
    whether it made the device cloned just now (an episode starts)."""

    takeover: bool
    became_cloned: bool
    wills_in_window: int


class TakeoverWatch:
    """Counts each device's last wills in a sliding window (module docstring).

    Args:
        window_ms: how far back wills count.
        threshold: takeovers within the window that flag a device cloned.
        max_devices: devices tracked at once; the quietest are forgotten beyond it.
    """

    def __init__(self, *, window_ms: int, threshold: int, max_devices: int = 10_000) -> None:
        self.window_ms = window_ms
        self.threshold = threshold
        self.max_devices = max_devices
        self._wills: dict[str, deque[int]] = {}
        self._cloned: set[str] = set()

    def will(self, device_id: str, now_ms: int) -> WillSeen:
        """Count a will of ``device_id`` (a state report flagged ``offline``)."""
        wills = self._prune(device_id, now_ms)
        if wills is None:
            if len(self._wills) >= self.max_devices:
                self._forget(now_ms)
            wills = self._wills[device_id] = deque()
        takeover = bool(wills)
        wills.append(now_ms)
        takeovers = len(wills) - 1
        became = takeovers >= self.threshold and device_id not in self._cloned
        if became:
            self._cloned.add(device_id)
        return WillSeen(takeover, became, len(wills))

    def cloned(self, device_id: str, now_ms: int) -> bool:
        """Whether ``device_id`` is in a cloned episode (ends a window after its last
        takeover)."""
        self._prune(device_id, now_ms)
        return device_id in self._cloned

    def _prune(self, device_id: str, now_ms: int) -> deque[int] | None:
        wills = self._wills.get(device_id)
        if wills is None:
            return None
        while wills and wills[0] <= now_ms - self.window_ms:
            wills.popleft()
        if len(wills) <= 1:
            self._cloned.discard(device_id)
        if not wills:
            del self._wills[device_id]
            return None
        return wills

    def _forget(self, now_ms: int) -> None:
        for device_id in list(self._wills):
            self._prune(device_id, now_ms)
        while len(self._wills) >= self.max_devices:
            quietest = min(self._wills, key=lambda d: self._wills[d][-1])
            del self._wills[quietest]
            self._cloned.discard(quietest)


class MinuteBudget:
    """At most ``per_minute`` events per sender per clock minute (answers to pending hellos).

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
        """Count one event from ``key``; True if it is still within the budget."""
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


def _json(value: object) -> str:
    return canonical.dumps(value).decode("utf-8")
