"""Hub replicas on one store and one Mosquitto, the uplink shared through ``$share``
(docs/scale-out.md), on SQLite (one file, replicas on one machine) and on PostgreSQL
(``database``): kill -9 of one replica mid-ingest, while devices resend every frame
until acknowledged, loses nothing and stores each frame once; every acknowledged frame was
stored before its ack; a follower takes the leader's jobs over within 15 s.

The 3-replica, 10,000-frame run is ``slow`` (``make bench``); 2 replicas and 1,000 frames
run in the default suite.
"""

from __future__ import annotations

import time
from contextlib import ExitStack
from pathlib import Path

import pytest

from hub import keyring
from hub.api import auth
from hub.context import HubContext
from hub.fleet import enrollment, rollouts
from hub.rollouts.spec import GateSpec
from hub.settings import HubSettings
from hub.store import Store
from hub.store.dialects import open_store
from hub.store.rows import TelemetryRecord
from protocol.topics import Topics
from tests.brokers import BrokerRunner
from tests.hub.rollouts_shell.live import (
    CLOCK,
    Load,
    devices,
    eventually,
    prepare,
    rollout_in_stage_2,
)
from tests.integration.replicas import Replica, Shared
from tests.integration.test_hub_ingest import ResendingPublisher, wait_until

HANDOVER_S = 15.0
SUCCESS = (GateSpec.default("update_success"),)


def stored(location: str) -> set[tuple[str, int]]:
    """(device_id, seq) of every telemetry row, read with a connection of our own."""
    store = open_store(location)
    try:
        return {(r.device_id, r.seq) for r in store.uplink.records(TelemetryRecord)}
    finally:
        store.close()


def kill_one_mid_ingest(
    broker: BrokerRunner,
    topics: Topics,
    tmp_path: Path,
    database: str,
    *,
    replicas: int,
    frames: int,
    in_flight: int,
) -> None:
    shared = Shared.create(tmp_path / "shared", database)
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
    mosquitto_broker: BrokerRunner, topics: Topics, tmp_path: Path, database: str
) -> None:
    kill_one_mid_ingest(
        mosquitto_broker, topics, tmp_path, database, replicas=2, frames=1_000, in_flight=20
    )


@pytest.mark.slow
def test_kill_9_of_one_of_three_replicas_during_10000_frames_stores_each_frame_once(
    mosquitto_broker: BrokerRunner, topics: Topics, tmp_path: Path, database: str
) -> None:
    kill_one_mid_ingest(
        mosquitto_broker, topics, tmp_path, database, replicas=3, frames=10_000, in_flight=100
    )


def assignments(store: Store, device_id: str) -> list[int]:
    """The model version of each assignment signed for ``device_id``, in order."""
    return [
        record.model_version
        for k in range(1, store.desired.next_assignment_version(device_id))
        if (record := store.desired.assignment(device_id, k)) is not None
    ]


def test_a_follower_takes_over_from_a_killed_leader_within_15_s_and_resumes_its_work(
    mosquitto_broker: BrokerRunner, tmp_path: Path, database: str
) -> None:
    data, prefix = prepare(tmp_path, database=database)  # released models: the leader heartbeats
    shared, topics = Shared(data, keyring.load(data / "keys"), database), Topics(prefix)
    with ExitStack() as stack:
        leader = stack.enter_context(Replica.start(shared, "r0", mosquitto_broker, topics))
        follower = stack.enter_context(Replica.start(shared, "r1", mosquitto_broker, topics))
        assert (leader.role(), follower.role()) == ("leader", "follower")
        store = open_store(shared.database)
        stack.callback(store.close)
        beats = store.counters.get("heartbeat_version")
        leader.kill()
        killed_at = time.monotonic()
        eventually(lambda: follower.role() == "leader", "the follower leads", HANDOVER_S)
        assert time.monotonic() - killed_at <= HANDOVER_S
        lease = store.leases.get("leader")
        assert lease is not None
        assert (lease.holder, lease.generation) == ("r1", 2)
        actors = [e.actor for e in store.audit.page(action="leader.acquired").items]
        assert actors == ["replica:r1", "replica:r0"]
        # the new leader republished from the store: a fresh heartbeat, its version drawn there
        eventually(lambda: store.counters.get("heartbeat_version") > beats, "a new heartbeat")


@pytest.mark.slow
def test_kill_9_of_the_leader_mid_rollout_hands_the_jobs_over_within_15_s(
    tmp_path: Path, mosquitto_broker: BrokerRunner, database: str
) -> None:
    data, prefix = prepare(tmp_path, database=database)
    shared = Shared(data, keyring.load(data / "keys"), database)
    topics = Topics(prefix)
    fast = ("--rollout-tick", "0.25", "--reconcile-interval", "1", "--offline-after", "30")
    with ExitStack() as stack:
        store = open_store(shared.database)
        stack.callback(store.close)
        ctx = HubContext(store, shared.ring, CLOCK, HubSettings(data_dir=data, database=database))
        leader = stack.enter_context(Replica.start(shared, "r0", mosquitto_broker, topics, *fast))
        follower = stack.enter_context(Replica.start(shared, "r1", mosquitto_broker, topics, *fast))
        assert (leader.role(), follower.role()) == ("leader", "follower")
        fleet = stack.enter_context(devices(ctx, tmp_path, mosquitto_broker.url, prefix, 10))
        load = Load(fleet.devices)
        load.start()
        stack.callback(load.stop)
        rollout_id = rollout_in_stage_2(ctx)
        leader.kill()
        killed_at = time.monotonic()
        assert 0 < len(store.rollouts.progress(rollout_id)) < 10
        eventually(lambda: follower.role() == "leader", "the follower leads", HANDOVER_S)
        assert time.monotonic() - killed_at <= HANDOVER_S
        [taken] = [
            e for e in store.audit.page(action="leader.acquired").items if e.actor == "replica:r1"
        ]
        assert '"replica":"r1"' in taken.detail
        eventually(
            lambda: rollouts.get(ctx, rollout_id).rollout.phase == "completed",
            "the rollout completes under the new leader",
        )
        eventually(lambda: all(fleet.serving(d) == 2 for d in fleet.devices), "all on v2")
        for device_id in fleet.devices:
            assert assignments(store, device_id) == [1, 2], device_id
