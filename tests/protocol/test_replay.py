"""The replay window and the freshness window."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.errors import Replayed, Stale
from protocol.replay import WIDTH, Freshness, SeqWindow


def accept_all(seqs: list[int]) -> SeqWindow:
    window = SeqWindow()
    for seq in seqs:
        if seq > window.high - WIDTH:
            window = window.accept(seq)
    return window


def test_first_frames_are_new_and_then_duplicates() -> None:
    window = accept_all([1, 2, 3])
    assert [window.check(s) for s in (1, 2, 3, 4)] == ["duplicate"] * 3 + ["new"]


def test_frame_overtaken_in_transit_is_still_accepted() -> None:
    window = accept_all([1, 3])
    assert window.check(2) == "new"
    assert window.accept(2).check(2) == "duplicate"


def test_seq_below_the_window_is_a_replay() -> None:
    window = accept_all([WIDTH + 10])
    with pytest.raises(Replayed):
        window.check(10)
    with pytest.raises(Replayed):
        window.accept(10)
    assert window.check(11) == "new"


@pytest.mark.parametrize("seq", [0, -1])
def test_non_positive_seq_is_refused(seq: int) -> None:
    with pytest.raises(Replayed):
        SeqWindow().check(seq)


def test_a_jump_beyond_the_width_forgets_the_old_window() -> None:
    window = accept_all([1, 2, 3 * WIDTH])
    assert window.mask == 1
    assert window.check(3 * WIDTH - 1) == "new"


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(1, 3 * WIDTH), max_size=60))
def test_window_agrees_with_a_set_within_its_width(seqs: list[int]) -> None:
    window, seen = SeqWindow(), set()
    for seq in seqs:
        if seq <= window.high - WIDTH:
            with pytest.raises(Replayed):
                window.check(seq)
            continue
        verdict = window.check(seq)
        assert verdict == ("duplicate" if seq in seen else "new")
        window = window.accept(seq)
        seen.add(seq)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(1, 10 * WIDTH), max_size=40))
def test_window_survives_storage(seqs: list[int]) -> None:
    window = accept_all(seqs)
    assert SeqWindow.from_bytes(window.to_bytes()) == window


NOW = 1_795_000_000_000


@pytest.mark.parametrize(
    "sent_at",
    [
        pytest.param(NOW, id="now"),
        pytest.param(NOW - 2 * 3600 * 1000, id="two-hours-behind"),
        pytest.param(NOW + 2 * 3600 * 1000, id="two-hours-ahead"),
        pytest.param(NOW - 6 * 24 * 3600 * 1000, id="outbox-drained-after-six-days"),
    ],
)
def test_freshness_tolerates_skew_and_outages(sent_at: int) -> None:
    Freshness().check(sent_at, NOW)


@pytest.mark.parametrize(
    "sent_at",
    [
        pytest.param(NOW - 8 * 24 * 3600 * 1000, id="eight-days-old"),
        pytest.param(NOW + 2 * 24 * 3600 * 1000, id="two-days-ahead"),
        pytest.param(0, id="epoch"),
    ],
)
def test_stale_timestamps_are_refused(sent_at: int) -> None:
    with pytest.raises(Stale):
        Freshness().check(sent_at, NOW)
