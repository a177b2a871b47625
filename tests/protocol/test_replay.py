"""The uplink replay window, the downlink window and the freshness window."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.errors import Malformed, Replayed, SeqAhead, Stale
from protocol.replay import (
    DOWNLINK_MAX_AHEAD_MS,
    DOWNLINK_MAX_SEEN,
    DOWNLINK_REACH_MS,
    DOWNLINK_SEQ_SHIFT,
    WIDTH,
    DownlinkWindow,
    Freshness,
    SeqWindow,
    downlink_seq,
    key_epoch,
)


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


# ---------------------------------------------------------------- the downlink window

T0 = NOW
MS = 1 << DOWNLINK_SEQ_SHIFT  # one millisecond of seq space


def down(*stamps: tuple[int, int], epoch: str = "e1") -> DownlinkWindow:
    window = DownlinkWindow(epoch)
    for at, low in stamps:
        window = window.accept(downlink_seq(at, low), now_ms=T0)
    return window


def test_downlink_frames_of_two_publishers_interleave_in_any_order() -> None:
    hub, cli = downlink_seq(T0, 1), downlink_seq(T0 + 5, 2)
    window = down().accept(cli, now_ms=T0).accept(hub, now_ms=T0)
    assert window.check(hub, now_ms=T0) == window.check(cli, now_ms=T0) == "duplicate"
    assert window.high == cli


def test_downlink_frame_older_than_the_reach_is_a_replay() -> None:
    window = down((T0, 0))
    late = downlink_seq(T0 - DOWNLINK_REACH_MS - 1, 0)
    with pytest.raises(Replayed):
        window.check(late, now_ms=T0)
    assert window.check(downlink_seq(T0 - DOWNLINK_REACH_MS + 1, 0), now_ms=T0) == "new"


@pytest.mark.parametrize(
    "seq",
    [
        pytest.param(2**62, id="2^62"),
        pytest.param(downlink_seq(T0 + DOWNLINK_MAX_AHEAD_MS + 1, 0), id="a-day-and-a-ms-ahead"),
    ],
)
def test_downlink_seq_from_the_future_is_refused_and_moves_nothing(seq: int) -> None:
    window = down((T0, 0))
    with pytest.raises(SeqAhead):
        window.accept(seq, now_ms=T0)
    assert window.check(downlink_seq(T0 + 1, 0), now_ms=T0) == "new"


def test_a_stolen_keys_counter_seq_sits_below_the_hubs_time_ordered_ones() -> None:
    window = down((T0, 0))
    with pytest.raises(Replayed):
        window.check(1_002_000, now_ms=T0)


def test_a_new_key_epoch_starts_a_fresh_window() -> None:
    window = down((T0 + DOWNLINK_MAX_AHEAD_MS, 0), epoch="stolen")
    assert window.for_epoch("stolen") is window
    fresh = window.for_epoch("rotated")
    assert fresh == DownlinkWindow("rotated")
    assert fresh.check(downlink_seq(T0, 0), now_ms=T0) == "new"


def test_key_epoch_names_the_key_set_not_its_order() -> None:
    assert key_epoch(["b", "a"]) == key_epoch(["a", "b", "a"]) != key_epoch(["a"])


def test_a_full_window_forgets_its_oldest_and_refuses_below_them() -> None:
    window = down(*((T0, low) for low in range(DOWNLINK_MAX_SEEN + 5)))
    assert len(window.seen) == DOWNLINK_MAX_SEEN
    assert window.check(downlink_seq(T0, 5), now_ms=T0) == "duplicate"
    with pytest.raises(Replayed):
        window.check(downlink_seq(T0, 4), now_ms=T0)


@pytest.mark.parametrize(
    "stored",
    [
        pytest.param(SeqWindow().accept(7).to_bytes(), id="an-older-agents-window"),
        pytest.param(DownlinkWindow("e", 9, (3, 5)).to_bytes()[:-1], id="truncated"),
        pytest.param(
            DownlinkWindow("e", 9, (3, 5)).to_bytes()[:-16]
            + (5).to_bytes(8, "big")
            + (3).to_bytes(8, "big"),
            id="seen-out-of-order",
        ),
    ],
)
def test_what_is_not_a_stored_downlink_window_is_refused(stored: bytes) -> None:
    with pytest.raises(Malformed):
        DownlinkWindow.from_bytes(stored)


stamps = st.tuples(st.integers(-3 * DOWNLINK_REACH_MS, 3 * DOWNLINK_REACH_MS), st.integers(0, 3))


@settings(max_examples=200, deadline=None)
@given(st.lists(stamps, max_size=60))
def test_downlink_window_agrees_with_a_set_within_its_reach(
    seq_stamps: list[tuple[int, int]],
) -> None:
    window, seen = DownlinkWindow("e"), set()
    for offset, low in seq_stamps:
        seq = downlink_seq(T0 + offset, low)
        if seq <= window.high - DOWNLINK_REACH_MS * MS and seq not in seen:
            with pytest.raises(Replayed):
                window.check(seq, now_ms=T0)
            continue
        if seq in seen and seq <= window.floor:
            continue  # forgotten beyond the reach: a replay either way
        assert window.check(seq, now_ms=T0) == ("duplicate" if seq in seen else "new")
        window = window.accept(seq, now_ms=T0)
        seen.add(seq)


@settings(max_examples=100, deadline=None)
@given(st.lists(stamps, max_size=40), st.text("abcdef0123456789", max_size=32))
def test_downlink_window_survives_storage(seq_stamps: list[tuple[int, int]], epoch: str) -> None:
    window = DownlinkWindow(epoch)
    for offset, low in seq_stamps:
        seq = downlink_seq(T0 + offset, low)
        try:
            window = window.accept(seq, now_ms=T0)
        except Replayed:
            continue
    assert DownlinkWindow.from_bytes(window.to_bytes()) == window
