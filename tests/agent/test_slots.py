"""The install state machine as a table, whole-state snapshots, and boot repair on disk."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from agent.errors import IllegalTransition, StateCorrupt
from agent.slots import (
    SLOTS_FILE,
    TRANSITIONS,
    Adopt,
    Assign,
    Check,
    Commit,
    Downloaded,
    Event,
    Fail,
    Refuse,
    Rollback,
    Slots,
    SlotState,
    Swap,
    Unhealthy,
    Verified,
    recover,
    ref_of,
    step,
)
from protocol.messages import InstallOutcome, ModelRef
from protocol.metadata import Compat, ReleaseEntry

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


# ---------------------------------------------------------------- on disk


def stored(slots: Slots, data: bytes) -> ModelRef:
    ref = ref_of(entry(1, data))
    source = slots.root / "incoming"
    source.write_bytes(data)
    slots.store(ref.sha256, source)
    return ref


def test_slots_persist_every_step_and_reload_it(tmp_path: Path) -> None:
    slots = Slots(tmp_path)
    first = entry(1, b"one")
    slots.apply(Assign(first, 1))
    assert Slots(tmp_path).state == slots.state
    assert SlotState.from_bytes((tmp_path / SLOTS_FILE).read_bytes()) == slots.state


def test_slots_boot_deletes_strays_and_unnamed_packages(tmp_path: Path) -> None:
    slots = Slots(tmp_path)
    kept = entry(1, b"one")
    source = tmp_path / "incoming"
    source.write_bytes(b"one")
    slots.store(kept.sha256, source)
    slots.apply(Assign(kept, 1))
    (tmp_path / "slots.json.tmp").write_bytes(b"half a write")
    stray = slots.package_path("0" * 64)
    stray.write_bytes(b"nobody names me")
    (slots.downloads / f"{'1' * 64}.part").write_bytes(b"old download")
    reopened = Slots(tmp_path)
    assert sorted(p.name for p in reopened.packages.iterdir()) == [f"{kept.sha256}.pkg"]
    assert not (tmp_path / "slots.json.tmp").exists()
    assert list(reopened.downloads.iterdir()) == []


def test_slots_boot_falls_back_when_the_active_package_was_damaged(tmp_path: Path) -> None:
    slots = Slots(tmp_path)
    old, new = stored(slots, b"old package"), stored(slots, b"new package")
    state = SlotState(state="committed", active=new, previous=old)
    (tmp_path / SLOTS_FILE).write_bytes(state.to_bytes())
    slots.package_path(new.sha256).write_bytes(b"new pack")  # a torn write
    reopened = Slots(tmp_path)
    assert (reopened.state.active, reopened.state.previous) == (old, None)
    assert reopened.boot_notes
    assert SlotState.from_bytes((tmp_path / SLOTS_FILE).read_bytes()) == reopened.state


def test_an_unreadable_slot_file_is_refused_not_guessed(tmp_path: Path) -> None:
    (tmp_path / SLOTS_FILE).write_bytes(b"{not json")
    with pytest.raises(StateCorrupt):
        Slots(tmp_path)


def test_an_illegal_step_writes_nothing(tmp_path: Path) -> None:
    slots = Slots(tmp_path)
    slots.apply(Assign(entry(1, b"one"), 1))
    before = (tmp_path / SLOTS_FILE).read_bytes()
    with pytest.raises(IllegalTransition):
        slots.apply(Commit())
    assert (tmp_path / SLOTS_FILE).read_bytes() == before
