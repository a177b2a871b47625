"""FedBuff's buffer: staleness at arrival, a flush every K, rebasing onto a new version."""

from __future__ import annotations

import pytest

from hub.rounds.buffered import Buffer, BufferPolicy, Flush, Hold, plan_flush, rebase
from hub.rounds.errors import InvalidPolicy
from hub.rounds.weighting import Submission

POLICY = BufferPolicy(size=3, max_staleness=2)


def sub(device: str, base: int) -> Submission:
    return Submission(f"{device}:1", device, base, 100, 1.0)


def test_deltas_join_with_their_staleness_against_the_current_version() -> None:
    buffer = Buffer("kws", 5).add(sub("a", 5)).add(sub("b", 3))
    assert [(s.device_id, s.staleness) for s in buffer.entries] == [("a", 0), ("b", 2)]
    assert buffer.devices == {"a", "b"}
    assert buffer.slot().devices == {"a", "b"}
    assert buffer.slot().round_id is None


def test_the_buffer_holds_until_k_deltas_then_flushes_into_the_next_version() -> None:
    buffer = Buffer("kws", 5).add(sub("a", 5)).add(sub("b", 4))
    assert plan_flush(buffer, POLICY) == Hold(1)
    flush = plan_flush(buffer.add(sub("c", 5)), POLICY)
    assert isinstance(flush, Flush)
    assert [s.device_id for s in flush.entries] == ["a", "b", "c"]
    assert flush.next_version == 6
    assert flush.buffer == Buffer("kws", 6, (), flushes=1)


def test_a_device_already_in_the_buffer_cannot_join_twice() -> None:
    with pytest.raises(ValueError, match="already"):
        Buffer("kws", 5).add(sub("a", 5)).add(sub("a", 5))


def test_rebasing_recomputes_staleness_and_drops_the_too_stale() -> None:
    buffer = Buffer("kws", 5).add(sub("a", 5)).add(sub("b", 3))
    moved, dropped = rebase(buffer, 6, POLICY)
    assert [(s.device_id, s.staleness) for s in moved.entries] == [("a", 1)]
    assert [(s.device_id, s.staleness) for s in dropped] == [("b", 3)]
    assert moved.current_version == 6


def test_a_delta_from_the_future_is_a_callers_bug() -> None:
    with pytest.raises(ValueError, match="newer"):
        Buffer("kws", 5).add(sub("a", 6))


@pytest.mark.parametrize(("size", "max_staleness"), [(0, 1), (1, -1)])
def test_impossible_buffers_are_refused(size: int, max_staleness: int) -> None:
    with pytest.raises(InvalidPolicy):
        BufferPolicy(size, max_staleness)
