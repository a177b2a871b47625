"""The install state machine as a pure table (agent/slot_table.py): whole-state snapshots,
illegal moves, recovery decisions, and no I/O import anywhere in the module."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from agent import slot_table
from agent.slot_table import (
    TRANSITIONS,
    Adopt,
    Assign,
    Check,
    Commit,
    Downloaded,
    Event,
    Fail,
    IllegalTransition,
    Refuse,
    Rollback,
    SlotState,
    Swap,
    Unhealthy,
    Verified,
    recover,
    ref_of,
    step,
)
from protocol.messages import InstallOutcome
from protocol.metadata import Compat, ReleaseEntry
from tests.test_layout import IMPURE, calls_open, imported_modules, imported_roots

COMPAT = Compat(opset=21, io_signature="in:x:float32[?,4];out:p:float32[?,3]")


def entry(version: int, data: bytes | None = None) -> ReleaseEntry:
    import hashlib

    payload = data if data is not None else f"package-{version}".encode()
    return ReleaseEntry(
        "iris", version, version, hashlib.sha256(payload).hexdigest(), len(payload), COMPAT
    )


V1, V2 = entry(1), entry(2)
R1, R2 = ref_of(V1), ref_of(V2)
COMMITTED_V1 = SlotState(
    state="committed",
    active=R1,
    assignment_version=1,
    outcome=InstallOutcome(1, R1, "installed"),
)


def run(state: SlotState, *events: Event) -> SlotState:
    for event in events:
        state = step(state, event)
    return state


def test_a_full_install_swaps_then_commits() -> None:
    watching = run(COMMITTED_V1, Assign(V2, 2), Downloaded(), Verified(), Check(), Swap(1000))
    assert watching == SlotState(
        state="watching",
        active=R2,
        previous=R1,
        candidate=V2,
        assignment_version=2,
        outcome=InstallOutcome(2, R2, "installed", "watching"),
        watch_started_ms=1000,
    )
    assert step(watching, Commit()) == SlotState(
        state="committed",
        active=R2,
        previous=R1,
        assignment_version=2,
        outcome=InstallOutcome(2, R2, "installed"),
    )


def test_a_failed_watch_rolls_back_to_the_previous_slot() -> None:
    watching = run(COMMITTED_V1, Assign(V2, 2), Downloaded(), Verified(), Check(), Swap(5))
    assert step(watching, Rollback("error_rate: 9 of 10")) == SlotState(
        state="rolled_back",
        active=R1,
        assignment_version=2,
        outcome=InstallOutcome(2, R2, "rolled_back", "error_rate: 9 of 10"),
    )


@pytest.mark.parametrize(
    ("events", "status", "state"),
    [
        pytest.param((Refuse("hash_mismatch: x"),), "refused", "refused", id="refused-download"),
        pytest.param((Downloaded(), Refuse("unsafe_model: y")), "refused", "refused", id="refused"),
        pytest.param((Fail("slow_retrieval: z"),), "failed", "failed", id="failed"),
        pytest.param(
            (Downloaded(), Verified(), Check(), Unhealthy("model_unhealthy: nan")),
            "rolled_back",
            "rolled_back",
            id="unhealthy",
        ),
    ],
)
def test_an_install_that_ends_early_leaves_the_active_slot_alone(
    events: tuple[Event, ...], status: str, state: str
) -> None:
    ended = run(COMMITTED_V1, Assign(V2, 2), *events)
    reason = events[-1].reason  # type: ignore[union-attr]
    assert ended == SlotState(
        state=state,  # type: ignore[arg-type]
        active=R1,
        assignment_version=2,
        outcome=InstallOutcome(2, R2, status, reason),  # type: ignore[arg-type]
    )


def test_an_assignment_of_the_active_model_is_adopted_unchanged() -> None:
    downloading = step(COMMITTED_V1, Assign(V2, 2))
    assert step(downloading, Adopt(V1, 3)) == SlotState(
        state="committed",
        active=R1,
        assignment_version=3,
        outcome=InstallOutcome(3, R1, "unchanged"),
    )


@pytest.mark.parametrize(
    ("state", "event"),
    [
        pytest.param("idle", Downloaded(), id="downloaded-while-idle"),
        pytest.param("downloading", Swap(0), id="swap-before-verify"),
        pytest.param("verifying", Check(), id="check-before-store"),
        pytest.param("staged", Assign(V2, 2), id="assign-while-staged"),
        pytest.param("checking", Commit(), id="commit-before-watch"),
        pytest.param("watching", Assign(V2, 2), id="assign-while-watching"),
        pytest.param("committed", Rollback("x"), id="rollback-after-commit"),
    ],
)
def test_an_illegal_move_raises_and_names_state_and_event(state: str, event: Event) -> None:
    before = SlotState(state=state, active=R1, candidate=V2)  # type: ignore[arg-type]
    with pytest.raises(IllegalTransition) as info:
        step(before, event)
    assert (info.value.state, info.value.event) == (state, type(event).__name__)


def test_every_state_has_a_row_and_every_target_is_a_state() -> None:
    states = set(TRANSITIONS)
    assert {t for row in TRANSITIONS.values() for t in row.values()} <= states
    assert states == {
        "idle",
        "downloading",
        "verifying",
        "staged",
        "checking",
        "watching",
        "committed",
        "rolled_back",
        "refused",
        "failed",
    }


@pytest.mark.parametrize(
    ("state", "expected_state", "status"),
    [
        pytest.param("downloading", "downloading", "downloading", id="download-resumes"),
        pytest.param("verifying", "failed", "failed", id="verify-interrupted"),
        pytest.param("staged", "staged", "downloading", id="staged-checks-again"),
        pytest.param("checking", "rolled_back", "rolled_back", id="crash-in-check"),
        pytest.param("watching", "rolled_back", "rolled_back", id="crash-in-watch"),
    ],
)
def test_recovery_after_a_crash_in_each_install_state(
    state: str, expected_state: str, status: str
) -> None:
    in_flight = step(COMMITTED_V1, Assign(V2, 2))
    path = {
        "downloading": (),
        "verifying": (Downloaded(),),
        "staged": (Downloaded(), Verified()),
        "checking": (Downloaded(), Verified(), Check()),
        "watching": (Downloaded(), Verified(), Check(), Swap(1)),
    }[state]
    crashed = run(in_flight, *path)
    recovered, notes = recover(crashed, lambda ref: True)
    assert (recovered.state, recovered.active, notes) == (expected_state, R1, [])
    assert recovered.outcome is not None
    assert recovered.outcome.status == status


def test_recovery_replaces_a_corrupt_active_package_by_the_previous_one() -> None:
    state = dataclasses.replace(COMMITTED_V1, active=R2, previous=R1)
    recovered, notes = recover(state, lambda ref: ref == R1)
    assert (recovered.active, recovered.previous) == (R1, None)
    assert len(notes) == 1


def test_recovery_with_no_intact_package_serves_nothing() -> None:
    state = dataclasses.replace(COMMITTED_V1, active=R2, previous=R1)
    recovered, notes = recover(state, lambda ref: False)
    assert (recovered.active, recovered.previous, len(notes)) == (None, None, 2)


def test_the_slot_table_module_does_no_io() -> None:
    path = Path(slot_table.__file__)
    assert not imported_roots(path) & (IMPURE - {"agent"}), "agent/slot_table.py imports I/O"
    agent_imports = {m for m in imported_modules(path) if m.split(".")[0] == "agent"}
    assert agent_imports == {"agent.errors"}, "only the error tree, which does no I/O"
    assert not calls_open(path)
