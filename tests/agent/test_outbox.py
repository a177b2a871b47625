"""The outbox on real SQLite files: seqs, identical resends, settlement, drops, windows."""

from __future__ import annotations

import logging
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.errors import OutboxError
from agent.identity import Identity
from agent.outbox import Outbox, OutboxLimits
from protocol import frame
from protocol.errors import Oversize
from protocol.frame import Limits
from protocol.messages import (
    DataDelta,
    DeltaUpload,
    FetchRequest,
    HubAck,
    ModelRef,
    StateReport,
    Telemetry,
)
from protocol.replay import WIDTH

NOW = 1_790_000_000_000
MODEL = ModelRef("m", 1, "a" * 64)


def state() -> StateReport:
    return StateReport(active=MODEL)


def telemetry() -> Telemetry:
    return Telemetry(uptime_s=1.0)


def delta(size: int = 8) -> DeltaUpload:
    return DeltaUpload(MODEL, 10, "accuracy", 0.5, 0.6, 1.0, tensors=b"\0" * size)


def data() -> DataDelta:
    return DataDelta(window_start=0, window_end=1, features=())


@pytest.fixture
def identity() -> Identity:
    return Identity("dev-1", Ed25519PrivateKey.generate())


@pytest.fixture
def open_outbox(tmp_path: Path, identity: Identity):
    opened: list[Outbox] = []

    def make(limits: OutboxLimits | None = None, **kwargs) -> Outbox:
        box = Outbox(tmp_path / "outbox.db", identity, limits, **kwargs)
        opened.append(box)
        return box

    yield make
    for box in opened:
        box.close()


def kinds(box: Outbox) -> list[tuple[int, str]]:
    return [(s.seq, s.kind) for s in box.due(NOW, limit=10_000)]


def test_outbox_seqs_are_consecutive_and_survive_reopen(open_outbox) -> None:
    box = open_outbox()
    assert [box.enqueue(state(), NOW) for _ in range(3)] == [1, 2, 3]
    box.close()
    reopened = open_outbox()
    assert reopened.enqueue(state(), NOW) == 4
    assert reopened.stats().depth == 4


def test_outbox_frame_is_signed_by_the_device_with_its_seq_and_enqueue_time(
    open_outbox, identity: Identity
) -> None:
    box = open_outbox()
    seq = box.enqueue(telemetry(), NOW)
    (sealed,) = box.due(NOW)
    envelope = frame.decode(sealed.frame, identity.public, expect_kind="up.telemetry")
    assert (envelope.header.seq, envelope.header.sent_at) == (seq, NOW)
    assert envelope.header.device_id == "dev-1"
    assert envelope.message == telemetry()


def test_outbox_resends_identical_bytes_after_the_ack_timeout(open_outbox) -> None:
    box = open_outbox(OutboxLimits(ack_timeout_ms=1000))
    box.enqueue(delta(), NOW)
    (first,) = box.due(NOW)
    box.mark_sent(first.seq, NOW)
    assert box.due(NOW + 999) == []
    (again,) = box.due(NOW + 1000)
    assert again == first


def test_outbox_resend_timeout_doubles_up_to_eight_ack_timeouts(open_outbox) -> None:
    box = open_outbox(OutboxLimits(ack_timeout_ms=1000))
    box.enqueue(delta(), NOW)
    now, waits = NOW, []
    for _ in range(6):
        (sealed,) = box.due(now)
        box.mark_sent(sealed.seq, now)
        wait = next(w for w in range(0, 100_000, 500) if box.due(now + w))
        waits.append(wait)
        now += wait
    assert waits == [1000, 2000, 4000, 8000, 8000, 8000]


def test_outbox_settles_committed_ranges_and_refused_seqs(open_outbox, caplog) -> None:
    box = open_outbox()
    for _ in range(6):
        box.enqueue(state(), NOW)
    with caplog.at_level(logging.WARNING, logger="agent.outbox"):
        settled = box.settle(HubAck(committed=((1, 2), (4, 4)), refused=((5, "stale"),)))
    assert settled.committed == ((1, "state"), (2, "state"), (4, "state"))
    assert settled.refused == ((5, "state", "stale"),)
    assert [seq for seq, _ in kinds(box)] == [3, 6]
    assert box.stats().refused == 1
    assert "seq 5: stale" in caplog.text


