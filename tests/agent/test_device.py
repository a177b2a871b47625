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

import dataclasses
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from agent.config import AgentConfig
from agent.device import LEARNING_DIR, Device
from agent.download import DownloadPolicy
from agent.errors import InferenceFailed, InvalidInput, RetrainingOff
from agent.learner import FEEDBACK_DB, LearnerSettings
from agent.runtime import ModelRuntime, WatchPolicy
from agent.updater import UpdaterConfig
from protocol.headparams import read_head
from protocol.messages import (
    DataDelta,
    DeltaUpload,
    DeviceConfig,
    ModelRef,
    Nudge,
    StateReport,
)
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


def install(
    device: Device,
    hub: ModelHub,
    clock: FakeClock,
    built: Built,
    hub_config: DeviceConfig = HUB_CONFIG,
) -> None:
    """Release and assign ``built`` (fleet documents first, then the desired state with
    ``hub_config``); wait until it serves."""
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
    hub.double.publish_down(DEVICE, hub.fleet.sim.desired(hub_config), retain=True)
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
    assert (data.model, data.inference_count, data.error_count) == (v1.ref, BATCHES * ROWS, 0)
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


def test_status_says_a_delta_is_queued_until_the_hub_acknowledges_it(
    device: Device, hub: ModelHub, clock: FakeClock, task: ShiftedTask, v1: Built
) -> None:
    install(device, hub, clock, v1)
    hub.double.mute_acks = True  # the hub stores frames but its acks do not come back
    learn(device, task, clock)
    hub.double.wait_until(lambda h: bool(h.messages(DEVICE, "delta")))
    status = device.status()
    assert status["retrain"].startswith("retrained: ")
    assert "sent" not in status["retrain"]
    assert status["delta"]["delivery"] == "queued: waiting for the hub's acknowledgement"

    hub.double.mute_acks = False
    hub.double.publish_down(DEVICE, Nudge("resend"))
    eventually(
        lambda: device.status()["delta"]["delivery"] == "acknowledged by the hub",
        "the hub's ack of the delta",
        clock,
    )
    assert device.status()["delta"]["base"] == v1.manifest.version


def test_invalid_inputs_count_as_errors_in_rows_in_telemetry_and_the_window(
    device: Device, hub: ModelHub, clock: FakeClock, task: ShiftedTask, v1: Built
) -> None:
    install(device, hub, clock, v1)
    x, _ = task.sample("B", 10, np.random.default_rng(4))
    device.predict(x.tolist())
    with pytest.raises(InvalidInput):
        device.predict([[1.0, 2.0]] * 3)  # three rows of the wrong width
    inference = device.agent.status()["inference"]
    assert (inference["inference_count"], inference["error_count"]) == (13, 3)
    assert (inference["requests"], inference["invalid_count"]) == (2, 3)
    device.learning.close_window(clock.now_ms())
    hub.double.wait_until(lambda h: bool(h.messages(DEVICE, "data")))
    (window,) = [e.message for e in hub.double.messages(DEVICE, "data")]
    assert isinstance(window, DataDelta)
    assert (window.inference_count, window.error_count) == (13, 3)


def test_metrics_count_rows_errors_latency_outbox_and_installs(
    device: Device, hub: ModelHub, clock: FakeClock, task: ShiftedTask, v1: Built
) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    install(device, hub, clock, v1)
    x, _ = task.sample("B", 12, np.random.default_rng(5))
    for batch in np.split(x, 3):
        device.predict(batch.tolist())
    with pytest.raises(InvalidInput):
        device.predict([[1.0]] * 2)
    text, content_type = device.agent.metrics()
    assert content_type.startswith("text/plain")
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text.decode())
        for s in family.samples
    }
    prefix = "edgefleet_agent_"
    assert samples[(prefix + "inference_rows_total", ())] == 14
    assert samples[(prefix + "inference_requests_total", ())] == 4
    assert samples[(prefix + "inference_errors_total", (("reason", "invalid_input"),))] == 2
    assert samples[(prefix + "inference_errors_total", (("reason", "inference_failed"),))] == 0
    assert samples[(prefix + "inference_latency_seconds_count", ())] == 3  # invalid: no run
    assert (prefix + "outbox_depth", ()) in samples
    assert samples[(prefix + "installs_total", (("outcome", "installed"),))] == 1
    assert samples[(prefix + "connected", ())] == 1


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


# ---------------------------------------------------------------------- review fixes


def windowed(hub: ModelHub) -> list[DataDelta]:
    """Every data window the hub committed, oldest first."""
    messages = [e.message for e in hub.double.messages(DEVICE, "data")]
    return [m for m in messages if isinstance(m, DataDelta)]


