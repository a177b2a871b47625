"""Local retraining end to end: real onnxruntime sessions, feedback, deltas the hub can apply."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from agent.config import AgentConfig
from agent.daemon import Agent
from agent.errors import RetrainingOff
from agent.feedback import prediction_ids
from agent.learner import Learner, LearnerSettings, Retrain
from agent.runtime import ModelRuntime
from agent.sketches import SketchWindow
from protocol.headparams import head_forward, read_head
from protocol.linearstats import from_tensors, local_stats, targets
from protocol.manifest import Head
from protocol.messages import DeltaUpload, DeviceConfig
from protocol.tensors import decode_tensors, l2_norm
from protocol.topics import Topics
from simulator.task import ShiftedTask
from tests import models
from tests.agent.hub_double import HubDouble
from tests.brokers import BrokerRunner
from tests.clock import FakeClock
from tests.packages import build_package

T0 = 1_795_392_000_000
CONFIG = DeviceConfig(retrain_min_samples=64, round_id="round-7")
F16_BOUND, F32_EPS = 2.0**-11, float(np.finfo(np.float32).eps)


def runtime_for(model: bytes, *, version: int = 1) -> ModelRuntime:
    built = build_package(model, name="shifted", version=version)
    return ModelRuntime(built.manifest, built.model, ref=built.ref)


def head_of(runtime: ModelRuntime) -> Head:
    head = runtime.manifest.head
    assert head is not None
    return head


def feed(learner: Learner[ModelRuntime], runtime: ModelRuntime, x: np.ndarray, y: Any) -> None:
    """Predict ``x`` through the runtime, remember the features, then label every row."""
    output = runtime.predict(x)
    ids = prediction_ids(len(x))
    learner.observe(ids, output.features, T0)
    report = learner.feedback(dict(zip(ids, np.asarray(y).tolist(), strict=True)), T0 + 1)
    assert report.unknown == ()


def accuracy(runtime: ModelRuntime, x: np.ndarray, y: np.ndarray) -> float:
    scores = runtime.predict(x).scores
    return float(np.mean(np.argmax(scores, axis=1) == y))


@pytest.fixture(scope="module")
def task() -> ShiftedTask:
    return ShiftedTask.build(seed=0)


def retrained(
    task: ShiftedTask,
    state_dir: Path | None = None,
    *,
    config: DeviceConfig = CONFIG,
    rows: int = 400,
    **settings: Any,
) -> tuple[ModelRuntime, Learner[ModelRuntime], Retrain[ModelRuntime]]:
    base = runtime_for(task.model)
    learner = Learner(base, state_dir=state_dir, settings=LearnerSettings(seed=0, **settings))
    x, y = task.sample("B", rows, np.random.default_rng(1))
    feed(learner, learner.serving(), x, y)
    return base, learner, learner.maybe_retrain(base, config, T0 + 2)


def reconstructed(base: ModelRuntime, delta: DeltaUpload) -> tuple[np.ndarray, np.ndarray]:
    """What the hub does: decode the container and add it to the base version's head."""
    head = head_of(base)
    assert head.bias is not None
    tensors = decode_tensors(delta.tensors)
    assert set(tensors) == {head.weight, head.bias}  # B26: the base head's names and shapes
    weight, bias = read_head(base.model_bytes, head)
    return weight + tensors[head.weight], bias + tensors[head.bias]


def test_learner_retrains_a_shifted_device_and_serves_the_better_head(
    task: ShiftedTask, tmp_path: Path
) -> None:
    base, _, outcome = retrained(task, tmp_path)

    served, delta = outcome.runtime, outcome.delta
    assert served is not None
    assert delta is not None
    assert outcome.status.startswith("retrained: holdout accuracy")
    assert delta.metric == "accuracy"
    assert delta.after >= delta.before + 0.05
    assert (delta.base, delta.num_samples, delta.round_id) == (base.ref, 300, "round-7")
    assert delta.clip_norm == CONFIG.delta_clip_norm
    x, y = task.sample("B", 2000, np.random.default_rng(2))  # fresh rows: it generalises
    assert accuracy(served, x, y) >= accuracy(base, x, y) + 0.05
    # onnxruntime serves exactly the head the learner trained (and sent)
    head = head_of(served)
    weight, bias = read_head(served.model_bytes, head)
    output = served.predict(x)
    assert output.features is not None
    np.testing.assert_allclose(
        output.scores, head_forward(head, weight, bias, output.features), atol=1e-5
    )
    hub_weight, hub_bias = reconstructed(base, delta)
    np.testing.assert_array_equal(hub_weight, weight)  # f32: exact
    np.testing.assert_array_equal(hub_bias, bias)


