"""The downlink guard: what it refuses, what it deduplicates, and that refusals change nothing."""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from agent.downlink import Downlink, Inbox, WindowStore
from agent.transport import Inbound
from protocol import frame
from protocol.frame import Envelope, Message
from protocol.messages import Chunk, HubAck, Nudge, StateReport
from protocol.replay import DOWNLINK_REACH_MS, downlink_seq
from protocol.topics import Topics

NOW = 1_790_000_000_000
SEQ = downlink_seq(NOW, 0)  # the hub's seqs are time-ordered
OLD = downlink_seq(NOW - DOWNLINK_REACH_MS - 1, 0)  # beyond the window's reach
TOPICS = Topics("t")
HUB = Ed25519PrivateKey.generate()
OTHER = Ed25519PrivateKey.generate()
ACK = HubAck(committed=((1, 3),))


def down(
    message: Message, seq: int, *, key: Ed25519PrivateKey = HUB, device: str = "dev-1"
) -> bytes:
    return frame.encode(
        message, device_id=device, seq=seq, sent_at=NOW, nonce=os.urandom(16), key=key
    )


class Recorder:
    def __init__(self) -> None:
        self.seen: list[Envelope] = []

    def __call__(self, envelope: Envelope) -> None:
        self.seen.append(envelope)


@pytest.fixture
def store(tmp_path: Path):
    opened = [WindowStore(tmp_path / "agent.db")]
    yield opened[0]
    opened[0].close()


def guard(store: WindowStore) -> Downlink:
    keys = [HUB.public_key()]
    return Downlink(
        device_id="dev-1", topics=TOPICS, rollout_keys=lambda: keys, store=store, now_ms=lambda: NOW
    )


def test_downlink_runs_handlers_for_a_verified_new_frame(store: WindowStore) -> None:
    link, acks = guard(store), Recorder()
    link.register("ack", acks)
    assert link.dispatch(TOPICS.down("dev-1", "ack"), down(ACK, 1)) == "accepted"
    assert [e.message for e in acks.seen] == [ACK]
    assert link.counters() == {"accepted": 1}


def test_downlink_treats_a_redelivered_frame_as_a_no_op_duplicate(store: WindowStore) -> None:
    link, acks = guard(store), Recorder()
    link.register("ack", acks)
    data = down(ACK, 1)
    link.dispatch(TOPICS.down("dev-1", "ack"), data)
    assert link.dispatch(TOPICS.down("dev-1", "ack"), data, retained=True) == "duplicate"
    assert len(acks.seen) == 1


def test_downlink_remembers_accepted_seqs_across_restarts(tmp_path: Path) -> None:
    first = WindowStore(tmp_path / "agent.db")
    guard(first).dispatch(TOPICS.down("dev-1", "ack"), down(ACK, 7))
    first.close()
    second = WindowStore(tmp_path / "agent.db")
    try:
        assert guard(second).dispatch(TOPICS.down("dev-1", "ack"), down(ACK, 7)) == "duplicate"
    finally:
        second.close()


OURS, NUDGE = TOPICS.down("dev-1", "ack"), TOPICS.down("dev-1", "nudge")
BAD_FRAMES = [
    pytest.param(OURS, down(ACK, 9, key=OTHER), "bad_signature", id="unknown-key"),
    pytest.param(NUDGE, down(ACK, 9), "wrong_type", id="kind-vs-topic"),
    pytest.param(OURS, down(ACK, 9, device="dev-2"), "identity_mismatch", id="other-header"),
    pytest.param(
        TOPICS.down("dev-2", "ack"), down(ACK, 9, device="dev-2"), "identity_mismatch",
        id="other-topic",
    ),
    pytest.param(
        TOPICS.up("dev-1", "state"), down(StateReport(active=None), 9), "identity_mismatch",
        id="uplink-topic",
    ),
    pytest.param(OURS, b"", "malformed", id="empty"),
    pytest.param(OURS, b"EF\x09" + bytes(80), "unknown_version", id="version"),
    pytest.param(OURS, b"EF" + bytes(300_000), "oversize", id="oversize"),
    pytest.param("elsewhere/v1/d/dev-1/down/ack", down(ACK, 9), "malformed", id="foreign-topic"),
    pytest.param(OURS, down(ACK, OLD), "replay", id="below-window"),
    pytest.param(OURS, down(ACK, 2**62), "seq_ahead", id="stamped-in-the-future"),
]  # fmt: skip


