"""Buffered aggregation (FedBuff, Nguyen et al. 2022): no rounds, a step every K deltas.

A model in buffered mode has one buffer on its *current* version. Devices train whenever
they have data, on whatever version they run; screening
(:func:`~hub.rounds.screening.screen`, ``mode="buffered"``) refuses a delta more than
``max_staleness`` versions behind (``too_stale``) and a second one from a device already
in the buffer (``duplicate``). Each accepted delta joins the buffer with its staleness
τ = current - base; when the buffer holds ``size`` deltas it is flushed: the strategy
aggregates them with the staleness discount ``(1 + τ)^-0.5``
(:func:`~hub.rounds.weighting.staleness_weight`), the update becomes the next version,
and the buffer starts empty on it.

A delta's base never changes, but the version it is applied to may: when a version
appears by another way (an upload, a manual release) :func:`rebase` moves the buffer
onto it, recomputes every τ and drops what became too stale.

Synchronous rounds wait for the slowest device they want; FedBuff never waits, at the
price of applying some updates computed on older heads (the paper, arXiv 2106.06639,
reports up to 3.8x less time than synchronous FedAvgM to the same accuracy).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from hub.rounds.errors import InvalidPolicy
from hub.rounds.screening import OpenSlot
from hub.rounds.weighting import Submission


@dataclass(frozen=True)
class BufferPolicy:
    """Flush every ``size`` deltas (FedBuff's K); refuse beyond ``max_staleness``."""

    size: int = 10
    max_staleness: int = 3

    def __post_init__(self) -> None:
        if self.size < 1:
            raise InvalidPolicy(f"buffer size {self.size} must be >= 1")
        if self.max_staleness < 0:
            raise InvalidPolicy(f"max_staleness {self.max_staleness} must be >= 0")


@dataclass(frozen=True)
class Buffer:
    """The accepted deltas waiting for the next flush, on ``current_version``."""

    model: str
    current_version: int
    entries: tuple[Submission, ...] = ()
    flushes: int = 0

    @property
    def devices(self) -> frozenset[str]:
        return frozenset(s.device_id for s in self.entries)

    def slot(self) -> OpenSlot:
        """The buffer as screening sees it (always open, keyed by no round)."""
        return OpenSlot(None, self.model, self.current_version, True, self.devices)

    def add(self, submission: Submission) -> Buffer:
        """The buffer with one more accepted delta, its staleness set against the
        current version.

        Raises:
            ValueError: the device is already in the buffer, or the delta is on a
                version newer than the current one (screening refuses both first).
        """
        if submission.device_id in self.devices:
            raise ValueError(f"{submission.device_id} is already in the buffer")
        if submission.base_version > self.current_version:
            raise ValueError(f"base v{submission.base_version} is newer than the buffer's")
        staleness = self.current_version - submission.base_version
        return replace(self, entries=(*self.entries, replace(submission, staleness=staleness)))


@dataclass(frozen=True)
class Flush:
    """Aggregate ``entries`` into version ``next_version``; ``buffer`` is what stays."""

    entries: tuple[Submission, ...]
    next_version: int
    buffer: Buffer


@dataclass(frozen=True)
class Hold:
    """Not yet: ``missing`` more deltas before the next flush."""

    missing: int


def plan_flush(buffer: Buffer, policy: BufferPolicy) -> Flush | Hold:
    """Flush the first ``policy.size`` entries once there are that many (arrival order)."""
    if len(buffer.entries) < policy.size:
        return Hold(policy.size - len(buffer.entries))
    taken, rest = buffer.entries[: policy.size], buffer.entries[policy.size :]
    following = Buffer(buffer.model, buffer.current_version, (), buffer.flushes + 1)
    following = rebase(following, buffer.current_version + 1, policy, rest)[0]
    return Flush(taken, buffer.current_version + 1, following)


def rebase(
    buffer: Buffer,
    current_version: int,
    policy: BufferPolicy,
    extra: tuple[Submission, ...] = (),
) -> tuple[Buffer, tuple[Submission, ...]]:
    """``buffer`` (plus ``extra``) moved onto ``current_version``: staleness recomputed,
    entries now beyond ``max_staleness`` dropped and returned (their reason:
    ``too_stale``)."""
    kept: list[Submission] = []
    dropped: list[Submission] = []
    for s in (*buffer.entries, *extra):
        staleness = max(0, current_version - s.base_version)
        (kept if staleness <= policy.max_staleness else dropped).append(
            replace(s, staleness=staleness)
        )
    moved = replace(buffer, current_version=current_version, entries=tuple(kept))
    return moved, tuple(dropped)


__all__ = ["Buffer", "BufferPolicy", "Flush", "Hold", "plan_flush", "rebase"]
