"""The round lifecycle table and the close decision, driven with events and whole snapshots."""

from __future__ import annotations

from dataclasses import replace

import pytest

from hub.rounds.errors import IllegalTransition, InvalidPolicy
from hub.rounds.lifecycle import (
    FINAL,
    TRANSITIONS,
    Accept,
    Aggregated,
    Cancel,
    Close,
    ClosePolicy,
    Event,
    Fail,
    Reject,
    Round,
    Wait,
    due_by_schedule,
    plan_close,
    step,
)
from tests.clock import EPOCH_MS

POLICY = ClosePolicy(min_deltas=3, target_deltas=5, duration_ms=60_000)
OPENED = Round.open("r-1", "kws", 4, now_ms=EPOCH_MS, policy=POLICY, trigger="drift")
EVENTS: list[Event] = [
    Close(EPOCH_MS, "enough"),
    Aggregated(EPOCH_MS, 5),
    Accept(EPOCH_MS),
    Reject(EPOCH_MS, "no gain"),
    Fail(EPOCH_MS, "too few"),
    Cancel(EPOCH_MS, "alice"),
]


def test_a_round_opens_with_its_deadline_from_the_policy() -> None:
    assert (
        Round(
            round_id="r-1",
            model="kws",
            base_version=4,
            opened_ms=EPOCH_MS,
            deadline_ms=EPOCH_MS + 60_000,
            policy=POLICY,
            trigger="drift",
            state="open",
        )
        == OPENED
    )


def test_the_happy_path_records_every_step() -> None:
    closing = step(OPENED, Close(EPOCH_MS + 10, "enough"))
    aggregated = step(closing, Aggregated(EPOCH_MS + 20, 5))
    accepted = step(aggregated, Accept(EPOCH_MS + 30))
    assert accepted == replace(
        OPENED, state="accepted", closed_ms=EPOCH_MS + 10, ended_ms=EPOCH_MS + 30,
        candidate_version=5, reason="",
    )  # fmt: skip
    assert accepted.final


def test_a_rejected_candidate_keeps_why() -> None:
    closing = step(OPENED, Close(EPOCH_MS, "deadline"))
    rejected = step(step(closing, Aggregated(EPOCH_MS, 5)), Reject(EPOCH_MS + 5, "-0.4 points"))
    assert (rejected.state, rejected.reason, rejected.candidate_version) == (
        "rejected",
        "-0.4 points",
        5,
    )


def test_cancel_names_who_cancelled() -> None:
    assert step(OPENED, Cancel(EPOCH_MS, "alice")).reason == "cancelled by alice"


@pytest.mark.parametrize("state", list(TRANSITIONS))
@pytest.mark.parametrize("event", EVENTS, ids=lambda e: type(e).__name__)
def test_every_move_outside_the_table_is_illegal(state: str, event: Event) -> None:
    current = replace(OPENED, state=state)  # type: ignore[arg-type]
    if type(event) in TRANSITIONS[state]:  # type: ignore[index]
        assert step(current, event).state == TRANSITIONS[state][type(event)]  # type: ignore[index]
        return
    with pytest.raises(IllegalTransition) as caught:
        step(current, event)
    assert (caught.value.state, caught.value.event) == (state, type(event).__name__)
    assert caught.value.status_hint == 409


def test_final_states_have_no_way_out() -> None:
    assert all(not TRANSITIONS[s] for s in FINAL)


def test_a_round_closes_as_soon_as_it_has_enough_deltas() -> None:
    assert plan_close(OPENED, 5, EPOCH_MS + 1) == Close(EPOCH_MS + 1, "enough")


def test_a_round_waits_for_its_deadline_with_fewer() -> None:
    assert plan_close(OPENED, 4, EPOCH_MS + 59_999) == Wait(EPOCH_MS + 60_000)


def test_at_the_deadline_it_closes_with_the_minimum() -> None:
    assert plan_close(OPENED, 3, EPOCH_MS + 60_000) == Close(EPOCH_MS + 60_000, "deadline")


def test_at_the_deadline_below_the_minimum_it_fails_with_the_count() -> None:
    decision = plan_close(OPENED, 2, EPOCH_MS + 61_000)
    assert isinstance(decision, Fail)
    assert "2 usable deltas, fewer than 3" in decision.reason


def test_a_round_that_is_not_open_has_nothing_to_decide() -> None:
    closing = step(OPENED, Close(EPOCH_MS, "enough"))
    assert plan_close(closing, 100, EPOCH_MS + 10**9) == Wait(closing.deadline_ms)


def test_the_decision_applies_with_step() -> None:
    decision = plan_close(OPENED, 2, EPOCH_MS + 60_000)
    assert isinstance(decision, Fail)
    assert step(OPENED, decision).state == "failed"


@pytest.mark.parametrize(
    ("min_deltas", "target_deltas", "duration_ms"), [(0, 5, 1), (6, 5, 1), (1, 5, 0)]
)
def test_contradicting_close_policies_are_refused(
    min_deltas: int, target_deltas: int, duration_ms: int
) -> None:
    with pytest.raises(InvalidPolicy):
        ClosePolicy(min_deltas, target_deltas, duration_ms)


def test_a_schedule_opens_a_round_once_its_interval_passed_since_the_last_one() -> None:
    assert due_by_schedule(60_000, None, False, 5)  # never opened: at once
    assert not due_by_schedule(60_000, 1_000, False, 60_999)
    assert due_by_schedule(60_000, 1_000, False, 61_000)
    assert not due_by_schedule(60_000, 1_000, True, 500_000)  # one is live
    assert not due_by_schedule(None, None, False, 500_000)  # no schedule
