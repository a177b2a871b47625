"""Replay guards: the uplink's sequence window, the downlink's time-ordered window, and a
freshness window on ``sent_at``.

The window is IPsec's anti-replay bitmap (RFC 4303 §3.4.3): ``high`` is the highest
seq accepted and bit *i* of ``mask`` says whether ``high - i`` was accepted too. A seq
above ``high`` is new; one inside the window is new unless its bit is set (then it is a
duplicate: a QoS 1 re-delivery or an agent re-sending because an ack was lost); one
below the window is a replay. Unlike a bare high-water mark, a message overtaken in
transit by a later one is still accepted, so nothing is lost to reordering; the agent
keeps fewer than ``WIDTH`` messages in flight, so no unacknowledged message can fall
below the window.

Device time is informational (threat-model T15, B32): replay decisions rest on ``seq``.
``check_fresh`` only refuses frames so old or so far ahead that they cannot be a
legitimate outbox drain; its bounds are generous on purpose.

**The downlink** (hub → device) uses :class:`DownlinkWindow` instead, because its seqs
come from more than one publisher (the hub, a CLI run beside it, one day several hub
replicas) that share no counter. A downlink seq is *time-ordered*: its high bits are the
publisher's clock in milliseconds (:func:`downlink_seq`), so publishers that never talk to
each other still number within milliseconds of one another, and the window reaches back
:data:`DOWNLINK_REACH_MS` in time rather than a number of frames. Three rules keep a device
from ever being stranded by a seq (docs/decisions.md, "Downlink sequence numbers"):

1. the window belongs to a **key epoch** (:func:`key_epoch` of the rollout keys that
   verified the frames); a root rotation that changes the rollout keys starts a fresh one,
   so a stolen key's seqs die with the key (TUF's fast-forward recovery);
2. a seq whose time part lies more than :data:`DOWNLINK_MAX_AHEAD_MS` ahead of the
   receiver's trusted time is refused (:class:`SeqAhead`), never accepted, so no single
   frame (a stolen key's 2^62, a hub with its clock years ahead) can push the window
   beyond where time will bring the hub's own seqs within a day;
3. within the reach, a seq is new unless it was accepted before: reordering across
   publishers and threads costs nothing.

Pure: callers persist the windows and pass ``now`` in.
"""

from __future__ import annotations

import bisect
import hashlib
import itertools
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from protocol.errors import Malformed, Replayed, SeqAhead, Stale

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


# ---------------------------------------------------------------- downlink

DOWNLINK_SEQ_SHIFT = 16
"""A downlink seq is ``(ms << 16) | low``: the low 16 bits order frames within one ms of
one publisher and tell publishers apart (:func:`downlink_seq`)."""
DOWNLINK_REACH_MS = 60_000
"""How far back in time a downlink frame may be reordered behind a later one and still be
accepted (threads and publishers racing, a broker reordering across topics)."""
DOWNLINK_MAX_AHEAD_MS = 24 * 3600 * 1000
"""How far ahead of the receiver's trusted time a downlink seq may be stamped."""
DOWNLINK_MAX_SEEN = 1024
"""Accepted seqs remembered within the reach; past this, the oldest are forgotten and
everything at or below them counts as a replay."""
_MAGIC = b"EFW2"
_MAX_EPOCH = 64


def downlink_seq(now_ms: int, low: int) -> int:
    """The seq a publisher stamps at ``now_ms``; ``low`` (0 to 65535) is its own choice.

    ``downlink_seq(t, low) >> DOWNLINK_SEQ_SHIFT == t``.

    Raises:
        ValueError: ``now_ms`` negative or ``low`` out of range.
    """
    if now_ms < 0 or not 0 <= low < 1 << DOWNLINK_SEQ_SHIFT:
        raise ValueError(f"no downlink seq at {now_ms} ms with low bits {low}")
    return now_ms << DOWNLINK_SEQ_SHIFT | low


def key_epoch(keyids: Iterable[str]) -> str:
    """The name of the window a set of rollout key ids verifies into: the same set of
    keys, in any order, always names the same epoch; any change names another."""
    joined = ",".join(sorted(set(keyids)))
    return hashlib.sha256(joined.encode("ascii")).hexdigest()[:32]