def test_outbox_ignores_acks_for_seqs_it_does_not_hold(open_outbox) -> None:
    box = open_outbox()
    box.enqueue(state(), NOW)
    settled = box.settle(HubAck(committed=((7, 9),), refused=((12, "stale"),)))
    assert settled.committed == settled.refused == ()
    assert box.stats().depth == 1


def test_outbox_keeps_sent_frames_until_the_hub_acks_them(open_outbox) -> None:
    box = open_outbox()
    box.enqueue(delta(), NOW)
    (sealed,) = box.due(NOW)
    box.mark_sent(sealed.seq, NOW)
    box.close()
    reopened = open_outbox()
    assert reopened.due(NOW) == [sealed]


def test_outbox_keeps_deltas_when_dropping_telemetry(open_outbox) -> None:
    box = open_outbox(OutboxLimits(max_messages=4))
    box.enqueue(telemetry(), NOW)  # 1
    box.enqueue(delta(), NOW)  # 2
    box.enqueue(telemetry(), NOW)  # 3
    box.enqueue(state(), NOW)  # 4
    box.enqueue(delta(), NOW)  # 5: over the soft bound, telemetry 1 goes
    box.enqueue(delta(), NOW)  # 6: telemetry 3 goes
    assert kinds(box) == [(2, "delta"), (4, "state"), (5, "delta"), (6, "delta")]
    assert box.stats().dropped == 2


def test_outbox_drops_data_windows_only_after_all_telemetry(open_outbox) -> None:
    box = open_outbox(OutboxLimits(max_messages=3))
    box.enqueue(data(), NOW)  # 1
    box.enqueue(telemetry(), NOW)  # 2
    box.enqueue(data(), NOW)  # 3
    box.enqueue(state(), NOW)  # 4: telemetry 2 goes, though data 1 is older
    box.enqueue(state(), NOW)  # 5: now the oldest data window goes
    assert kinds(box) == [(3, "data"), (4, "state"), (5, "state")]


def test_outbox_drops_the_oldest_of_any_kind_past_the_hard_cap(open_outbox) -> None:
    box = open_outbox(OutboxLimits(max_messages=2))
    for _ in range(5):
        box.enqueue(delta(), NOW)
    assert [seq for seq, _ in kinds(box)] == [2, 3, 4, 5]
    assert box.stats().dropped == 1


def test_outbox_bound_in_bytes_drops_telemetry_first(open_outbox) -> None:
    box = open_outbox(OutboxLimits(max_bytes=3000))
    box.enqueue(telemetry(), NOW)
    box.enqueue(delta(1500), NOW)
    box.enqueue(delta(1500), NOW)
    assert [kind for _, kind in kinds(box)] == ["delta", "delta"]
    assert box.stats().dropped == 1


def test_outbox_drop_counter_persists_and_the_flag_is_taken_once(open_outbox) -> None:
    box = open_outbox(OutboxLimits(max_messages=1))
    assert not box.take_drop_flag()
    box.enqueue(telemetry(), NOW)
    box.enqueue(telemetry(), NOW)
    box.close()
    reopened = open_outbox(OutboxLimits(max_messages=1))
    assert reopened.stats().dropped == 1
    assert reopened.take_drop_flag()
    assert not reopened.take_drop_flag()


def test_outbox_caps_frames_in_flight(open_outbox) -> None:
    box = open_outbox(OutboxLimits(max_in_flight=3))
    for _ in range(5):
        box.enqueue(state(), NOW)
    batch = box.due(NOW)
    assert [s.seq for s in batch] == [1, 2, 3]
    for sealed in batch:
        box.mark_sent(sealed.seq, NOW)
    assert box.due(NOW) == []
    box.settle(HubAck(committed=((1, 1),)))
    assert [s.seq for s in box.due(NOW)] == [4]


