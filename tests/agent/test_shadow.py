"""Shadow runs on the device: the agreement counts (pure), and the model manager running a
shadow beside the served model without ever changing what is served.

The manager tests use test_updater's in-memory hub (real files, real onnxruntime, real
signatures from TrustSim, a fake clock).
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.shadow import QUEUE, RETRY_MS, SHADOW_DIR
from agent.shadow_tally import ShadowTally, classes
from agent.updater import MODELS_DIR
from protocol import metadata
from protocol.documents import SignedDocument
from protocol.messages import DesiredState, DeviceConfig, ModelRef
from protocol.metadata import Assignment, ReleaseEntry
from tests import models
from tests.agent.model_hub import FleetDouble
from tests.agent.test_updater import CONFIG, Device, package
from tests.clock import FakeClock
from tests.hub.rollouts_shell.live import NAN_ABOVE, nan_above_classifier
from tests.packages import Built, build_package
from tests.protocol.trust_sim import ASSIGNMENT_TTL, TrustSim

REF = ModelRef("iris", 2, "2" * 64)
SMOKE = {"x": np.zeros((8, 4), np.float32)}
ROWS = np.random.default_rng(3).uniform(-1, 1, size=(400, 4)).astype(np.float32)

# ---------------------------------------------------------------- counting (pure)


def test_classes_are_the_argmax_and_a_single_column_is_a_sigmoid() -> None:
    scores = np.array([[0.1, 0.7, 0.2], [0.5, 0.2, 0.3], [np.nan, 0.5, 0.5]])
    assert classes(scores).tolist() == [1, 0, -1]
    assert classes(np.array([[0.2], [0.9]])).tolist() == [0, 1]


def test_agreement_is_counted_per_served_class() -> None:
    tally = ShadowTally(REF)
    tally.add(np.array([0, 0, 1, 2, 2]), np.array([0, 1, 1, 2, 0]), 3.0)
    report = tally.take()
    assert report is not None
    assert (report.inputs, report.agreed, report.outputs) == ((2, 1, 2), (1, 1, 1), (2, 2, 1))
    assert (report.errors, report.latency_p95_ms, report.model) == (0, 3.0, REF)


def test_two_swapped_classes_agree_on_none_of_their_rows_and_all_of_the_others() -> None:
    served = np.array([0] * 30 + [1] * 10 + [2] * 60)
    shadow = np.where(served == 0, 1, np.where(served == 1, 0, served))
    tally = ShadowTally(REF)
    tally.add(served, shadow, 1.0)
    report = tally.take()
    assert report is not None
    assert (report.inputs, report.agreed) == ((30, 10, 60), (0, 0, 60))


def test_a_failed_shadow_request_counts_as_errors_that_never_agree() -> None:
    tally = ShadowTally(REF)
    tally.add(np.array([0, 1, 1]), None, 9.0)
    tally.add(np.array([1, 2]), np.array([1, -1]), 1.0)  # a NaN row of the shadow
    report = tally.take()
    assert report is not None
    assert (report.inputs, report.agreed, report.errors) == ((1, 3, 1), (0, 1, 0), 4)
    assert report.outputs == (0, 1, 0)


def test_taking_the_report_starts_the_next_window() -> None:
    tally = ShadowTally(REF)
    tally.add(np.array([0]), np.array([0]), 1.0)
    assert tally.take() is not None
    assert tally.take() is None


def test_the_p95_is_a_latency_that_happened() -> None:
    tally = ShadowTally(REF)
    for ms in range(1, 101):
        tally.add(np.array([0]), np.array([0]), float(ms))
    report = tally.take()
    assert report is not None
    assert report.latency_p95_ms == 95.0


@given(
    st.lists(st.tuples(st.integers(-1, 5), st.integers(-1, 5)), min_size=1, max_size=60),
    st.booleans(),
)
def test_every_served_row_is_counted_once_and_agreements_never_exceed_inputs(
    pairs: list[tuple[int, int]], whole_request_failed: bool
) -> None:
    served = np.array([p[0] for p in pairs], dtype=np.int64)
    shadow = None if whole_request_failed else np.array([p[1] for p in pairs], dtype=np.int64)
    tally = ShadowTally(REF)
    tally.add(served, shadow, 1.0)
    report = tally.take()
    valid = served >= 0
    if not valid.any():
        assert report is None
        return
    assert report is not None
    assert sum(report.inputs) == int(valid.sum())
    for c, (n, a) in enumerate(zip(report.inputs, report.agreed, strict=True)):
        assert n == int((served == c).sum())
        expected = 0 if shadow is None else int(((served == c) & (shadow == c)).sum())
        assert a == expected
    failed = int(valid.sum()) if shadow is None else int((valid & (shadow < 0)).sum())
    assert report.errors == failed


# ---------------------------------------------------------------- the manager


def swapped(version: int) -> Built:
    return build_package(models.swap_classes(models.gemm_classifier()), version=version)


def shadow_doc(fleet: FleetDouble, entry: ReleaseEntry, version: int, role: str = "rollout") -> Any:
    sim: TrustSim = fleet.sim
    release_sha = metadata.payload_sha256(sim.release_doc())
    doc = Assignment(
        sim.device_id, version, sim.now + ASSIGNMENT_TTL, sim.release.version, release_sha, entry
    )
    return metadata.sign(doc, sim.signers[role])  # type: ignore[index]


def with_shadow(fleet: FleetDouble, shadow: SignedDocument | None, share: float = 1.0) -> Any:
    desired = fleet.sim.desired(DeviceConfig(shadow_sample=share))
    return DesiredState(desired.config, desired.assignment, desired.release_list, shadow)


@pytest.fixture
def running(fleet_and_dir: tuple[FleetDouble, Path], clock: FakeClock) -> Device:
    """A device serving iris v1 (committed)."""
    fleet, state_dir = fleet_and_dir
    device = Device(fleet, state_dir, clock)
    device.install(fleet.release(package(1)))
    device.commit()
    return device


@pytest.fixture
def fleet_and_dir(tmp_path: Path, clock: FakeClock) -> tuple[FleetDouble, Path]:
    return FleetDouble(TrustSim(now=clock.now_ms(), device_id="dev-1")), tmp_path


def start_shadow(device: Device, built: Built, version: int = 10, share: float = 1.0) -> None:
    fleet = device.fleet
    entry = fleet.release(built)
    fleet.sim.beat()
    device.sync()
    device.desired(with_shadow(fleet, shadow_doc(fleet, entry, version), share))
    device.serve()


def predict_all(device: Device, batch: int = 8) -> None:
    for start in range(0, len(ROWS), batch):
        device.manager.predict(ROWS[start : start + batch])


def test_a_shadow_runs_beside_the_served_model_and_reports_the_swap(running: Device) -> None:
    slots = (running.state_dir / MODELS_DIR / "slots.json").read_bytes()
    start_shadow(running, swapped(2))
    assert running.manager.shadow.status == "running"
    predict_all(running)
    report = running.manager.shadow_report()
    assert running.active == package(1).ref  # nothing served changed
    assert (running.state_dir / MODELS_DIR / "slots.json").read_bytes() == slots
    assert report is not None
    assert report.model == swapped(2).ref
    served = classes(running.manager.runtime.predict(ROWS).scores)  # type: ignore[union-attr]
    assert report.inputs == tuple(np.bincount(served, minlength=3))
    assert report.agreed[0] == report.agreed[1] == 0
    assert report.agreed[2] == report.inputs[2] > 0


def test_a_good_shadow_agrees_on_nearly_every_row(running: Device) -> None:
    start_shadow(running, build_package(models.nudged(models.gemm_classifier()), version=2))
    predict_all(running)
    report = running.manager.shadow_report()
    assert report is not None
    assert sum(report.agreed) >= 0.98 * sum(report.inputs)


def test_the_shadow_runs_on_the_sampled_share_only(running: Device) -> None:
    start_shadow(running, swapped(2), share=0.25)
    running.manager.shadow._rng = random.Random(1)
    for row in ROWS:
        running.manager.predict(row[None, :])
    report = running.manager.shadow_report()
    assert report is not None
    assert 60 <= sum(report.inputs) <= 140  # 400 requests at 25 %


def test_the_served_predict_never_waits_for_the_shadow_beyond_its_queue(running: Device) -> None:
    start_shadow(running, swapped(2))
    for row in ROWS[: QUEUE + 10]:  # nothing drains: the oldest sampled requests drop
        running.manager.shadow.offer(row[None, :], np.array([[0.1, 0.2, 0.7]]))
    assert running.manager.shadow.dropped == 10


def test_a_desired_state_without_the_shadow_stops_it_and_deletes_its_files(
    running: Device,
) -> None:
    start_shadow(running, swapped(2))
    assert any((running.state_dir / MODELS_DIR / SHADOW_DIR).iterdir())
    running.desired(with_shadow(running.fleet, None))
    assert running.manager.shadow.entry is None
    assert not (running.state_dir / MODELS_DIR / SHADOW_DIR).exists()
    predict_all(running)
    assert running.manager.shadow_report() is None


@pytest.mark.parametrize("role", ["release", "heartbeat"])
def test_a_shadow_signed_by_another_role_never_runs(running: Device, role: str) -> None:
    fleet = running.fleet
    entry = fleet.release(swapped(2))
    fleet.sim.beat()
    running.sync()
    trusted = running.trusted()
    running.desired(with_shadow(fleet, shadow_doc(fleet, entry, 10, role)))
    assert running.manager.shadow.entry is None
    assert running.manager.counters["refused.shadow.unsigned"] == 1
    assert running.trusted().shadow_version == trusted.shadow_version
    assert not any(f.sha256 == entry.sha256 for f in running.fetches())


def test_a_stale_shadow_assignment_stops_the_shadow(running: Device) -> None:
    fleet = running.fleet
    entry = fleet.release(swapped(2))
    fleet.sim.beat()
    running.sync()
    stale = shadow_doc(fleet, entry, 10)
    running.desired(with_shadow(fleet, shadow_doc(fleet, entry, 11)))
    running.serve()
    assert running.manager.shadow.status == "running"
    running.desired(with_shadow(fleet, stale))
    assert running.manager.shadow.entry is None
    assert running.manager.counters["refused.shadow.rollback"] == 1
    assert running.trusted().shadow_version == 11


def test_the_shadow_survives_a_restart(running: Device) -> None:
    start_shadow(running, swapped(2), share=1.0)
    restarted = running.restart()
    assert restarted.manager.shadow.status == "running"
    assert restarted.manager.shadow.share == 1.0
    predict_all(restarted)
    report = restarted.manager.shadow_report()
    assert report is not None
    assert report.agreed[0] == 0


def test_a_shadow_that_fails_its_health_check_never_runs(running: Device) -> None:
    start_shadow(running, package(2, "nan"))
    assert running.manager.shadow.status.startswith("failed: model_unhealthy")
    predict_all(running)
    assert running.manager.shadow_report() is None
    assert running.active == package(1).ref


def test_installing_the_shadows_version_reuses_its_package(running: Device) -> None:
    start_shadow(running, swapped(2))
    fetched = len(running.fetches())
    entry = running.fleet.sim.release.entries[-1]
    running.fleet.assign(entry)
    running.sync()
    running.desired()
    running.serve()
    assert running.active == swapped(2).ref
    assert len(running.fetches()) == fetched


def test_a_shadow_failing_on_real_inputs_counts_errors_and_the_served_predict_never_fails(
    running: Device,
) -> None:
    start_shadow(running, build_package(nan_above_classifier(), version=2, smoke=SMOKE))
    assert running.manager.shadow.status == "running"
    rows = ROWS.copy()
    rows[:, 0] = NAN_ABOVE + 1.0  # every row makes the shadow's scores NaN
    for start in range(0, len(rows), 8):
        running.manager.predict(rows[start : start + 8])  # served by v1: never raises
    report = running.manager.shadow_report()
    assert report is not None
    assert report.errors == sum(report.inputs) == len(rows)
    assert sum(report.agreed) == 0


def test_a_stalled_shadow_download_fails_then_starts_again(running: Device) -> None:
    fleet = running.fleet
    entry = fleet.release(swapped(2))
    fleet.sim.beat()
    running.sync()
    running.desired(with_shadow(fleet, shadow_doc(fleet, entry, 10)))
    running.answered = len(running.sent)  # the hub never answers these fetches
    shadow = running.manager.shadow
    assert shadow.status == "downloading"
    running.clock.advance(CONFIG.download.grace_ms / 1000 + 1)
    shadow.tick(running.clock.now_ms())
    assert shadow.status.startswith("failed: slow_retrieval: ")
    running.clock.advance(RETRY_MS / 1000)
    shadow.tick(running.clock.now_ms())
    assert shadow.status == "downloading"
    running.serve()
    assert shadow.status == "running"


def test_the_shadows_rows_are_counted_for_metrics(running: Device) -> None:
    start_shadow(running, swapped(2))
    predict_all(running)
    running.manager.shadow_report()
    families = {f.name: f for f in running.manager.metrics()}
    rows = {labels["outcome"]: value for labels, value in families["shadow_rows"].samples}
    served = classes(running.manager.runtime.predict(ROWS).scores)  # type: ignore[union-attr]
    assert rows == {
        "agreed": float((served == 2).sum()),
        "disagreed": float((served != 2).sum()),
        "failed": 0.0,
    }
    assert families["shadow_running"].samples == [({}, 1.0)]


def test_a_shadow_the_device_cannot_run_is_named_in_its_state_report(running: Device) -> None:
    start_shadow(running, package(2, "nan"), version=12)
    refused = running.manager.state_report().shadow
    assert refused is not None
    assert (refused.status, refused.assignment_version, refused.model.version) == (
        "refused",
        12,
        2,
    )
    assert refused.reason.startswith("model_unhealthy")
    running.desired(with_shadow(running.fleet, None))
    assert running.manager.state_report().shadow is None, "no shadow asked for: nothing to say"


def test_a_shadow_assignment_refused_by_the_trust_rules_is_named_in_the_state_report(
    running: Device,
) -> None:
    fleet = running.fleet
    entry = fleet.release(swapped(2))
    fleet.sim.beat()
    running.sync()
    running.desired(with_shadow(fleet, shadow_doc(fleet, entry, 10, "release")))
    refused = running.manager.state_report().shadow
    assert refused is not None
    assert (refused.status, refused.assignment_version) == ("refused", 10)
    assert refused.reason.startswith("unsigned")


def test_a_running_shadow_leaves_the_state_report_quiet(running: Device) -> None:
    start_shadow(running, swapped(2))
    assert running.manager.shadow.status == "running"
    assert running.manager.state_report().shadow is None