@pytest.mark.parametrize(
    ("encoding", "settings"),
    [
        pytest.param("f16", {"f32_max_elements": 0}, id="f16"),
        pytest.param(
            "topk-f16",
            {"f32_max_elements": 0, "f16_max_elements": 0, "topk_max_kept": 20},
            id="topk-f16",
        ),
    ],
)
def test_lossy_deltas_reproduce_the_served_head_within_the_codec_bound(
    task: ShiftedTask, encoding: str, settings: dict[str, Any]
) -> None:
    base, _, outcome = retrained(task, **settings)

    assert outcome.runtime is not None
    assert outcome.delta is not None
    assert outcome.status.endswith(f"delta in {encoding}")
    head = head_of(base)
    served = read_head(outcome.runtime.model_bytes, head)
    original = read_head(base.model_bytes, head)
    decoded = decode_tensors(outcome.delta.tensors)
    names = (head.weight, str(head.bias))
    for hub, mine, start, name in zip(
        reconstructed(base, outcome.delta), served, original, names, strict=True
    ):
        true = mine.astype(np.float64) - start
        rounding = 4 * F32_EPS * np.maximum(np.abs(mine), np.abs(start))
        if encoding == "f16":
            bound = np.maximum(F16_BOUND * np.abs(true), 2.0**-25)
        else:  # kept entries: float16's bound; unsent ones (decoded 0) wait in the residual
            f16 = np.maximum(F16_BOUND * np.abs(true), 2.0**-25)
            bound = np.where(decoded[name] == 0, np.abs(true), f16)
        assert np.all(np.abs(hub - mine) <= bound + rounding)
    if encoding == "topk-f16":
        kept = sum(np.count_nonzero(d) for d in decoded.values())
        assert kept <= 20 + len(decoded)  # each tensor rounds its share up


def test_top_k_keeps_what_it_did_not_send_for_the_next_delta(
    task: ShiftedTask, tmp_path: Path
) -> None:
    """Error feedback: sent + residual is the whole delta, the residual survives on disk
    and the next delta carries it (docs/rounds.md, top-k with error feedback)."""
    small: dict[str, Any] = {"f32_max_elements": 0, "f16_max_elements": 0, "topk_max_kept": 20}
    base, _, outcome = retrained(task, tmp_path, **small)
    assert outcome.runtime is not None
    assert outcome.delta is not None
    head = head_of(base)
    sent = decode_tensors(outcome.delta.tensors)
    residual = decode_tensors((tmp_path / f"residual-{base.ref.name}.eft").read_bytes())
    served = read_head(outcome.runtime.model_bytes, head)
    original = read_head(base.model_bytes, head)
    for name, mine, start in zip((head.weight, str(head.bias)), served, original, strict=True):
        whole = mine.astype(np.float64) - start
        np.testing.assert_allclose(sent[name] + residual[name], whole, atol=1e-6)
    assert sum(np.count_nonzero(r) for r in residual.values()) > 0
    reborn = Learner(base, state_dir=tmp_path, settings=LearnerSettings(seed=0, **small))
    loaded = reborn._load_residual()
    assert loaded is not None
    np.testing.assert_array_equal(loaded[head.weight], residual[head.weight])


def test_learner_clips_the_delta_and_serves_exactly_what_it_sends(task: ShiftedTask) -> None:
    base, _, outcome = retrained(
        task, config=DeviceConfig(retrain_min_samples=64, delta_clip_norm=1.0)
    )

    assert outcome.runtime is not None
    assert outcome.delta is not None
    assert outcome.delta.clip_norm == 1.0
    assert l2_norm(decode_tensors(outcome.delta.tensors)) <= 1.0
    assert outcome.delta.after > outcome.delta.before
    hub_weight, hub_bias = reconstructed(base, outcome.delta)
    weight, bias = read_head(outcome.runtime.model_bytes, head_of(base))
    np.testing.assert_array_equal(hub_weight, weight)
    np.testing.assert_array_equal(hub_bias, bias)


