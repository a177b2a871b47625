"""Exact mode through the real ingest, store, screening and round closer: devices send the
sufficient statistics of their head rows, the hub solves the ridge problem once, and the
candidate is the head trained centrally on the union of their rows."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from hub.federated import rounds
from hub.fleet.desired import set_desired
from hub.registry.profile import ModelRunner
from hub.rounds.exact import solve_ridge
from protocol.headparams import read_head
from protocol.linearstats import local_stats, targets, to_tensors
from protocol.manifest import ModelManifest
from protocol.messages import DeltaUpload
from protocol.package import decode_package
from protocol.tensors import encode_tensors
from tests.hub.federated.helpers import MODEL, FlHub, desired_config

L2 = 1e-3
DEVICES = 4


@pytest.fixture
def hub(tmp_path: Path) -> FlHub:
    return FlHub(tmp_path, mode="exact", exact_l2=L2, exact_min_rows=32, auto_release=True)


def head_rows(hub: FlHub, x: np.ndarray) -> np.ndarray:
    package = decode_package(hub.registry.download(MODEL, 1))
    manifest: ModelManifest = package.manifest
    return ModelRunner(package.model, manifest.inputs[0]).run(x, hub.head.feature)


def stats_upload(hub: FlHub, features: np.ndarray, y: np.ndarray, round_id: str) -> DeltaUpload:
    stats = local_stats(features, targets(hub.head, y))
    return DeltaUpload(
        base=hub.ref(),
        num_samples=stats.count,
        metric="accuracy",
        before=0.5,
        after=0.5,
        clip_norm=0.0,
        tensors=encode_tensors(to_tensors(stats)),
        round_id=round_id,
    )


def test_an_exact_round_releases_the_centrally_trained_head(hub: FlHub) -> None:
    round_id = hub.open(target_deltas=DEVICES, min_deltas=1)
    x, y = hub.task.sample("B", 400, np.random.default_rng(7))
    features = head_rows(hub, x)
    for i in range(DEVICES):  # non-IID: each device holds one slice of the rows
        rows = slice(i * 100, (i + 1) * 100)
        hub.send(hub.device(f"dev-{i}"), stats_upload(hub, features[rows], y[rows], round_id))
    rounds.tick(hub.ctx)
    record = hub.store.rounds.round(round_id)
    assert record is not None
    assert record.state == "accepted", record.reason
    candidate = decode_package(hub.registry.download(MODEL, record.candidate_version or 0))
    w, b = read_head(candidate.model, hub.head)
    base = read_head(decode_package(hub.registry.download(MODEL, 1)).model, hub.head)
    central_w, central_b = solve_ridge(
        local_stats(features, targets(hub.head, y)), l2=L2, anchor=base
    )
    # statistics travel as float32: the solve agrees with the central one to that precision
    np.testing.assert_allclose(w, central_w, atol=2e-3)
    np.testing.assert_allclose(b, central_b, atol=2e-3)
    lineage = hub.store.registry.version(MODEL, record.candidate_version or 0)
    assert lineage is not None
    assert '"strategy":"exact(ridge)"' in (lineage.lineage or "")


def test_exact_mode_refuses_statistics_that_do_not_fit_the_head(hub: FlHub) -> None:
    round_id = hub.open(target_deltas=DEVICES, min_deltas=1)
    x, y = hub.task.sample("B", 100, np.random.default_rng(8))
    features = head_rows(hub, x)
    good = stats_upload(hub, features, y, round_id)
    lying = replace(good, num_samples=good.num_samples * 1000)
    few = stats_upload(hub, features[:5], y[:5], round_id)
    delta = hub.delta(round_id=round_id)  # a delta where the round takes statistics
    for i, upload in enumerate((lying, few, delta)):
        hub.send(hub.device(f"dev-{i}"), upload)
    got = {device: (status, reason) for device, status, reason in hub.verdicts(round_id)}
    assert got == {
        "dev-0": ("refused", "shape_mismatch"),
        "dev-1": ("refused", "shape_mismatch"),
        "dev-2": ("refused", "shape_mismatch"),
    }


def test_an_exact_round_tells_devices_to_send_statistics_and_stops_when_it_ends(
    hub: FlHub,
) -> None:
    hub.device("dev-0")
    set_desired(hub.ctx, device_id="dev-0", model_name=MODEL, model_version=1, actor="test")
    round_id = hub.open(target_deltas=DEVICES, min_deltas=1)
    assert desired_config(hub, "dev-0") == (round_id, "stats")
    rounds.cancel_round(hub.ctx, round_id, actor="test")
    assert desired_config(hub, "dev-0") == (None, "delta")