def test_outbox_sends_only_within_half_the_replay_window_of_the_oldest(
    open_outbox, tmp_path: Path
) -> None:
    box = open_outbox()
    box.enqueue(state(), NOW)  # seq 1 stays unsettled
    with sqlite3.connect(tmp_path / "outbox.db") as conn:  # skip 3000 enqueues
        conn.execute("UPDATE outbox_meta SET value = ? WHERE key = 'next_seq'", [WIDTH // 2])
    box.enqueue(state(), NOW)  # seq WIDTH/2 - 1 ahead of seq 1: still sendable
    box.enqueue(state(), NOW)  # seq WIDTH/2 + 1: too far ahead of seq 1
    assert [s.seq for s in box.due(NOW)] == [1, WIDTH // 2]
    box.settle(HubAck(committed=((1, 1),)))
    assert [s.seq for s in box.due(NOW)] == [WIDTH // 2, WIDTH // 2 + 1]


def test_outbox_rewind_makes_frames_sent_on_an_earlier_connection_due_again(
    open_outbox,
) -> None:
    box = open_outbox()
    box.enqueue(state(), NOW)
    box.enqueue(state(), NOW)
    old, new = box.due(NOW)
    box.mark_sent(old.seq, NOW, connection=1)
    box.mark_sent(new.seq, NOW, connection=2)  # sent on the new one before its news came
    box.rewind(before_connection=2)
    assert box.due(NOW) == [old]
    box.mark_sent(old.seq, NOW, connection=2)
    assert box.due(NOW) == []
    box.rewind(before_connection=3)  # the hub's resend nudge: this connection's too
    assert box.due(NOW) == [old, new]


def test_outbox_refuses_transient_fetch_which_seal_signs_with_a_fresh_seq(
    open_outbox, identity: Identity
) -> None:
    box = open_outbox()
    fetch = FetchRequest("b" * 64, 0, 1024)
    with pytest.raises(OutboxError):
        box.enqueue(fetch, NOW)
    box.enqueue(state(), NOW)
    sealed = box.seal(fetch, NOW)
    assert (sealed.seq, sealed.kind) == (2, "fetch")
    assert frame.decode(sealed.frame, identity.public).message == fetch
    assert box.stats().depth == 1
    assert box.enqueue(state(), NOW) == 3


def test_outbox_oversize_message_leaves_no_row_and_no_gap(open_outbox) -> None:
    box = open_outbox(frame_limits=Limits(max_frame_bytes=2048))
    with pytest.raises(Oversize):
        box.enqueue(delta(4096), NOW)
    assert box.stats().depth == 0
    assert box.enqueue(state(), NOW) == 1


CHILD = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from agent.identity import Identity
    from agent.outbox import Outbox
    from protocol.messages import StateReport

    box = Outbox(Path(sys.argv[1]), Identity("dev-1", Ed25519PrivateKey.generate()))
    while True:
        print(box.enqueue(StateReport(active=None), 1), flush=True)
    """
)


def test_outbox_loses_nothing_enqueued_when_killed_mid_write(open_outbox, tmp_path: Path) -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(tmp_path / "outbox.db")],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    returned = [int(child.stdout.readline()) for _ in range(200)]
    child.send_signal(signal.SIGKILL)
    child.wait()
    box = open_outbox()
    stored = [s.seq for s in box.due(NOW, limit=100_000)]
    assert set(returned) <= set(stored)
    assert stored == list(range(1, len(stored) + 1))
    assert box.enqueue(state(), NOW) == len(stored) + 1


def test_outbox_does_not_count_a_frame_acked_before_it_was_marked_sent(open_outbox) -> None:
    box = open_outbox(OutboxLimits(max_in_flight=1))
    box.enqueue(state(), NOW)
    box.enqueue(state(), NOW)
    (first,) = box.due(NOW)
    box.settle(HubAck(committed=((1, 1),)))  # the hub's ack overtook the publish call
    box.mark_sent(first.seq, NOW)
    assert box.stats().in_flight == 0
    assert [s.seq for s in box.due(NOW)] == [2]
