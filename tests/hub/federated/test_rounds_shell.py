"""Rounds on the hub: screening at ingest, the lifecycle, candidates, restarts, buffers."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from agent.trainer import train_head
from hub.errors import Conflict
from hub.federated import rounds
from hub.federated.models import manifest_of
from hub.registry.profile import ModelRunner
from hub.rounds.aggregate import PRESETS
from hub.rounds.buffered import BufferPolicy
from hub.rounds.errors import IllegalTransition
from hub.rounds.lifecycle import Close, ClosePolicy
from protocol.headparams import read_head, write_head
from protocol.messages import DeltaUpload
from protocol.package import decode_package
from protocol.tensors import clip_l2, decode_tensors, encode_tensors
from tests.hub.federated.helpers import MODEL, FlHub, npz


@pytest.fixture
def hub(tmp_path: Path) -> FlHub:
    return FlHub(tmp_path)


def test_screening_keeps_the_first_delta_per_device_and_counts_a_replay_once(hub: FlHub) -> None:
    round_id = hub.open(target_deltas=10, min_deltas=1)
    a, b = hub.device("dev-a"), hub.device("dev-b")
    first = hub.delta(seed=1, round_id=round_id)
    frame = a.frame(first)
    hub.sim.send(frame)
    hub.sim.send(frame)  # the same frame again: a duplicate by the replay window
    hub.send(a, hub.delta(seed=2, round_id=round_id))  # a second delta: flagged
    hub.send(b, first)  # a's very bytes from another device: replayed
    hub.send(b, hub.delta(seed=3))  # names no round
    assert hub.verdicts(round_id) == [
        ("dev-a", "accepted", None),
        ("dev-a", "flagged", "duplicate"),
        ("dev-b", "refused", "replayed"),
    ]
    assert hub.verdicts(None) == []  # type: ignore[arg-type]
    assert hub.store.rounds.count_usable(round_id) == 1
    assert ("device:dev-b", "delta.refused", "bad_round") in hub.sim.rejections()
    assert ("device:dev-b", "delta.refused", "replayed") in hub.sim.rejections()


def test_a_poisoned_delta_is_refused_with_its_reason_audited_and_struck(hub: FlHub) -> None:
    round_id = hub.open(target_deltas=10, min_deltas=1)
    dev = hub.device("dev-x")
    hub.send(dev, hub.delta(scale=50.0, round_id=round_id))  # norm far above 10
    hub.send(dev, hub.delta(round_id=round_id, tensors=b"EFT\x00garbage", seed=9))
    assert [v[1:] for v in hub.verdicts(round_id)] == [
        ("refused", "norm_exceeded"),
        ("refused", "malformed"),
    ]
    assert hub.store.rounds.strikes("dev-x") == 2
    assert hub.store.rounds.count_usable(round_id) == 0


def test_a_round_closes_when_enough_deltas_arrived_and_releases_a_better_candidate(
    tmp_path: Path,
) -> None:
    hub = FlHub(tmp_path, auto_release=True)
    round_id = hub.open(target_deltas=3, min_deltas=1)
    x, y = hub.task.sample("B", 300, np.random.default_rng(5))
    for i in range(3):
        hub.send(hub.device(f"dev-{i}"), _trained_delta(hub, x[i::3], y[i::3], round_id))
    rounds.tick(hub.ctx)
    record = hub.store.rounds.round(round_id)
    assert record is not None
    assert (record.state, record.reason) == ("accepted", "")
    version = hub.store.registry.version(MODEL, record.candidate_version or 0)
    assert version is not None
    assert (version.status, version.parent_version, version.made_by) == (
        "released",
        1,
        f"round:{round_id}",
    )
    assert [v[1] for v in hub.verdicts(round_id)] == ["used"] * 3


def test_a_round_closes_at_the_deadline_with_what_arrived(hub: FlHub) -> None:
    round_id = hub.open(target_deltas=5, min_deltas=2, duration_ms=60_000)
    for i in range(2):
        hub.send(hub.device(f"dev-{i}"), hub.delta(seed=i, round_id=round_id))
    rounds.tick(hub.ctx)
    assert _state(hub, round_id) == "open"
    hub.sim.clock.advance(61)
    rounds.tick(hub.ctx)
    record = hub.store.rounds.round(round_id)
    assert record is not None
    assert record.state in ("accepted", "rejected")
    assert record.closed_ms is not None
    assert record.candidate_version == 2


def test_a_round_with_too_few_deltas_at_the_deadline_fails(hub: FlHub) -> None:
    round_id = hub.open(target_deltas=5, min_deltas=2, duration_ms=1_000)
    hub.send(hub.device("dev-0"), hub.delta(round_id=round_id))
    hub.sim.clock.advance(2)
    rounds.tick(hub.ctx)
    record = hub.store.rounds.round(round_id)
    assert record is not None
    assert record.state == "failed"
    assert "fewer than 2" in record.reason
    assert hub.store.registry.version(MODEL, 2) is None


def test_one_live_round_per_model_and_cancel_is_final(hub: FlHub) -> None:
    round_id = hub.open()
    with pytest.raises(Conflict, match="cancel it first"):
        hub.open()
    rounds.cancel_round(hub.ctx, round_id, actor="test")
    with pytest.raises(IllegalTransition):
        rounds.cancel_round(hub.ctx, round_id, actor="test")
    dev = hub.device("dev-0")
    hub.send(dev, hub.delta(round_id=round_id))
    assert hub.verdicts(round_id) == [("dev-0", "refused", "bad_round")]


def test_an_open_round_is_cancelled_when_a_newer_version_is_released(hub: FlHub) -> None:
    round_id = hub.open(target_deltas=5, min_deltas=1)
    hub.send(hub.device("dev-0"), hub.delta(round_id=round_id))
    w, b = read_head(hub.task.model, hub.head)
    newer = write_head(hub.task.model, hub.head, w * 1.1, b)
    x_ref, _ = hub.task.sample("A", 100, np.random.default_rng(1))
    hub.registry.register(newer, name=MODEL, reference=npz(X=x_ref), actor="operator")
    assert hub.store.registry.version(MODEL, 2).status == "released"  # type: ignore[union-attr]
    rounds.tick(hub.ctx)
    record = hub.store.rounds.round(round_id)
    assert record is not None
    assert (record.state, record.reason) == ("cancelled", "cancelled by release v2")
    assert record.candidate_version is None
    assert hub.store.registry.version(MODEL, 3) is None  # the round built nothing
    assert (rounds.ACTOR, "round.cancel", "release v2") in [
        (a.actor, a.action, a.reason) for a in hub.store.audit.page(limit=50).items
    ]


def test_a_closing_round_is_aggregated_after_a_restart(tmp_path: Path) -> None:
    hub = FlHub(tmp_path, close=ClosePolicy(1, 2, 60_000))
    round_id = hub.open()
    for i in range(2):
        hub.send(hub.device(f"dev-{i}"), hub.delta(seed=i, round_id=round_id))
    # the hub died after the close was stored, before the aggregation ran
    record = hub.store.rounds.round(round_id)
    assert record is not None
    hub.store.rounds.put_round(rounds._moved(record, Close(hub.sim.clock.now_ms(), "enough")))
    assert _state(hub, round_id) == "closing"
    rounds.tick(hub.ctx)  # the next hub's first tick
    assert _state(hub, round_id) in ("accepted", "rejected")
    rounds.tick(hub.ctx)
    assert [v.version for v in hub.store.registry.versions(MODEL)] == [1, 2]  # never twice


def test_buffered_mode_weighs_stale_deltas_and_refuses_too_stale_ones(tmp_path: Path) -> None:
    hub = FlHub(
        tmp_path, mode="buffered", buffer=BufferPolicy(size=2, max_staleness=1),
        auto_release=True, margin=0.0,
    )  # fmt: skip
    x, y = hub.task.sample("B", 400, np.random.default_rng(5))
    for i in range(2):
        hub.send(hub.device(f"dev-{i}"), _trained_delta(hub, x[i::4], y[i::4], None))
    rounds.tick(hub.ctx)
    state = hub.store.rounds.buffer(MODEL)
    assert state is not None
    assert (state.current_version, state.flushes) == (2, 1)
    # on v1, one version behind v2: accepted, weighed (1 + 1)^-0.5
    hub.send(hub.device("dev-2"), _trained_delta(hub, x[2::4], y[2::4], None, version=1))
    hub.send(hub.device("dev-3"), _trained_delta(hub, x[3::4], y[3::4], None, version=2))
    rounds.tick(hub.ctx)
    lineage = hub.registry.get_version(MODEL, 3).lineage
    staleness = {c["device_id"]: c["staleness"] for c in lineage["contributions"]}
    assert staleness == {"dev-2": 1, "dev-3": 0}
    weights = {c["device_id"]: c["weight"] for c in lineage["contributions"]}
    assert weights["dev-2"] < weights["dev-3"]
    hub.send(hub.device("dev-4"), hub.delta(seed=4, version=1))  # two behind v3 now
    assert hub.verdicts(f"buffer:{MODEL}")[-1] == ("dev-4", "refused", "too_stale")


def _state(hub: FlHub, round_id: str) -> str:
    record = hub.store.rounds.round(round_id)
    assert record is not None
    return record.state


def test_fedavgm_carries_its_velocity_from_the_base_version_into_the_next_round(
    tmp_path: Path,
) -> None:
    hub = FlHub(tmp_path, auto_release=True, strategy=PRESETS["fedavgm"])
    x, y = hub.task.sample("B", 600, np.random.default_rng(5))
    devices = [hub.device(f"dev-{i}") for i in range(3)]
    steps = []
    for version in (1, 2):
        round_id = hub.open(target_deltas=3, min_deltas=3)
        uploads = [
            _trained_delta(hub, x[i::3][: 100 * version], y[i::3][: 100 * version], round_id,
                           version)
            for i in range(3)
        ]  # fmt: skip
        for device, upload in zip(devices, uploads, strict=True):
            hub.send(device, upload)
        rounds.tick(hub.ctx)
        record = hub.store.rounds.round(round_id)
        assert record is not None
        assert record.candidate_version == version + 1
        assert version == 2 or record.state == "accepted", record.reason  # v2 is released
        steps.append(_head_step(hub, version))
        mean = {
            name: np.mean([decode_tensors(u.tensors)[name] for u in uploads], axis=0)
            for name in steps[-1]
        }
        momentum = 0.0 if version == 1 else 0.9
        for name, step in steps[-1].items():  # v' = 0.9 v + mean; the step is v'
            expected = mean[name] + (momentum * steps[0][name] if version == 2 else 0.0)
            np.testing.assert_allclose(step, expected, atol=1e-4)


def _head_step(hub: FlHub, version: int) -> dict[str, np.ndarray]:
    """The candidate ``version + 1``'s head minus its base ``version``'s."""
    heads = [read_head(decode_package(hub.registry.download(MODEL, v)).model, hub.head)
             for v in (version, version + 1)]  # fmt: skip
    (w0, b0), (w1, b1) = heads
    return {hub.head.weight: w1 - w0, hub.head.bias or "bias": b1 - b0}


def test_a_scheduled_model_opens_a_round_on_the_tick_and_the_next_one_an_interval_later(
    tmp_path: Path,
) -> None:
    hub = FlHub(tmp_path, every_ms=600_000)
    rounds.tick(hub.ctx)
    first = hub.store.rounds.live_round(MODEL)
    assert first is not None
    assert first.trigger == "schedule"
    rounds.tick(hub.ctx)
    assert hub.store.rounds.count_rounds(MODEL) == 1  # one is live: nothing new
    rounds.cancel_round(hub.ctx, first.round_id, actor="test")
    hub.sim.clock.advance(599)
    rounds.tick(hub.ctx)
    assert hub.store.rounds.live_round(MODEL) is None
    hub.sim.clock.advance(1)
    rounds.tick(hub.ctx)
    second = hub.store.rounds.live_round(MODEL)
    assert second is not None
    assert (second.trigger, second.opened_ms - first.opened_ms) == ("schedule", 600_000)


def _trained_delta(
    hub: FlHub, x: np.ndarray, y: np.ndarray, round_id: str | None, version: int = 1
) -> DeltaUpload:
    """What an agent sends: its head trained on its rows (agent.trainer), as a clipped delta."""
    row = hub.store.registry.version(MODEL, version)
    assert row is not None
    package = decode_package(hub.registry.download(MODEL, version))
    w, b = read_head(package.model, hub.head)
    features = ModelRunner(package.model, manifest_of(row).inputs[0]).run(x, hub.head.feature)
    result = train_head(
        hub.head, w, b, features, y, rng=np.random.default_rng(0), epochs=30, lr=0.5,
        batch_size=32, holdout_fraction=0.25, max_distance=10.0,
    )  # fmt: skip
    raw = {hub.head.weight: result.weight - w, hub.head.bias or "bias": result.bias - b}
    upload = hub.delta(version=version, round_id=round_id, samples=result.n_train)
    return replace(upload, tensors=encode_tensors(clip_l2(raw, 10.0)))
