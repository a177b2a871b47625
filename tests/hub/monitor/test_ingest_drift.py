"""Drift through the real ingest worker: signed frames judged, stored and merged into their
device bucket in one batch transaction; a replayed frame counts once; a window drift cannot
use is stored all the same and only counted."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from hub.drift.buckets import BASE_MS, bucket_start
from hub.metrics import sample
from hub.store.rows import DataWindowRecord
from protocol.messages import HubAck
from protocol.sketches import FeatureSketch
from tests.clock import FakeClock
from tests.hub.hubsim import HubSim
from tests.hub.monitor.drifthub import FEATURES, Sensor, register_sensor
from tests.hub.test_registry import Hub, make_hub


@pytest.fixture
def registry(tmp_path: Path, clock: FakeClock) -> Hub:
    return make_hub(tmp_path / "registry", clock)


@pytest.fixture
def sensor(registry: Hub) -> Sensor:
    return register_sensor(registry)


@pytest.fixture
def sim(tmp_path: Path, registry: Hub) -> HubSim:
    return HubSim(tmp_path / "ingest", store=registry.store)


def test_a_window_is_merged_in_its_batch_and_a_replay_counts_once(
    sim: HubSim, sensor: Sensor
) -> None:
    dev = sim.device("pump-1", enrolled=True)
    sim.store.devices.set_tags("pump-1", {"site": "north"})
    now = sim.clock.now_ms()
    x = np.random.default_rng(3).normal(size=(64, FEATURES))
    window = sensor.window(x, now - 30_000, now)
    first = dev.frame(window)
    sim.send(first)
    assert sim.acks(dev) == [HubAck(committed=((1, 1),))]
    [scope] = sim.store.drift.scopes()
    start = bucket_start(now - 30_000, BASE_MS)
    [bucket] = sim.store.drift.device_buckets(scope.scope, BASE_MS, start)
    assert (bucket.device_id, bucket.aggregate.windows, bucket.aggregate.inferences) == (
        "pump-1",
        1,
        64,
    )
    assert bucket.tags == {"site": "north"}
    assert scope.model_name == "sensor"

    sim.send(first, first)  # an agent resend and a QoS 1 redelivery
    assert sim.store.drift.device_buckets(scope.scope, BASE_MS, start) == [bucket]

    second = dev.frame(sensor.window(x[:10], now - 20_000, now - 10_000))
    sim.send(second)
    [merged] = sim.store.drift.device_buckets(scope.scope, BASE_MS, start)
    assert (merged.aggregate.windows, merged.aggregate.inferences) == (2, 74)


def test_a_window_that_does_not_fit_its_reference_is_stored_but_left_out(
    sim: HubSim, sensor: Sensor
) -> None:
    dev = sim.device("pump-2", enrolled=True)
    now = sim.clock.now_ms()
    x = np.random.default_rng(4).normal(size=(30, FEATURES))
    window = sensor.window(x, now - 1000, now)
    odd = FeatureSketch("zz", counts=(1, 2), n=3, mean=0.0, m2=1.0)
    bad = replace(window, features=(odd, *window.features[1:]))
    before = sample("edgefleet_drift_skipped_total", {"reason": "incompatible_window"})
    sim.send(dev.frame(bad))
    assert sim.acks(dev) == [HubAck(committed=((1, 1),))]
    assert len(sim.store.uplink.records(DataWindowRecord, "pump-2")) == 1
    assert sim.store.drift.device_history("pump-2", BASE_MS, 0, 2**62) == []
    assert sample("edgefleet_drift_skipped_total", {"reason": "incompatible_window"}) == before + 1
