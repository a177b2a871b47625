"""The downlink: signed with the rollout key, time-ordered seqs that never collide between
publishers nor run ahead of one another, silent towards revoked devices; HubAck range
building."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from hub.fleet import enrollment
from hub.metrics import sample
from hub.store import Store
from hub.store.sqlite import SqliteStore
from hub.transport.downlink import MAX_ACK_ENTRIES, Downlink, hub_acks, seq_ranges
from protocol import frame
from protocol.errors import BadSignature, Malformed
from protocol.messages import HubAck, Nudge, Telemetry
from protocol.replay import DOWNLINK_SEQ_SHIFT
from protocol.topics import Topics
from tests.clock import FakeClock
from tests.hub.hubsim import RecordingPublisher

TOPICS = Topics("sim/ef")


@pytest.fixture
def store(tmp_path: Path) -> Store:
    store: Store = SqliteStore.open(tmp_path / "hub.db")
    for device in ("dev-1", "dev-2"):
        enrollment.preauthorize(store, device, "00" * 32, by="cli", now_ms=0)
    return store


def make(
    store: Store,
    key: Ed25519PrivateKey,
    publisher: RecordingPublisher,
    clock: FakeClock | None = None,
) -> Downlink:
    return Downlink(store, publisher, TOPICS, key, clock or FakeClock())


def test_frames_are_signed_with_the_rollout_key_and_addressed_to_the_device(
    store: Store,
) -> None:
    key, publisher = Ed25519PrivateKey.generate(), RecordingPublisher()
    downlink = make(store, key, publisher)

    seq = downlink.send("dev-1", Nudge("state"))

    [(topic, payload, retain)] = publisher.sent
    assert (topic, retain) == (TOPICS.down("dev-1", "nudge"), False)
    envelope = frame.decode(payload, key.public_key(), expect_kind="down.nudge")
    assert (envelope.header.device_id, envelope.header.seq) == ("dev-1", seq)
    assert envelope.message == Nudge("state")
    with pytest.raises(BadSignature):
        frame.decode(payload, Ed25519PrivateKey.generate().public_key())


def test_seqs_increase_within_a_process_and_carry_its_clock(store: Store) -> None:
    clock = FakeClock()
    downlink = make(store, Ed25519PrivateKey.generate(), RecordingPublisher(), clock)
    burst = [downlink.send("dev-1", Nudge("state")) for _ in range(300)]  # > 256 in one ms
    clock.advance(0.005)
    later = downlink.send("dev-2", Nudge("state"))

    seqs = [seq for seq in (*burst, later) if seq is not None]
    assert seqs == sorted(set(seqs))
    assert len(seqs) == 301
    assert burst[0] is not None
    assert burst[0] >> DOWNLINK_SEQ_SHIFT == clock.now_ms() - 5
    assert later is not None
    assert later >> DOWNLINK_SEQ_SHIFT == clock.now_ms()


def test_publishers_on_one_store_never_collide_nor_run_ahead_of_each_other(
    store: Store,
) -> None:
    """Five `rollout set --broker` runs beside a running hub once pushed a device's window
    past the hub's seqs: each reserved 1,000 seqs from a shared counter."""
    clock, key = FakeClock(), Ed25519PrivateKey.generate()
    hub = make(store, key, RecordingPublisher(), clock)
    hub_seqs = [hub.send("dev-1", Nudge("state")) for _ in range(3)]
    cli_seqs = []
    for _ in range(5):
        cli = make(store, key, RecordingPublisher(), clock)  # a CLI run: a publisher of its own
        cli_seqs += [cli.send("dev-1", Nudge("desired")) for _ in range(3)]
    after = [hub.send("dev-1", Nudge("state")) for _ in range(3)]

    every = [seq for seq in (*hub_seqs, *cli_seqs, *after) if seq is not None]
    assert len(set(every)) == 21  # no collision: each publisher has its own slot
    assert {seq >> DOWNLINK_SEQ_SHIFT for seq in every} == {clock.now_ms()}  # same ms


def test_nothing_is_published_to_revoked_or_unknown_devices(store: Store) -> None:
    publisher = RecordingPublisher()
    downlink = make(store, Ed25519PrivateKey.generate(), publisher)
    enrollment.revoke(store, "dev-2", by="cli", now_ms=0)
    dropped = sample("edgefleet_hub_downlink_dropped_total", {"reason": "revoked"})

    assert downlink.send("dev-2", Nudge("desired")) is None
    assert downlink.ack("dev-2", [1, 2]) == []
    assert downlink.send("ghost", Nudge("desired")) is None
    assert publisher.sent == []
    assert sample("edgefleet_hub_downlink_dropped_total", {"reason": "revoked"}) == dropped + 2


def test_send_reports_a_link_that_is_down(store: Store) -> None:
    publisher = RecordingPublisher()
    publisher.up = False
    downlink = make(store, Ed25519PrivateKey.generate(), publisher)

    assert downlink.send("dev-1", Nudge("state")) is None


def test_uplink_messages_cannot_be_sent_down(store: Store) -> None:
    downlink = make(store, Ed25519PrivateKey.generate(), RecordingPublisher())
    with pytest.raises(Malformed):
        downlink.send("dev-1", Telemetry(uptime_s=1))


def test_retained_frames_are_published_retained(store: Store) -> None:
    publisher = RecordingPublisher()
    make(store, Ed25519PrivateKey.generate(), publisher).send(
        "dev-1", Nudge("desired"), retain=True
    )
    assert publisher.sent[0][2] is True


def test_ack_settles_committed_and_refused_seqs(store: Store) -> None:
    key, publisher = Ed25519PrivateKey.generate(), RecordingPublisher()
    downlink = make(store, key, publisher)

    downlink.ack("dev-1", [3, 1, 2, 7, 2], [(9, "stale")])

    [(_, payload, _)] = publisher.sent
    assert frame.decode(payload, key.public_key()).message == HubAck(
        committed=((1, 3), (7, 7)), refused=((9, "stale"),)
    )


def test_seq_ranges_cover_exactly_the_seqs() -> None:
    assert seq_ranges([5, 1, 2, 3, 5, 9]) == ((1, 3), (5, 5), (9, 9))
    assert seq_ranges([]) == ()


def test_large_acks_are_split_within_hubacks_limit() -> None:
    committed = range(1, 2 * (MAX_ACK_ENTRIES + 10), 2)  # no two adjacent: one range each
    refused = [(2, "stale"), (4, "invalid")]

    acks = hub_acks(committed, refused)

    assert len(acks) == 2
    assert all(len(a.committed) + len(a.refused) <= MAX_ACK_ENTRIES for a in acks)
    assert sum(len(a.committed) for a in acks) == len(committed)
    assert [r for a in acks for r in a.refused] == refused
    assert hub_acks([], []) == []