def test_in_an_exact_round_the_learner_sends_its_rows_statistics_and_serves_as_before(
    task: ShiftedTask,
) -> None:
    config = DeviceConfig(retrain_min_samples=64, round_id="round-7", update_kind="stats")
    base, _, result = retrained(task, config=config, rows=300)
    assert result.runtime is None  # nothing trained, nothing new served
    upload = result.delta
    assert upload is not None
    assert (upload.round_id, upload.num_samples, upload.clip_norm) == ("round-7", 300, 0.0)
    stats = from_tensors(decode_tensors(upload.tensors), upload.num_samples)
    x, y = task.sample("B", 300, np.random.default_rng(1))
    rows = base.predict(x).features
    assert rows is not None
    expected = local_stats(rows, targets(head_of(base), y))
    assert stats.mismatch(head_of(base), min_rows=300) is None
    np.testing.assert_allclose(stats.xtx, expected.xtx, rtol=1e-6, atol=1e-4)
    np.testing.assert_allclose(stats.xty, expected.xty, rtol=1e-6, atol=1e-4)
    assert result.status == "sent: statistics of 300 rows"


def test_exact_mode_waits_for_a_round(task: ShiftedTask) -> None:
    config = DeviceConfig(retrain_min_samples=64, update_kind="stats")
    _, _, result = retrained(task, config=config, rows=100)
    assert result.delta is None
    assert result.status.startswith("waiting: exact mode")


def test_learner_keeps_head_only_when_holdout_improves(task: ShiftedTask) -> None:
    base = runtime_for(task.model)
    learner = Learner(base, settings=LearnerSettings(seed=0))
    x, y = task.sample("A", 400, np.random.default_rng(1))  # what the base was made for
    feed(learner, base, x, y)

    outcome = learner.maybe_retrain(base, replace(CONFIG, round_id=None), T0)

    assert (outcome.runtime, outcome.delta) == (None, None)
    assert outcome.status.startswith("unchanged: the current head is as good")
    assert learner.status == outcome.status


def test_in_a_round_a_gain_below_min_gain_is_sent_unserved(
    task: ShiftedTask, tmp_path: Path
) -> None:
    base = runtime_for(task.model)
    learner = Learner(base, state_dir=tmp_path, settings=LearnerSettings(seed=0, min_gain=0.99))
    x, y = task.sample("B", 400, np.random.default_rng(1))  # shifted: training gains
    feed(learner, base, x, y)

    outcome = learner.maybe_retrain(base, DeviceConfig(round_id="round-3"), T0)

    assert outcome.runtime is None  # below min_gain: nothing new served
    assert outcome.delta is not None
    assert outcome.delta.round_id == "round-3"
    assert outcome.delta.before < outcome.delta.after < outcome.delta.before + 0.99
    assert outcome.status.startswith("sent unserved to the round")
    assert learner.serving() is base  # and no head saved for a restart


def test_in_a_round_a_device_with_no_gain_sends_nothing(task: ShiftedTask) -> None:
    base = runtime_for(task.model)
    learner = Learner(base, settings=LearnerSettings(seed=0))
    x, y = task.sample("A", 400, np.random.default_rng(1))  # what the base was made for
    feed(learner, base, x, y)

    outcome = learner.maybe_retrain(base, DeviceConfig(round_id="round-3"), T0)

    assert (outcome.runtime, outcome.delta) == (None, None)
    assert outcome.status.startswith("unchanged: the current head is as good")


def test_learner_waits_for_enough_labels_and_does_not_rerun_without_new_ones(
    task: ShiftedTask,
) -> None:
    base = runtime_for(task.model)
    learner = Learner(base, settings=LearnerSettings(seed=0))
    x, y = task.sample("B", 100, np.random.default_rng(1))
    feed(learner, base, x[:50], y[:50])

    assert learner.maybe_retrain(base, CONFIG, T0).status == "waiting: 50 of 64 labelled rows"
    feed(learner, base, x[50:], y[50:])
    first = learner.maybe_retrain(base, CONFIG, T0)
    again = learner.maybe_retrain(base, CONFIG, T0)

    assert first.delta is not None
    assert (again.runtime, again.delta, again.status) == (None, None, first.status)


def test_learner_does_nothing_while_the_hub_disables_retraining(task: ShiftedTask) -> None:
    base = runtime_for(task.model)
    learner = Learner(base, settings=LearnerSettings(seed=0))
    x, y = task.sample("B", 100, np.random.default_rng(1))
    feed(learner, base, x, y)

    outcome = learner.maybe_retrain(base, DeviceConfig(retrain=False), T0)

    assert outcome == Retrain(None, None, "off: retraining is disabled by the hub")


