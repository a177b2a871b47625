"""The model slots on disk (agent/slots.py): every step persisted, boot repair, and a
boot that never deletes the package the record says is active."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from agent.errors import IllegalTransition, StateCorrupt
from agent.slot_table import (
    Assign,
    Check,
    Commit,
    Downloaded,
    SlotState,
    Swap,
    Verified,
    ref_of,
)
from agent.slots import SLOTS_FILE, Slots
from protocol.messages import ModelRef
from protocol.metadata import Compat, ReleaseEntry

COMPAT = Compat(opset=21, io_signature="in:x:float32[?,4];out:p:float32[?,3]")


def entry(version: int, data: bytes) -> ReleaseEntry:
    return ReleaseEntry(
        "iris", version, version, hashlib.sha256(data).hexdigest(), len(data), COMPAT
    )


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


def test_boot_recovery_never_deletes_the_package_the_record_names_active(
    tmp_path: Path,
) -> None:
    # a live agent swapped to v2 and watches it; a second process booting the same slots
    # rolls the record back (as after a crash) but must leave v2's package in place
    slots = Slots(tmp_path)
    old, new = entry(1, b"old package"), entry(2, b"new package")
    for e, data in ((old, b"old package"), (new, b"new package")):
        source = tmp_path / "incoming"
        source.write_bytes(data)
        slots.store(e.sha256, source)
    slots.apply(Assign(old, 1))
    for event in (Downloaded(), Verified(), Check(), Swap(1), Commit()):
        slots.apply(event)
    slots.apply(Assign(new, 2))
    for event in (Downloaded(), Verified(), Check(), Swap(2)):
        slots.apply(event)
    assert slots.state.active == ref_of(new)

    rebooted = Slots(tmp_path)

    assert (rebooted.state.state, rebooted.state.active) == ("rolled_back", ref_of(old))
    assert slots.package_path(new.sha256).read_bytes() == b"new package"
    rebooted.collect_garbage()  # the next install step collects it
    assert not slots.package_path(new.sha256).exists()