def test_a_fresh_device_says_hello_first_so_the_hub_commits_its_first_state_report_at_once(
    config: AgentConfig, clock: FakeClock, hub: ModelHub
) -> None:
    patient = dataclasses.replace(config, ack_timeout_s=60.0, stop_grace_s=10.0)
    device = make_device(patient, clock)  # the manager reports its state while attached
    try:
        queued = device.agent.outbox.due(clock.now_ms())
        assert [(s.seq, s.kind) for s in queued[:2]] == [(1, "hello"), (2, "state")]

        device.start()
        hub.double.wait_until(lambda h: bool(h.messages(DEVICE, "state")), timeout_s=20)
        # With ack_timeout_s at 60 s nothing is resent within the wait below, so an empty
        # outbox means the hub committed hello and the report on their first delivery.
        deadline = time.monotonic() + 20
        while device.agent.outbox.stats().depth and time.monotonic() < deadline:
            time.sleep(0.05)
        assert device.agent.outbox.stats().depth == 0
        assert not hub.double.rejected
        assert hub.double.duplicates(DEVICE) == 0
    finally:
        device.stop()


def test_a_corrupt_feedback_db_turns_learning_off_but_the_device_still_serves(
    device: Device,
    hub: ModelHub,
    clock: FakeClock,
    task: ShiftedTask,
    v1: Built,
    config: AgentConfig,
) -> None:
    install(device, hub, clock, v1)
    x, _ = task.sample("B", ROWS, np.random.default_rng(2))
    for _ in range(BATCHES):  # the install's watch window ends: v1 is committed
        device.predict(x.tolist())
    device.stop()
    learning = config.state_dir / LEARNING_DIR
    for leftover in learning.glob(f"{FEEDBACK_DB}-*"):  # -wal, -shm
        leftover.unlink()
    (learning / FEEDBACK_DB).write_bytes(b"not a database " * 512)

    restarted = make_device(config, clock)
    restarted.start()
    try:
        prediction = restarted.predict(x.tolist())
        assert np.asarray(prediction.outputs).shape == (ROWS, task.n_classes)
        status = restarted.status()
        assert status["active"] == {"name": "shifted", "version": 1, "sha256": v1.sha256}
        assert status["retrain"].startswith("off: the learning state cannot be opened: ")
        with pytest.raises(RetrainingOff):
            restarted.feedback({prediction.ids[0]: 1})
        assert restarted.learning.state_report().retrain == status["retrain"]
        eventually(
            lambda: reported(hub, lambda r: r.retrain == status["retrain"]),
            "the reason retraining is off in a state report",
            clock,
        )
    finally:
        restarted.stop()


def test_stopping_the_device_sends_the_data_window_it_was_collecting(
    config: AgentConfig, clock: FakeClock, hub: ModelHub, task: ShiftedTask, v1: Built
) -> None:
    device = make_device(dataclasses.replace(config, stop_grace_s=10.0), clock)
    device.start()
    try:
        install(device, hub, clock, v1)
        x, _ = task.sample("B", 3 * ROWS, np.random.default_rng(3))
        for batch in np.split(x, 3):
            device.predict(batch.tolist())
        assert windowed(hub) == []  # window_s is an hour: no window has closed yet
    finally:
        device.stop()

    hub.double.wait_until(lambda h: bool(windowed(hub)))
    (window,) = windowed(hub)
    assert (window.model, window.inference_count) == (v1.ref, 3 * ROWS)  # rows, not calls
    assert [f.n for f in window.features] == [3 * ROWS] * task.n_inputs


def test_the_hubs_window_and_telemetry_intervals_reschedule_the_jobs_and_survive_a_restart(
    device: Device,
    hub: ModelHub,
    clock: FakeClock,
    task: ShiftedTask,
    v1: Built,
    config: AgentConfig,
) -> None:
    fast = dataclasses.replace(HUB_CONFIG, window_s=0.2, telemetry_interval_s=0.2)
    install(device, hub, clock, v1, hub_config=fast)  # the local config says an hour
    x, _ = task.sample("B", ROWS, np.random.default_rng(4))
    device.predict(x.tolist())

    hub.double.wait_until(lambda h: bool(windowed(hub)), timeout_s=15)
    hub.double.wait_until(lambda h: bool(h.messages(DEVICE, "telemetry")), timeout_s=15)
    assert device.learning.intervals == {"sketch-window": 0.2, "telemetry": 0.2}
    device.stop()

    before = len(hub.double.messages(DEVICE, "telemetry"))
    restarted = make_device(config, clock)  # the guard does not hand the desired over again
    restarted.start()
    try:
        hub.double.wait_until(
            lambda h: len(h.messages(DEVICE, "telemetry")) >= before + 2, timeout_s=15
        )
        assert restarted.learning.hub_config == fast
    finally:
        restarted.stop()


def test_hub_intervals_equal_to_the_ones_it_sent_before_leave_the_local_config_alone(
    device: Device, hub: ModelHub, clock: FakeClock, v1: Built
) -> None:
    install(device, hub, clock, v1)  # HUB_CONFIG: the protocol's default intervals
    assert device.learning.hub_config == HUB_CONFIG
    assert device.learning.intervals == {}
