"""Replay guard: a per-sender sequence window plus a freshness window on ``sent_at``.

The window is IPsec's anti-replay bitmap (RFC 4303 §3.4.3): ``high`` is the highest
seq accepted and bit *i* of ``mask`` says whether ``high - i`` was accepted too. A seq
above ``high`` is new; one inside the window is new unless its bit is set (then it is a
duplicate: a QoS 1 re-delivery or an agent re-sending because an ack was lost); one
below the window is a replay. Unlike a bare high-water mark, a message overtaken in
transit by a later one is still accepted, so nothing is lost to reordering; the agent
keeps fewer than ``WIDTH`` messages in flight, so no unacknowledged message can fall
below the window.

Device time is informational (THREATS.md T15, B32): replay decisions rest on ``seq``.
``check_fresh`` only refuses frames so old or so far ahead that they cannot be a
legitimate outbox drain; its bounds are generous on purpose.

Pure: callers persist the window and pass ``now`` in.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from protocol.errors import Replayed, Stale

WIDTH = 4096
_FULL = (1 << WIDTH) - 1

Verdict = Literal["new", "duplicate"]


@dataclass(frozen=True)
class SeqWindow:
    """What one receiver has accepted from one sender. ``SeqWindow()`` has seen nothing."""

    high: int = 0
    mask: int = 0

    def check(self, seq: int) -> Verdict:
        """Classify ``seq`` without changing anything.

        Raises:
            Replayed: ``seq`` is below the window (or not positive).
        """
        if seq <= 0 or seq <= self.high - WIDTH:
            raise Replayed(f"seq {seq} is below the replay window (high {self.high})")
        if seq > self.high:
            return "new"
        return "duplicate" if self.mask >> (self.high - seq) & 1 else "new"

    def accept(self, seq: int) -> SeqWindow:
        """The window after accepting ``seq`` (a duplicate leaves it as it was).

        Raises:
            Replayed: ``seq`` is below the window.
        """
        self.check(seq)
        if seq > self.high:
            shift = seq - self.high
            mask = ((self.mask << shift) | 1) & _FULL if shift < WIDTH else 1
            return SeqWindow(seq, mask)
        return SeqWindow(self.high, self.mask | 1 << (self.high - seq))

    def to_bytes(self) -> bytes:
        """Compact form for storage: 8-byte high, then the mask."""
        return self.high.to_bytes(8, "big") + self.mask.to_bytes(WIDTH // 8, "big")

    @classmethod
    def from_bytes(cls, data: bytes) -> SeqWindow:
        return cls(int.from_bytes(data[:8], "big"), int.from_bytes(data[8:], "big") & _FULL)


@dataclass(frozen=True)
class Freshness:
    """How far ``sent_at`` may lag (an outbox drained after an outage) or lead (clock skew)."""

    max_age_ms: int = 7 * 24 * 3600 * 1000
    max_ahead_ms: int = 24 * 3600 * 1000

    def check(self, sent_at: int, now_ms: int) -> None:
        """Raises Stale when ``sent_at`` is outside ``[now - max_age, now + max_ahead]``."""
        if sent_at < now_ms - self.max_age_ms:
            raise Stale(f"sent {(now_ms - sent_at) // 1000} s ago, beyond the freshness window")
        if sent_at > now_ms + self.max_ahead_ms:
            raise Stale(f"sent {(sent_at - now_ms) // 1000} s in the future")