@pytest.mark.parametrize(("topic", "payload", "reason"), BAD_FRAMES)
def test_downlink_refuses_bad_frames_without_changing_anything(
    store: WindowStore, topic: str, payload: bytes, reason: str
) -> None:
    link, acks = guard(store), Recorder()
    link.register("ack", acks)
    link.register("nudge", acks)
    link.dispatch(TOPICS.down("dev-1", "ack"), down(ACK, SEQ))
    before = store.load()
    assert link.dispatch(topic, payload) == "refused"
    assert store.load() == before
    assert len(acks.seen) == 1
    assert link.counters()[f"refused.{reason}"] == 1


def test_downlink_logs_the_reason_but_never_the_payload(store: WindowStore, caplog) -> None:
    header = (
        b'{"body_sha256":"' + b"0" * 64 + b'","device_id":"dev-1","kind":"s3cret-token",'
        b'"msg":{},"nonce":"' + b"0" * 32 + b'","sent_at":1,"seq":1}'
    )
    payload = b"EF\x01" + len(header).to_bytes(4, "big") + header + bytes(64)
    with caplog.at_level(logging.DEBUG, logger="agent.downlink"):
        verdict = guard(store).dispatch(TOPICS.down("dev-1", "ack"), payload)
    assert verdict == "refused"
    assert "malformed" in caplog.text
    assert "s3cret" not in caplog.text


def test_downlink_reports_stale_retained_replays_below_warning(store: WindowStore, caplog) -> None:
    link = guard(store)
    link.dispatch(TOPICS.down("dev-1", "ack"), down(ACK, SEQ))
    with caplog.at_level(logging.INFO, logger="agent.downlink"):
        verdict = link.dispatch(
            TOPICS.down("dev-1", "nudge"), down(Nudge("state"), OLD), retained=True
        )
    assert verdict == "refused"
    assert [r.levelno for r in caplog.records] == [logging.INFO]


def test_downlink_redelivers_a_frame_whose_handler_failed(store: WindowStore) -> None:
    link, calls = guard(store), []

    def flaky(envelope: Envelope) -> None:
        calls.append(envelope.header.seq)
        if len(calls) == 1:
            raise RuntimeError("disk full")

    link.register("ack", flaky)
    data = down(ACK, 3)
    assert link.dispatch(TOPICS.down("dev-1", "ack"), data) == "failed"
    assert link.dispatch(TOPICS.down("dev-1", "ack"), data) == "accepted"
    assert calls == [3, 3]


def test_downlink_verifies_with_the_keys_current_at_dispatch(store: WindowStore) -> None:
    keys = [OTHER.public_key()]
    link = Downlink(device_id="dev-1", topics=TOPICS, rollout_keys=lambda: keys, store=store)
    assert link.dispatch(TOPICS.down("dev-1", "ack"), down(ACK, 1)) == "refused"
    keys.append(HUB.public_key())
    assert link.dispatch(TOPICS.down("dev-1", "ack"), down(ACK, 1)) == "accepted"


def test_downlink_passes_fleet_documents_raw_to_their_handlers(store: WindowStore) -> None:
    link, seen = guard(store), list[bytes]()
    link.register_fleet("heartbeat", seen.append)
    assert link.dispatch(TOPICS.fleet("heartbeat"), b'{"doc": 1}', retained=True) == "accepted"
    assert link.dispatch(TOPICS.fleet("release"), b"{}") == "ignored"
    assert seen == [b'{"doc": 1}']


def test_downlink_refuses_to_register_unknown_kinds(store: WindowStore) -> None:
    link = guard(store)
    with pytest.raises(ValueError, match="downlink kind"):
        link.register("delta", Recorder())
    with pytest.raises(ValueError, match="fleet kind"):
        link.register_fleet("desired", lambda raw: None)


def test_downlink_survives_a_key_source_that_raises_and_handles_the_next_frame(
    store: WindowStore, caplog: pytest.LogCaptureFixture
) -> None:
    calls: list[int] = []

    def keys() -> list[Ed25519PublicKey]:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("trusted state unreadable")
        return [HUB.public_key()]

    link = Downlink(device_id="dev-1", topics=TOPICS, rollout_keys=keys, store=store)
    seen = Recorder()
    link.register("chunk", seen)
    secret = b"s3cret-bytes"
    chunk = Chunk("a" * 64, 0, len(secret), hashlib.sha256(secret).hexdigest(), secret)
    topic = TOPICS.down("dev-1", "chunk")
    with caplog.at_level(logging.DEBUG, logger="agent.downlink"):
        assert link.dispatch(topic, down(chunk, 1)) == "failed"
    assert link.dispatch(topic, down(chunk, 2)) == "accepted"
    assert [e.header.seq for e in seen.seen] == [2]
    assert link.counters() == {"failed": 1, "accepted": 1}
    assert "chunk" in caplog.text
    assert "s3cret" not in caplog.text


