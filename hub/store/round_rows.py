"""Typed rows of the federated-rounds tables (migration ``m009_rounds``).

Kept apart from :mod:`hub.store.rows` so the rounds layer grows without touching the rows
every other concern shares.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

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
