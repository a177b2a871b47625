"""The rollouts' part of the store's contract and the rows it passes (pure).

A rollout's state crosses as the pure core's own values (:class:`~hub.rollouts.Rollout`,
:class:`~hub.rollouts.DeviceProgress`, :class:`~hub.rollouts.ShadowProgress`,
:class:`~hub.rollouts.GateVerdict`): the planner reads what the store wrote without a
translation layer that could drift from it. What only the shell needs (who created a
rollout, which newer one superseded it, where a verdict or a timeline line belongs) is
in the records below.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from hub.rollouts import DeviceProgress, GateVerdict, Rollout, ShadowProgress
from hub.store.rows import DataWindowRecord, Device


@dataclass(frozen=True, slots=True)
class RolloutRecord:
    """A rollout as stored: its state and who started it when."""

    rollout: Rollout
    created_at: int
    created_by: str
    superseded_by: str | None = None


@dataclass(frozen=True, slots=True)
class StoredVerdict:
    """The latest verdict of one gate of one stage."""

    stage: int
    at_ms: int
    verdict: GateVerdict


@dataclass(frozen=True, slots=True)
class TimelineLine:
    at_ms: int
    actor: str
    line: str


class Rollouts(Protocol):
    """Staged rollouts: state, per-device progress, verdicts, timeline, and the reads
    that build the planner's inputs."""

    def next_id(self) -> str:
        """``r-<n>``, one more than any rollout so far (call inside ``immediate``)."""
        ...

    def add(self, record: RolloutRecord) -> None:
        """Raises StoreError: the id exists."""

    def find(self, rollout_id: str) -> RolloutRecord | None: ...

    def listing(self, *, model: str | None = None, phase: str | None = None) -> list[RolloutRecord]:
        """Newest first."""
        ...

    def ticking(self) -> list[RolloutRecord]:
        """Rollouts the scheduler plans: live ones, and completed ones not superseded
        (they keep assigning devices that join or come back). Oldest first."""
        ...

    def put_state(self, rollout: Rollout) -> None:
        """Raises NotFound: no such rollout."""

    def supersede(self, model: str, *, by: str) -> int:
        """Mark the model's completed rollouts as superseded by rollout ``by``; how many."""
        ...

    def progress(self, rollout_id: str) -> list[DeviceProgress]: ...

    def put_progress(self, rollout_id: str, progress: Sequence[DeviceProgress]) -> None: ...

    def shadows(self, rollout_id: str) -> list[ShadowProgress]: ...

    def put_shadows(self, rollout_id: str, shadows: Sequence[ShadowProgress]) -> None: ...

    def verdicts(self, rollout_id: str) -> list[StoredVerdict]:
        """By stage, then metric."""
        ...

    def put_verdicts(
        self, rollout_id: str, stage: int, at_ms: int, verdicts: Sequence[GateVerdict]
    ) -> None:
        """Upsert the latest verdict per (stage, metric)."""

    def add_timeline(
        self, rollout_id: str, at_ms: int, actor: str, lines: Sequence[str]
    ) -> None: ...

    def timeline(self, rollout_id: str) -> list[TimelineLine]:
        """Oldest first."""
        ...

    def active_devices(self) -> list[Device]:
        """Every active device, by id (the planner's candidates)."""
        ...

    def windows(self, model_name: str, *, since_ms: int) -> list[DataWindowRecord]:
        """Data windows of the model that started at or after ``since_ms``."""
        ...