def test_learner_reports_a_failed_training_and_sends_nothing() -> None:
    base = runtime_for(models.matmul_add_regressor())
    learner = Learner(base, settings=LearnerSettings(seed=0, lr=1e6))  # squared error diverges
    x = np.random.default_rng(5).normal(size=(100, 3)).astype(np.float32)
    feed(learner, base, x, shifted_targets(base, x))
    unbounded = DeviceConfig(retrain_min_samples=64, delta_clip_norm=1e300)

    outcome = learner.maybe_retrain(base, unbounded, T0)

    assert (outcome.runtime, outcome.delta) == (None, None)
    assert outcome.status.startswith("failed: training diverged")
    assert learner.status == outcome.status


def test_learner_serves_its_retrained_head_again_after_a_restart(
    task: ShiftedTask, tmp_path: Path
) -> None:
    _, first, outcome = retrained(task, tmp_path)
    assert outcome.runtime is not None
    first.close()

    again = Learner(runtime_for(task.model), state_dir=tmp_path)
    serving = again.serving()

    head = head_of(serving)
    np.testing.assert_array_equal(
        read_head(serving.model_bytes, head)[0], read_head(outcome.runtime.model_bytes, head)[0]
    )
    assert again.status == "retrained: serving the head saved before the restart"
    assert again.info()["labelled"] == 400
    again.close()


def test_a_new_base_version_drops_the_saved_head_and_the_feedback(
    task: ShiftedTask, tmp_path: Path
) -> None:
    _, first, _ = retrained(task, tmp_path)
    first.close()
    assert len(list(tmp_path.glob("head-*.eft"))) == 1

    newer = runtime_for(task.model, version=2)
    learner = Learner(newer, state_dir=tmp_path)

    assert learner.serving() is newer
    assert list(tmp_path.glob("head-*.eft")) == []
    assert learner.info()["labelled"] == 0
    learner.close()


def test_a_model_without_a_supported_head_serves_with_retraining_off() -> None:
    exported = models.decision_tree()
    runtime = runtime_for(exported.model)
    learner = Learner(runtime)

    output = runtime.predict(exported.x[:3])
    np.testing.assert_allclose(output.scores, exported.estimator.predict_proba(exported.x[:3]))
    assert output.features is None
    assert learner.serving() is runtime
    assert learner.status.startswith("off: the scores come from TreeEnsembleClassifier")
    learner.observe(["a"], output.features, T0)
    with pytest.raises(RetrainingOff) as refused:
        learner.feedback({"a": 1}, T0)
    assert refused.value.status_hint == 409
    assert learner.maybe_retrain(runtime, CONFIG, T0) == Retrain(None, None, learner.status)


@pytest.mark.parametrize("binary", [False, True], ids=["multiclass", "binary"])
def test_skl2onnx_mlp_serves_predict_proba_and_retrains_its_head(binary: bool) -> None:
    exported = models.mlp_classifier(binary=binary)
    base = runtime_for(exported.model)
    np.testing.assert_allclose(
        base.predict(exported.x).scores, exported.estimator.predict_proba(exported.x), atol=1e-5
    )
    # The device's truth: the classes come out permuted (binary: flipped), which the
    # head alone can learn by permuting its outputs.
    x = np.random.default_rng(3).normal(size=(400, 4)).astype(np.float32)
    predicted = exported.estimator.predict(x)
    n_classes = len(exported.estimator.classes_)
    learner = Learner(base, settings=LearnerSettings(seed=0))
    feed(learner, base, x, (predicted + 1) % n_classes)

    outcome = learner.maybe_retrain(base, CONFIG, T0)

    assert outcome.runtime is not None
    assert outcome.delta is not None
    assert outcome.delta.after >= outcome.delta.before + 0.05
    test = np.random.default_rng(4).normal(size=(1000, 4)).astype(np.float32)
    truth = (exported.estimator.predict(test) + 1) % n_classes
    assert accuracy(outcome.runtime, test, truth) >= accuracy(base, test, truth) + 0.05


def shifted_targets(runtime: ModelRuntime, x: np.ndarray) -> np.ndarray:
    """A regressor's device truth: its own predictions, negated and offset."""
    return 1.0 - runtime.predict(x).scores.reshape(len(x), -1)


