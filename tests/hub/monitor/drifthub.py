"""A hub registry with a drift-profiled model, and data windows the agent's way.

The model reads 10 features and ignores two of them (``f2`` and ``f7``: their rows of the
first layer are zero), so a shift of those two moves the inputs and not the predictions:
an alert on them must name exactly them. Windows are counted by the agent's own
:class:`agent.sketches.SketchWindow` over the model's real outputs (onnxruntime).
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort
from onnx import helper, numpy_helper

from agent.sketches import SketchWindow
from hub.ingest.rules import Admitted
from hub.monitor.ingest import DriftMerger
from hub.store.rows import Device
from protocol.manifest import ModelManifest
from protocol.messages import DataDelta, ModelRef
from tests import models
from tests.hub.test_registry import Hub

MODEL = "sensor"
FEATURES = 10
IGNORED = (2, 7)


def sensor_model(seed: int = 3) -> bytes:
    rng = np.random.default_rng(seed)
    w1 = rng.normal(size=(FEATURES, 8)).astype(np.float32)
    w1[list(IGNORED)] = 0.0
    inits = [
        numpy_helper.from_array(w1, "w1"),
        numpy_helper.from_array(rng.normal(size=8).astype(np.float32), "b1"),
        numpy_helper.from_array(rng.normal(size=(3, 8)).astype(np.float32), "w2"),
        numpy_helper.from_array(rng.normal(size=3).astype(np.float32), "b2"),
    ]
    nodes = [
        helper.make_node("Gemm", ["x", "w1", "b1"], ["h"]),
        helper.make_node("Relu", ["h"], ["hidden"]),
        helper.make_node("Gemm", ["hidden", "w2", "b2"], ["logits"], transB=1),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=-1),
    ]
    return models.build(
        nodes,
        [models.value_info("x", None, FEATURES)],
        [models.value_info("probabilities", None, 3)],
        inits,
    )


def npz(**arrays: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)  # type: ignore[arg-type]
    return buffer.getvalue()


def reference_rows(rows: int = 4000, seed: int = 11) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(rows, FEATURES)).astype(np.float32)


@dataclass
class Sensor:
    """The registered model: its manifest and an onnxruntime session over its bytes."""

    manifest: ModelManifest
    session: ort.InferenceSession

    @property
    def ref(self) -> ModelRef:
        return ModelRef(self.manifest.name, self.manifest.version, "0" * 64)

    def window(self, x: np.ndarray, start_ms: int, end_ms: int) -> DataDelta:
        """One data window of rows ``x``, counted by the agent's sketch code."""
        sketch = SketchWindow(self.manifest, start_ms, model=self.ref)
        scores = self.session.run(None, {"x": x.astype(np.float32)})[0]
        sketch.observe(x, scores, 1.0, rows=len(x))
        return sketch.flush(end_ms)


def register_sensor(hub: Hub) -> Sensor:
    model = sensor_model()
    x_val = reference_rows(500, seed=12)
    y_val = np.random.default_rng(13).integers(0, 3, size=500)
    done = hub.register(
        model, name=MODEL, reference=npz(X=reference_rows()), validation=npz(X=x_val, y=y_val)
    )
    return Sensor(done.manifest, ort.InferenceSession(model, providers=["CPUExecutionProvider"]))


def add_devices(hub: Hub, tags: Mapping[str, Mapping[str, str]]) -> None:
    for device_id, device_tags in tags.items():
        hub.store.devices.add(
            Device(device_id, "00" * 32, "active", hub.clock.now_ms(), tags=dict(device_tags))
        )


def admitted(device_id: str, seq: int, delta: DataDelta) -> Admitted:
    return Admitted(device_id, "data", seq, delta.window_end, delta, {}, b"")


def ingest(merger: DriftMerger, hub: Hub, frames: list[Admitted]) -> int:
    """Merge as the ingest worker does: inside one transaction."""
    with hub.store.atomic():
        return merger.merge(frames, hub.clock.now_ms())
