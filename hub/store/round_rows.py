"""Typed rows of the federated-rounds tables (migration ``m009_rounds``).

Kept apart from :mod:`hub.store.rows` so the rounds layer grows without touching the rows
every other concern shares.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from hub.store.rows import Page

VerdictStatus = Literal["accepted", "flagged", "refused", "used", "unused"]


@dataclass(frozen=True, slots=True)
class RoundRecord:
    """One round as stored: :class:`hub.rounds.lifecycle.Round` plus who opened it, the
    strategy preset it runs and its judgement (JSON) once judged."""

    round_id: str
    model: str
    base_version: int
    state: str
    trigger: str
    opened_ms: int
    deadline_ms: int
    closed_ms: int | None
    ended_ms: int | None
    min_deltas: int
    target_deltas: int
    duration_ms: int
    strategy: str
    candidate_version: int | None
    reason: str
    created_by: str
    judgement: str | None = None


@dataclass(frozen=True, slots=True)
class DeltaVerdict:
    """Screening's verdict on one stored delta (the row of ``deltas`` with the same key).

    ``slot`` is the round id, or ``buffer:<model>`` in buffered mode; ``flush`` the
    buffer flush that read it. ``status`` moves from ``accepted`` to ``used`` or
    ``unused`` once an aggregation read it."""

    device_id: str
    seq: int
    model: str
    base_version: int
    slot: str | None
    status: VerdictStatus
    reason: str | None
    detail: str
    digest: str
    norm: float | None
    staleness: int
    num_samples: int
    received_at: int
    flush: int | None = None

    @property
    def key(self) -> str:
        return f"{self.device_id}:{self.seq}"


@dataclass(frozen=True, slots=True)
class BufferState:
    """A buffered model's buffer: the version it applies to and flushes so far."""

    model: str
    current_version: int
    flushes: int


class Rounds(Protocol):
    """Federated rounds (:mod:`hub.federated`): rounds, the verdict on every delta, and
    each model's policy, buffer and validation set. ``slot`` is a round id or
    ``buffer:<model>``; *pending* verdicts are those no aggregation has read yet."""

    def put_round(self, record: RoundRecord) -> None: ...

    def round(self, round_id: str) -> RoundRecord | None: ...

    def live_round(self, model: str) -> RoundRecord | None:
        """The model's open or closing round, if any."""
        ...

    def rounds_in(self, states: Sequence[str]) -> list[RoundRecord]: ...

    def rounds(
        self, *, model: str | None, state: str | None, limit: int, offset: int
    ) -> Page[RoundRecord]:
        """Newest first."""
        ...

    def count_rounds(self, model: str) -> int: ...

    def add_verdicts(self, verdicts: Sequence[DeltaVerdict]) -> int: ...

    def digest_seen(self, model: str, digest: str) -> bool:
        """Whether a delta with these tensor bytes was stored for ``model`` before."""
        ...

    def slot_devices(self, slot: str) -> frozenset[str]:
        """Devices with a pending accepted or flagged delta in ``slot``."""
        ...

    def count_usable(self, slot: str) -> int: ...

    def pending(self, slot: str) -> list[DeltaVerdict]: ...

    def verdicts(self, slot: str) -> list[DeltaVerdict]: ...

    def verdict_counts(self, slot: str) -> list[tuple[str, str | None, int]]: ...

    def mark_read(self, keys: Sequence[tuple[str, int, str]], flush: int) -> None: ...

    def holdouts(self, slot: str) -> dict[str, tuple[str, float, float]]: ...

    def tensors(self, device_id: str, seq: int) -> bytes | None: ...

    def add_strikes(self, strikes: dict[str, int]) -> None: ...

    def strikes(self, device_id: str) -> int: ...

    def policy(self, model: str) -> str | None: ...

    def put_policy(self, model: str, policy: str, *, at_ms: int, by: str) -> None: ...

    def buffer(self, model: str) -> BufferState | None: ...

    def put_buffer(self, state: BufferState) -> None: ...

    def validation_set(self, model: str) -> bytes | None: ...

    def put_validation_set(
        self, model: str, data: bytes, *, rows: int, at_ms: int, by: str
    ) -> None: ...