def test_downlink_counts_a_frame_whose_seq_cannot_be_recorded_as_failed(tmp_path: Path) -> None:
    store = WindowStore(tmp_path / "agent.db")
    link, acks = guard(store), Recorder()
    link.register("ack", acks)
    store.close()  # the window can no longer be saved
    assert link.dispatch(TOPICS.down("dev-1", "ack"), down(ACK, 1)) == "failed"
    assert len(acks.seen) == 1
    assert link.counters() == {"failed": 1}


def test_a_stolen_key_strands_the_downlink_until_a_rotation_starts_a_fresh_window(
    store: WindowStore, caplog: pytest.LogCaptureFixture
) -> None:
    """The attack of issue 9 item 1 at the guard: the thief stamps the furthest seq the
    window lets through (a day ahead); the hub's own frames are then refused, the device
    says so, and a rotated rollout key (a new epoch) brings the hub back at once."""
    keys, now = [HUB.public_key()], [NOW]
    link = Downlink(
        device_id="dev-1", topics=TOPICS, rollout_keys=lambda: tuple(keys), store=store,
        now_ms=lambda: now[0],
    )  # fmt: skip
    topic = TOPICS.down("dev-1", "ack")
    assert link.dispatch(topic, down(ACK, downlink_seq(NOW, 1))) == "accepted"
    assert link.dispatch(topic, down(ACK, 2**62)) == "refused"  # further than a day: never
    assert link.dispatch(topic, down(ACK, downlink_seq(NOW + 86_400_000, 0))) == "accepted"

    with caplog.at_level(logging.ERROR, logger="agent.downlink"):
        verdicts = [link.dispatch(topic, down(ACK, downlink_seq(NOW + i, 2))) for i in (1, 2, 3)]
    assert verdicts == ["refused"] * 3
    problem = link.problem()
    assert problem is not None
    assert problem.startswith("downlink_refused: 3 hub frames")
    assert "cannot hear the hub" in caplog.text

    new_hub = Ed25519PrivateKey.generate()
    keys[:] = [new_hub.public_key()]  # root v2 rotated the rollout key
    assert link.dispatch(topic, down(ACK, downlink_seq(NOW + 4, 2), key=new_hub)) == "accepted"
    assert link.problem() is None
    assert store.load().high == downlink_seq(NOW + 4, 2)


def test_a_flood_of_junk_frames_is_summarised_not_logged_frame_by_frame(
    store: WindowStore, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 9 item 8: 20,000 junk frames once wrote 16,648 warning lines."""
    now = [NOW]
    keys = [HUB.public_key()]
    link = Downlink(
        device_id="dev-1", topics=TOPICS, rollout_keys=lambda: keys, store=store,
        now_ms=lambda: now[0], log_every_s=60,
    )  # fmt: skip
    forged = down(ACK, SEQ, key=OTHER)
    with caplog.at_level(logging.DEBUG, logger="agent.downlink"):
        for i in range(20_000):
            now[0] = NOW + i * 6  # two minutes of flood
            payload = forged if i % 2 else b"junk"
            assert link.dispatch(TOPICS.down("dev-1", "ack"), payload) == "refused"
        now[0] += 60_000
        link.flush_log()
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) <= 8, lines  # per interval and reason: the first, then a count
    assert link.counters() == {"refused.bad_signature": 10_000, "refused.malformed": 10_000}
    summarised = sum(int(line.split()[1]) for line in lines if line.startswith("downlink: "))
    first = sum(1 for line in lines if "frame refused" in line)
    assert summarised + first == 20_000


def test_a_flood_beyond_the_inbox_is_discarded_with_two_log_lines_and_the_rest_kept_in_order(
    store: WindowStore, caplog: pytest.LogCaptureFixture
) -> None:
    handled = Recorder()
    link = guard(store)
    link.register("ack", handled)
    connected: list[int] = []
    inbox = Inbox(link, lambda: connected.append(1), size=4)
    frames = [down(ACK, downlink_seq(NOW, i)) for i in range(4)]
    with caplog.at_level(logging.WARNING, logger="agent.downlink"):
        for payload in frames:
            inbox.put(Inbound(TOPICS.down("dev-1", "ack"), payload, False))
        for _ in range(10_000):  # the flood, while the job is busy elsewhere
            inbox.put(Inbound(TOPICS.down("dev-1", "ack"), b"junk", False))
        inbox.dispatch()
    assert inbox.dropped == 10_000
    assert [e.header.seq for e in handled.seen] == [downlink_seq(NOW, i) for i in range(4)]
    assert [r.getMessage() for r in caplog.records] == [
        "inbound queue is full: discarding messages until it drains",
        "inbound queue was full: 10000 messages discarded",
    ]
