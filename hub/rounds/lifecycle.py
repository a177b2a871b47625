"""A round's lifecycle as a table, and the pure decision of when it closes.

A round belongs to one model and one base version. It opens (by schedule, a drift alert
or an operator), collects screened deltas, closes, aggregates into a candidate version,
and the candidate is then accepted (it beat its parent: release and roll out) or
rejected. The moves, h11-style (:data:`TRANSITIONS`, :func:`step`,
:class:`~hub.rounds.errors.IllegalTransition`)::

    open --Close--> closing --Aggregated--> aggregated --Accept--> accepted
                                                       --Reject--> rejected
    open, closing --Fail--> failed          (too few deltas at the deadline; aggregation error)
    open, closing --Cancel--> cancelled     (an operator; a newer base released meanwhile)

``accepted``, ``rejected``, ``failed`` and ``cancelled`` are final. The store holds the
round, so a hub restart resumes it: an ``open`` round waits for its deadline again, and
a ``closing`` one is aggregated again from the stored deltas (aggregation is a pure
function of them, so doing it twice gives the same candidate).

:func:`plan_close` decides, from the round, how many usable deltas it holds and
``now_ms``, whether to close now, fail, or wait until when: the scheduler's job calls it
for every open round and applies the decision with :func:`step`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

from hub.rounds.errors import IllegalTransition, InvalidPolicy

RoundState = Literal["open", "closing", "aggregated", "accepted", "rejected", "failed", "cancelled"]
Trigger = Literal["schedule", "drift", "operator"]
FINAL: frozenset[RoundState] = frozenset({"accepted", "rejected", "failed", "cancelled"})


@dataclass(frozen=True)
class Close:
    """Stop taking deltas; ``reason`` is ``enough`` or ``deadline``."""

    now_ms: int
    reason: str


@dataclass(frozen=True)
class Aggregated:
    """The candidate ``candidate_version`` was built from the round's deltas."""

    now_ms: int
    candidate_version: int


@dataclass(frozen=True)
class Accept:
    """The candidate passed validation (beats its parent by the policy's margin)."""

    now_ms: int


@dataclass(frozen=True)
class Reject:
    """The candidate did not pass validation; ``reason`` says by how much it missed."""

    now_ms: int
    reason: str


@dataclass(frozen=True)
class Fail:
    """The round ends without a candidate (too few deltas, nothing usable)."""

    now_ms: int
    reason: str


@dataclass(frozen=True)
class Cancel:
    """An operator (or a newer base) ended the round; ``by`` names who."""

    now_ms: int
    by: str


Event = Close | Aggregated | Accept | Reject | Fail | Cancel

TRANSITIONS: dict[RoundState, dict[type[Event], RoundState]] = {
    "open": {Close: "closing", Fail: "failed", Cancel: "cancelled"},
    "closing": {Aggregated: "aggregated", Fail: "failed", Cancel: "cancelled"},
    "aggregated": {Accept: "accepted", Reject: "rejected"},
    "accepted": {},
    "rejected": {},
    "failed": {},
    "cancelled": {},
}


@dataclass(frozen=True)
class ClosePolicy:
    """When a round closes: at ``target_deltas`` usable deltas, or at its deadline
    (``duration_ms`` after opening) with at least ``min_deltas``; with fewer it fails."""

    min_deltas: int = 10
    target_deltas: int = 30
    duration_ms: int = 60 * 60 * 1000

    def __post_init__(self) -> None:
        if not 1 <= self.min_deltas <= self.target_deltas:
            raise InvalidPolicy(
                f"need 1 <= min_deltas ({self.min_deltas}) <= target_deltas ({self.target_deltas})"
            )
        if self.duration_ms < 1:
            raise InvalidPolicy(f"duration_ms {self.duration_ms} must be >= 1")


@dataclass(frozen=True)
class Round:
    """One round as the store holds it. ``reason`` explains the last move (why it
    closed, failed, was rejected or cancelled)."""

    round_id: str
    model: str
    base_version: int
    opened_ms: int
    deadline_ms: int
    policy: ClosePolicy
    trigger: Trigger = "operator"
    state: RoundState = "open"
    closed_ms: int | None = None
    ended_ms: int | None = None
    candidate_version: int | None = None
    reason: str = ""

    @classmethod
    def open(
        cls,
        round_id: str,
        model: str,
        base_version: int,
        *,
        now_ms: int,
        policy: ClosePolicy,
        trigger: Trigger = "operator",
    ) -> Round:
        return cls(
            round_id, model, base_version, now_ms, now_ms + policy.duration_ms, policy, trigger
        )

    @property
    def final(self) -> bool:
        return self.state in FINAL


def step(state: Round, event: Event) -> Round:
    """The round after ``event``: the table decides the move, the event its effects.

    Raises:
        IllegalTransition: the table holds no move for ``event`` in ``state.state``.
    """
    target = TRANSITIONS[state.state].get(type(event))
    if target is None:
        raise IllegalTransition(state.state, type(event).__name__, what="round")
    moved = replace(state, state=target)
    match event:
        case Close(now_ms, reason):
            return replace(moved, closed_ms=now_ms, reason=reason)
        case Aggregated(_, version):
            return replace(moved, candidate_version=version, reason="")
        case Accept(now_ms):
            return replace(moved, ended_ms=now_ms, reason="")
        case Reject(now_ms, reason) | Fail(now_ms, reason):
            return replace(moved, ended_ms=now_ms, reason=reason)
        case Cancel(now_ms, by):
            return replace(moved, ended_ms=now_ms, reason=f"cancelled by {by}")
    raise AssertionError(f"unhandled event {event!r}")  # pragma: no cover


@dataclass(frozen=True)
class Wait:
    """Keep the round open; check again at ``until_ms`` (its deadline) or on the next
    delta, whichever comes first."""

    until_ms: int


CloseDecision = Close | Fail | Wait


def plan_close(round_: Round, usable_deltas: int, now_ms: int) -> CloseDecision:
    """What to do with an open round now.

    ``usable_deltas`` counts accepted deltas (flagged and refused ones do not count).
    Enough deltas close it at once, even before the deadline; at the deadline it closes
    with what it has if that is at least ``min_deltas``, and fails otherwise. A round
    that is not open has nothing to decide: :class:`Wait` at its deadline, never a move.
    """
    policy = round_.policy
    if round_.state != "open":
        return Wait(round_.deadline_ms)
    if usable_deltas >= policy.target_deltas:
        return Close(now_ms, "enough")
    if now_ms < round_.deadline_ms:
        return Wait(round_.deadline_ms)
    if usable_deltas >= policy.min_deltas:
        return Close(now_ms, "deadline")
    return Fail(
        now_ms, f"deadline with {usable_deltas} usable deltas, fewer than {policy.min_deltas}"
    )


def due_by_schedule(
    every_ms: int | None, last_opened_ms: int | None, live: bool, now_ms: int
) -> bool:
    """Whether a model's schedule opens a round now: it has one (``every_ms``), no round
    of the model is live, and ``every_ms`` has passed since the last round opened (by any
    trigger: a drift alert's or an operator's round resets the clock), or none ever did."""
    if every_ms is None or live:
        return False
    return last_opened_ms is None or now_ms - last_opened_ms >= every_ms


__all__ = [
    "FINAL",
    "TRANSITIONS",
    "Accept",
    "Aggregated",
    "Cancel",
    "Close",
    "CloseDecision",
    "ClosePolicy",
    "Event",
    "Fail",
    "Reject",
    "Round",
    "RoundState",
    "Trigger",
    "Wait",
    "due_by_schedule",
    "plan_close",
    "step",
]