@pytest.mark.parametrize(
    "factory",
    [
        pytest.param(lambda: models.logistic_regression(binary=True).model, id="logreg-binary"),
        pytest.param(lambda: models.logistic_regression().model, id="logreg-multiclass"),
        pytest.param(models.bias_free_classifier, id="bias-free-matmul"),
        pytest.param(models.matmul_add_regressor, id="matmul-add-regressor"),
        pytest.param(lambda: models.linear_regression(n_targets=2).model, id="linear-regressor"),
        pytest.param(lambda: models.mlp_regressor().model, id="mlp-regressor"),
    ],
)
def test_learner_retrains_every_supported_head_kind(factory: Any) -> None:
    base = runtime_for(factory())
    head = head_of(base)
    width = base.manifest.inputs[0].shape[1]
    assert width is not None
    x = np.random.default_rng(5).normal(size=(400, width)).astype(np.float32)
    if head.task == "regression":
        labels: Any = shifted_targets(base, x)
        labels = labels[:, 0] if head.n_outputs == 1 else labels
    else:
        classes = max(2, head.n_outputs)
        labels = (np.argmax(base.predict(x).scores, axis=1) + 1) % classes
    learner = Learner(base, settings=LearnerSettings(seed=0))
    feed(learner, base, x, labels)

    outcome = learner.maybe_retrain(base, CONFIG, T0)

    assert outcome.delta is not None, outcome.status
    assert outcome.runtime is not None
    expected_metric = "mse" if head.task == "regression" else "accuracy"
    assert outcome.delta.metric == expected_metric
    better = outcome.delta.before - outcome.delta.after
    assert better > 0 if expected_metric == "mse" else better < 0
    names = set(decode_tensors(outcome.delta.tensors))
    assert names == {head.weight} | ({head.bias} if head.bias else set())


def test_delta_and_data_travel_through_the_outbox_to_the_hub_which_decodes_the_delta(
    broker: BrokerRunner, topics: Topics, tmp_path: Path, clock: FakeClock, task: ShiftedTask
) -> None:
    base, _, outcome = retrained(task)
    assert outcome.delta is not None
    assert outcome.runtime is not None
    window = SketchWindow(base.manifest, clock.now_ms(), model=base.ref)
    x, _ = task.sample("B", 50, np.random.default_rng(6))
    window.observe(x, base.predict(x).scores, 1.5)
    data = window.flush(clock.now_ms() + 60_000)
    config = AgentConfig(
        device_id="dev-1",
        state_dir=tmp_path / "state",
        broker_url=broker.url,
        topic_prefix=topics.prefix,
        http_port=0,
        telemetry_interval_s=3600,
        drain_interval_s=0.1,
        stop_grace_s=0.5,
    )
    with HubDouble(broker, topics, tmp_path / "hub.db") as hub:
        agent = Agent(config, clock=clock, rollout_keys=lambda: [hub.public])
        agent.start()
        try:
            sent = {agent.send(outcome.delta), agent.send(data)}
            hub.wait_until(lambda h: sent <= set(h.committed("dev-1")))
        finally:
            agent.stop()
        (delta_frame,) = hub.messages("dev-1", "delta")
        (data_frame,) = hub.messages("dev-1", "data")

    assert delta_frame.message == outcome.delta
    assert data_frame.message == data
    assert isinstance(delta_frame.message, DeltaUpload)
    hub_weight, hub_bias = reconstructed(base, delta_frame.message)
    weight, bias = read_head(outcome.runtime.model_bytes, head_of(base))
    np.testing.assert_array_equal(hub_weight, weight)
    np.testing.assert_array_equal(hub_bias, bias)


TORCH = Path(__file__).resolve().parents[1] / "fixtures" / "torch"


@pytest.mark.parametrize("exporter", ["legacy", "dynamo"])
def test_torch_onnx_export_serves_torchs_outputs_and_retrains_its_head(exporter: str) -> None:
    """Checked-in torch.onnx exports (tests/fixtures/torch/export.py made them)."""
    expected = np.load(TORCH / "expected.npz")
    base = runtime_for((TORCH / f"{exporter}.onnx").read_bytes())
    np.testing.assert_allclose(
        base.predict(expected["x"]).scores, expected["probabilities"], atol=1e-5
    )
    x = np.random.default_rng(3).normal(size=(400, 4)).astype(np.float32)
    own = np.argmax(base.predict(x).scores, axis=1)
    learner = Learner(base, settings=LearnerSettings(seed=0))
    feed(learner, base, x, (own + 1) % 3)  # the device's truth: the classes permuted

    outcome = learner.maybe_retrain(base, CONFIG, T0)

    assert outcome.runtime is not None
    assert outcome.delta is not None
    assert outcome.delta.after >= outcome.delta.before + 0.05
    test = np.random.default_rng(4).normal(size=(1000, 4)).astype(np.float32)
    truth = (np.argmax(base.predict(test).scores, axis=1) + 1) % 3
    assert accuracy(outcome.runtime, test, truth) >= accuracy(base, test, truth) + 0.05
