"""The assembled device (agent/device.py) in-process, against the model hub double over a
real broker (both brokers).

A model installs; predictions through the device carry ids; labelled feedback from the
shifted task (simulator/task.py) feeds the retrain job, whose delta the hub
applies to the released head to get exactly the head the device serves; the data window
counts every prediction. Also: the retrained head and the hub's config survive a
restart, a self-rollback brings the retrained head back on the released base, and a
model without a trainable head serves with retraining off. Jobs run on long intervals
and the tests call them, so every count is exact.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from agent.config import AgentConfig
from agent.device import Device
from agent.download import DownloadPolicy
from agent.errors import InferenceFailed, RetrainingOff
from agent.learner import LearnerSettings
from agent.runtime import ModelRuntime, WatchPolicy
from agent.updater import UpdaterConfig
from protocol.headparams import read_head
from protocol.messages import DataDelta, DeltaUpload, DeviceConfig, ModelRef, StateReport
from protocol.tensors import decode_tensors
from protocol.topics import Topics
from simulator.task import ShiftedTask
from tests import models
from tests.agent.model_hub import FleetDouble, ModelHub
from tests.brokers import BrokerRunner
from tests.clock import FakeClock
from tests.packages import Built, build_package, sqrt_model
from tests.protocol.trust_sim import TrustSim

DEVICE = "dev-1"
UPDATER = UpdaterConfig(
    health_runs=2,
    tick_s=0.2,
    watch=WatchPolicy(predictions=4, ms=60_000, max_error_rate=0.2),
    download=DownloadPolicy(chunk_bytes=4096, window=2, stall_ms=2_000),
)
HUB_CONFIG = DeviceConfig(retrain_min_samples=64, round_id="round-1")
BATCHES, ROWS = 4, 100  # four predict calls end the watch window
Params = tuple[np.ndarray, np.ndarray]


def eventually(condition: Callable[[], bool], what: str, clock: FakeClock) -> None:
    """Wait up to 30 s; the fake clock keeps pace, so a lost fetch is asked again."""
    deadline = time.monotonic() + 30
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)
        clock.advance(0.05)


@pytest.fixture(scope="module")
def task() -> ShiftedTask:
    return ShiftedTask.build(seed=0)


@pytest.fixture(scope="module")
def v1(task: ShiftedTask) -> Built:
    return build_package(task.model, name="shifted", version=1)


@pytest.fixture
def fleet(clock: FakeClock) -> FleetDouble:
    return FleetDouble(TrustSim(now=clock.now_ms(), device_id=DEVICE))


@pytest.fixture
def hub(
    broker: BrokerRunner, topics: Topics, tmp_path: Path, fleet: FleetDouble
) -> Iterator[ModelHub]:
    with ModelHub(broker, topics, tmp_path / "hub.db", fleet, DEVICE) as double:
        double.publish_fleet()
        yield double


@pytest.fixture
def config(broker: BrokerRunner, topics: Topics, tmp_path: Path, fleet: FleetDouble) -> AgentConfig:
    root = tmp_path / "root.json"
    root.write_bytes(fleet.sim.root_chain[0].to_bytes())
    return AgentConfig(
        device_id=DEVICE,
        state_dir=tmp_path / "state",
        broker_url=broker.url,
        topic_prefix=topics.prefix,
        root_metadata=root,
        http_port=0,
        telemetry_interval_s=3600,
        drain_interval_s=0.1,
        stop_grace_s=0.5,
        retrain_interval_s=3600,
        window_s=3600,
    )


def make_device(config: AgentConfig, clock: FakeClock) -> Device:
    return Device(config, clock=clock, updater=UPDATER, learner=LearnerSettings(seed=0))


@pytest.fixture
def device(config: AgentConfig, clock: FakeClock, hub: ModelHub) -> Iterator[Device]:
    running = make_device(config, clock)
    running.start()
    hub.double.wait_until(lambda h: bool(h.messages(DEVICE, "hello")))
    yield running
    running.stop()


def serving(device: Device) -> ModelRef | None:
    runtime = device.manager.runtime
    return runtime.ref if runtime is not None else None


def install(device: Device, hub: ModelHub, clock: FakeClock, built: Built) -> None:
    """Release and assign ``built`` (fleet documents first, then the desired state with
    :data:`HUB_CONFIG`); wait until it serves."""
    hub.fleet.assign(hub.fleet.release(built))
    hub.publish_fleet()
    versions = hub.fleet.sim.release.version, hub.fleet.sim.heartbeat.version
    eventually(
        lambda: (
            (
                device.manager.state_report().trust.release,
                device.manager.state_report().trust.heartbeat,
            )
            == versions
        ),
        "the fleet documents",
        clock,
    )
    hub.double.publish_down(DEVICE, hub.fleet.sim.desired(HUB_CONFIG), retain=True)
    eventually(lambda: serving(device) == built.ref, f"v{built.manifest.version} to serve", clock)


def learn(device: Device, task: ShiftedTask, clock: FakeClock) -> list[str]:
    """Predict shifted rows through the device, label them all, run the retrain job."""
    x, y = task.sample("B", BATCHES * ROWS, np.random.default_rng(1))
    ids: list[str] = []
    for batch in np.split(x, BATCHES):
        prediction = device.predict(batch.tolist())
        assert np.asarray(prediction.outputs).shape == (ROWS, task.n_classes)
        ids.extend(prediction.ids)
    answer = device.feedback(dict(zip(ids, y.tolist(), strict=True)))
    assert answer == {"accepted": ids, "unknown": []}
    device.learning.retrain(clock.now_ms())
    return ids


def head(runtime: ModelRuntime | None) -> Params:
    assert runtime is not None
    assert runtime.manifest.head is not None
    return read_head(runtime.model_bytes, runtime.manifest.head)


def released(built: Built) -> Params:
    assert built.manifest.head is not None
    return read_head(built.model, built.manifest.head)


def assert_same(a: Params, b: Params) -> None:
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


def reported(hub: ModelHub, match: Callable[[StateReport], bool]) -> bool:
    return any(match(report) for report in hub.states())


def test_device_retrains_on_feedback_and_the_hub_rebuilds_the_served_head_from_its_delta(
    device: Device,
    hub: ModelHub,
    clock: FakeClock,
    task: ShiftedTask,
    v1: Built,
    config: AgentConfig,
) -> None:
    install(device, hub, clock, v1)
    ids = learn(device, task, clock)

    hub.double.wait_until(lambda h: bool(h.messages(DEVICE, "delta")))
    (envelope,) = hub.double.messages(DEVICE, "delta")
    delta = envelope.message
    assert isinstance(delta, DeltaUpload)
    assert (delta.base, delta.round_id, delta.metric) == (v1.ref, "round-1", "accuracy")
    assert delta.after > delta.before
    assert v1.manifest.head is not None
    assert v1.manifest.head.bias is not None
    tensors = decode_tensors(delta.tensors)
    weight, bias = released(v1)
    served = head(device.manager.runtime)
    rebuilt = (weight + tensors[v1.manifest.head.weight], bias + tensors[v1.manifest.head.bias])
    assert_same(rebuilt, served)  # what the hub rebuilds is exactly what the device serves
    assert not np.array_equal(served[0], weight)
    eventually(
        lambda: reported(hub, lambda r: r.active == v1.ref and r.retrain.startswith("retrained: ")),
        "the retrain status in a state report",
        clock,
    )
    status = device.status()
    assert status["active"] == {"name": "shifted", "version": 1, "sha256": v1.sha256}
    assert status["retrain"].startswith("retrained: holdout accuracy")
    assert (status["labelled"], status["pending"]) == (len(ids), 0)

    device.learning.close_window(clock.now_ms())
    hub.double.wait_until(lambda h: bool(h.messages(DEVICE, "data")))
    (window,) = hub.double.messages(DEVICE, "data")
    data = window.message
    assert isinstance(data, DataDelta)
    assert (data.model, data.inference_count, data.error_count) == (v1.ref, BATCHES, 0)
    assert [f.n for f in data.features] == [BATCHES * ROWS] * task.n_inputs
    assert data.predictions is not None
    assert sum(data.predictions.counts) == BATCHES * ROWS

    device.stop()
    restarted = make_device(config, clock)  # not started: construction restores the state
    try:
        assert_same(head(restarted.manager.runtime), served)
        assert restarted.learning.hub_config == HUB_CONFIG
        assert restarted.status()["retrain"].startswith("retrained: serving the head saved")
    finally:
        restarted.stop()


def test_a_self_rollback_brings_the_retrained_head_back_on_the_released_base(
    device: Device, hub: ModelHub, clock: FakeClock, task: ShiftedTask, v1: Built
) -> None:
    install(device, hub, clock, v1)
    learn(device, task, clock)
    served = head(device.manager.runtime)
    v2 = build_package(
        sqrt_model(), name="shifted", version=2, smoke={"x": np.ones((8, 4), np.float32)}
    )
    install(device, hub, clock, v2)
    assert device.status()["retrain"].startswith("off: ")

    with pytest.raises(InferenceFailed):  # NaN on negative inputs: the watch rolls back
        device.predict((-np.ones((1, 4))).tolist())

    assert serving(device) == v1.ref
    model = device.learning.follow()
    assert model is not None
    assert_same(head(model.base), released(v1))  # later deltas stay against the release
    assert_same(head(device.manager.runtime), served)
    assert device.status()["retrain"].startswith("retrained: ")


def test_a_model_without_a_trainable_head_serves_and_says_why_retraining_is_off(
    device: Device, hub: ModelHub, clock: FakeClock
) -> None:
    exported = models.decision_tree()
    tree = build_package(exported.model, name="tree", version=1)
    install(device, hub, clock, tree)

    prediction = device.predict(exported.x[:3].tolist())
    expected = exported.estimator.predict_proba(exported.x[:3])
    np.testing.assert_allclose(prediction.outputs, expected, atol=1e-6)
    with pytest.raises(RetrainingOff):
        device.feedback({prediction.ids[0]: 1})
    assert device.status()["retrain"].startswith("off: the scores come from TreeEnsemble")
    eventually(
        lambda: reported(hub, lambda r: r.active == tree.ref and r.retrain.startswith("off: ")),
        "retraining off in a state report",
        clock,
    )
