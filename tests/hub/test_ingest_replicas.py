"""Two hub replicas ingesting from one store (what ``$share`` subscriptions lead to): a
device's frames reach either, resends reach the other, and still every frame is stored
once, every window update survives, and what one replica stored is a duplicate to the
other however warm its cache (hub.ingest.worker, "Replicas")."""

from __future__ import annotations

import random
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from hub.fleet import enrollment
from hub.ingest.worker import BatchResult
from hub.store.dialects import open_store
from hub.store.rows import TelemetryRecord
from protocol.messages import Telemetry
from protocol.replay import SeqWindow
from tests.hub.hubsim import HubSim, SimDevice


@pytest.fixture
def replicas(tmp_path: Path, store_url: str) -> Iterator[tuple[HubSim, HubSim]]:
    """Two ingest pipelines, each with its own connection to one store (each dialect)."""
    a = HubSim(tmp_path / "a", store=open_store(store_url))
    b = HubSim(tmp_path / "b", store=open_store(store_url))
    yield a, b
    a.store.close()
    b.store.close()


def telemetry(n: int) -> Telemetry:
    return Telemetry(uptime_s=float(n), inference_count=n, latency_p50_ms=1.0)


def enrolled(hub: HubSim, device_id: str) -> SimDevice:
    dev = SimDevice(device_id, hub.topics, hub.clock)
    enrollment.preauthorize(hub.store, device_id, dev.public_hex, by="cli", now_ms=0)
    return dev


def test_a_frame_the_other_replica_stored_is_a_duplicate_despite_a_warm_cache(
    replicas: tuple[HubSim, HubSim],
) -> None:
    a, b = replicas
    dev = enrolled(a, "dev-1")
    frames = {seq: dev.frame(telemetry(seq), seq=seq) for seq in range(1, 11)}
    assert a.send(*(frames[s] for s in range(1, 6))).committed == 5  # a caches dev-1
    assert b.send(*(frames[s] for s in range(6, 11))).committed == 5
    # b's ack for 7 was lost: the device resends it, and this time a gets it
    resent_to_a = a.send(frames[7], frames[3])
    resent_to_b = b.send(frames[2])
    assert (resent_to_a.committed, resent_to_a.duplicates) == (0, 2)
    assert (resent_to_b.committed, resent_to_b.duplicates) == (0, 1)
    assert [r.seq for r in a.store.uplink.records(TelemetryRecord, "dev-1")] == list(range(1, 11))
    identity = a.store.devices.identity("dev-1")
    assert identity is not None
    assert identity.up_window is not None
    window = SeqWindow.from_bytes(identity.up_window)
    assert all(window.check(seq) == "duplicate" for seq in range(1, 11))  # no update lost


def test_two_replicas_racing_on_the_same_devices_store_every_frame_once(
    replicas: tuple[HubSim, HubSim],
) -> None:
    a, b = replicas
    devices = [enrolled(a, f"dev-{i}") for i in range(5)]
    frames = [d.frame(telemetry(seq), seq=seq) for d in devices for seq in range(1, 121)]
    rng = random.Random(15)
    # every frame reaches one replica, a third of them again (a resend) the other or the same
    feeds: tuple[list[tuple[str, bytes]], list[tuple[str, bytes]]] = ([], [])
    for f in frames:
        first = rng.randrange(2)
        feeds[first].append(f)
        if rng.random() < 1 / 3:
            feeds[rng.randrange(2)].append(f)
    for feed in feeds:
        rng.shuffle(feed)
    results: dict[str, list[BatchResult]] = {"a": [], "b": []}

    def run(name: str, hub: HubSim, feed: list[tuple[str, bytes]]) -> None:
        for start in range(0, len(feed), 25):
            results[name].append(hub.send(*feed[start : start + 25]))

    threads = [
        threading.Thread(target=run, args=("a", a, feeds[0])),
        threading.Thread(target=run, args=("b", b, feeds[1])),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    everything = [r for rs in results.values() for r in rs]
    assert sum(r.committed for r in everything) == len(frames)  # each frame new exactly once
    assert sum(r.duplicates for r in everything) == sum(map(len, feeds)) - len(frames)
    assert sum(r.refused for r in everything) == 0
    for d in devices:
        assert [r.seq for r in a.store.uplink.records(TelemetryRecord, d.id)] == list(range(1, 121))