@dataclass(frozen=True)
class DownlinkWindow:
    """What one device has accepted from the hub under one key epoch (module docstring).

    ``seen`` holds the accepted seqs above :attr:`floor`, ascending (checked when read from
    storage; :meth:`accept` keeps it so). ``DownlinkWindow()`` has seen nothing and belongs
    to no epoch.

    Round-trip law: ``DownlinkWindow.from_bytes(w.to_bytes()) == w``.
    """

    epoch: str = ""
    high: int = 0
    seen: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if len(self.epoch) > _MAX_EPOCH or not self.epoch.isascii():
            raise Malformed("key epoch must be at most 64 ASCII characters")
        if self.high < 0 or len(self.seen) > DOWNLINK_MAX_SEEN:
            raise Malformed("downlink window out of range")
        if self.seen and (self.seen[0] <= 0 or self.seen[-1] > self.high):
            raise Malformed("downlink window's seen seqs must lie between 1 and its high")

    @property
    def floor(self) -> int:
        """Seqs at or below this are replays, unless they are in :attr:`seen`."""
        floor = self.high - (DOWNLINK_REACH_MS << DOWNLINK_SEQ_SHIFT)
        if len(self.seen) >= DOWNLINK_MAX_SEEN:
            floor = max(floor, self.seen[0])
        return floor

    def for_epoch(self, epoch: str) -> DownlinkWindow:
        """This window if it belongs to ``epoch``, else a fresh one that does."""
        return self if epoch == self.epoch else DownlinkWindow(epoch)

    def check(self, seq: int, *, now_ms: int) -> Verdict:
        """Classify ``seq`` at trusted time ``now_ms`` without changing anything.

        Raises:
            SeqAhead: its time part is more than a day ahead of ``now_ms``.
            Replayed: not positive, or at or below the floor and not a duplicate.
        """
        if seq <= 0:
            raise Replayed(f"seq {seq} is not positive")
        stamped = seq >> DOWNLINK_SEQ_SHIFT
        if stamped > now_ms + DOWNLINK_MAX_AHEAD_MS:
            raise SeqAhead(f"seq stamped {(stamped - now_ms) // 1000} s ahead of trusted time")
        at = bisect.bisect_left(self.seen, seq)
        if at < len(self.seen) and self.seen[at] == seq:
            return "duplicate"
        if seq <= self.floor:
            raise Replayed(f"seq {seq} is below the downlink window (high {self.high})")
        return "new"

    def accept(self, seq: int, *, now_ms: int) -> DownlinkWindow:
        """The window after accepting ``seq`` (a duplicate leaves it as it was).

        Raises:
            SeqAhead, Replayed: as :meth:`check`.
        """
        if self.check(seq, now_ms=now_ms) == "duplicate":
            return self
        high = max(self.high, seq)
        reach = high - (DOWNLINK_REACH_MS << DOWNLINK_SEQ_SHIFT)
        kept = list(self.seen[bisect.bisect_right(self.seen, reach) :])
        bisect.insort(kept, seq)
        return DownlinkWindow(self.epoch, high, tuple(kept[-DOWNLINK_MAX_SEEN:]))

    def to_bytes(self) -> bytes:
        """``EFW2``, the epoch (1-byte length, ASCII), high (8 bytes), the seen count
        (2 bytes) and each seen seq (8 bytes), big-endian."""
        epoch = self.epoch.encode("ascii")
        count = len(self.seen)
        return b"".join(
            [
                _MAGIC,
                len(epoch).to_bytes(1, "big"),
                epoch,
                struct.pack(f">QH{count}Q", self.high, count, *self.seen),
            ]
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> DownlinkWindow:
        """Reload a stored window.

        Raises:
            Malformed: not a stored downlink window (an older agent's window among them).
        """
        if data[:4] != _MAGIC or len(data) < 5:
            raise Malformed("not a downlink window")
        size = data[4]
        body = data[5 + size :]
        if len(body) < 10:
            raise Malformed("truncated downlink window")
        count = int.from_bytes(body[8:10], "big")
        if len(body) != 10 + 8 * count:
            raise Malformed("downlink window of the wrong length")
        try:
            epoch = data[5 : 5 + size].decode("ascii")
        except UnicodeDecodeError as e:
            raise Malformed("downlink window epoch is not ASCII") from e
        high, _, *seen = struct.unpack(f">QH{count}Q", body)
        if any(a >= b for a, b in itertools.pairwise(seen)):
            raise Malformed("downlink window's seen seqs must ascend")
        return cls(epoch, high, tuple(seen))
