"""Label-free performance across the wire: calibration at registration, the agent's
confidence sketch (equal to the hub core's :func:`hub.drift.performance.sketch`), labelled
feedback counted in the window it arrives in, and the hub's estimate from merged buckets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from agent.sketches import SketchWindow
from hub.drift.performance import Calibration, sketch
from hub.drift.reference import Reference
from hub.monitor import views
from hub.monitor.ingest import DriftMerger
from hub.monitor.jobs import score_job
from hub.settings import HubSettings
from protocol import canonical, schema
from tests.clock import FakeClock
from tests.hub.monitor.drifthub import (
    FEATURES,
    MODEL,
    add_devices,
    admitted,
    ingest,
    register_sensor,
)
from tests.hub.test_registry import Hub, make_hub


@pytest.fixture
def hub(tmp_path: Path, clock: FakeClock) -> Hub:
    hub = make_hub(tmp_path, clock)
    add_devices(hub, {f"d{i}": {"region": "eu"} for i in range(12)})
    return hub


def test_registration_keeps_a_calibration_that_helps_and_the_digest_ignores_none(
    hub: Hub,
) -> None:
    sensor = register_sensor(hub)  # validation labels are noise: the model is overconfident
    profile = sensor.manifest.profile
    assert profile is not None
    assert profile.calibration is not None
    assert profile.confidence_bins == 10
    cal = profile.calibration
    # confident rows are right about a third of the time: the map pulls them down
    assert float(np.interp(0.95, cal.knots_x, cal.knots_y)) < 0.5
    again = schema.from_json(
        type(profile), canonical.loads(canonical.dumps(schema.to_json(profile)))
    )
    assert again == profile
    bare = type(profile)(profile.features, profile.predictions, profile.rows)
    assert Reference.from_profile(bare).digest != Reference.from_profile(profile).digest


def test_agent_sketch_equals_the_hub_cores_and_feedback_counts_once(hub: Hub) -> None:
    sensor = register_sensor(hub)
    profile = sensor.manifest.profile
    assert profile is not None
    assert profile.calibration is not None
    rng = np.random.default_rng(4)
    x = rng.normal(size=(200, FEATURES))
    scores = sensor.session.run(None, {"x": x.astype(np.float32)})[0]
    window = SketchWindow(sensor.manifest, 0, model=sensor.ref)
    ids = [f"p{i}" for i in range(len(x))]
    window.observe(x, scores, 1.0, rows=len(x), ids=ids)
    labels = rng.integers(0, 3, size=len(x))
    given = {ids[i]: int(labels[i]) for i in range(0, 200, 2)}
    assert window.label(given) == 100
    assert window.label(given) == 0  # a prediction's feedback counts once
    assert window.label({"nobody": 1, ids[1]: "a string"}) == 0
    delta = window.flush(1000)
    assert delta.confidence is not None
    calibration = Calibration(profile.calibration.knots_x, profile.calibration.knots_y)
    known = np.full(len(x), -1)
    known[::2] = labels[::2]
    expected = sketch(scores, calibration, profile.confidence_bins, labels=known)
    np.testing.assert_allclose(np.array(delta.confidence.rows()), expected, rtol=1e-12)
    assert window.flush(2000).confidence is None  # nothing predicted since


def test_hub_estimates_accuracy_from_the_merged_confidence_sketches(hub: Hub) -> None:
    sensor = register_sensor(hub)
    merger = DriftMerger(hub.store)
    rng = np.random.default_rng(8)
    frames = []
    for i in range(12):
        x = rng.normal(size=(80, FEATURES))
        window = SketchWindow(sensor.manifest, hub.clock.now_ms(), model=sensor.ref)
        window.observe(x, sensor.session.run(None, {"x": x.astype(np.float32)})[0], 1.0, rows=80)
        frames.append(admitted(f"d{i}", 1, window.flush(hub.clock.now_ms() + 1000)))
    ingest(merger, hub, frames)
    hub.clock.advance(600)
    score_job(hub.context(settings=HubSettings(data_dir=hub.root)))
    trend = views.trend(hub.store, MODEL, since_ms=0, until_ms=2**62)
    [bucket] = trend["buckets"]
    perf = bucket["performance"]
    assert perf["predictions"] == 12 * 80
    assert perf["estimated_accuracy"] == pytest.approx(1 / 3, abs=0.1)  # labels were noise
    assert perf["reference_accuracy"] == pytest.approx(1 / 3, abs=0.1)
