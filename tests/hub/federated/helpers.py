"""A hub with a registered, released model with a head, and devices that send it deltas.

Ingest is the real worker over a real SQLite store (:class:`tests.hub.hubsim.HubSim`,
frames signed by each device's own key); registry, aggregation, validation and release
are the real ones. No broker (that is tests/integration/test_rounds_e2e.py) and a fake
clock, so deadlines and restarts are exact.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np

from hub.context import HubContext
from hub.federated import rounds
from hub.registry.artifacts import ArtifactStore
from hub.registry.registry import Registry
from hub.rounds.policy import ModelPolicy
from protocol import canonical, schema
from protocol.heads import find_head
from protocol.manifest import Head
from protocol.messages import DeltaUpload, DeviceConfig, ModelRef
from protocol.tensors import encode_tensors
from simulator.task import ShiftedTask
from tests.hub.hubsim import HubSim, SimDevice

MODEL = "task"


def npz(**arrays: np.ndarray) -> bytes:
    out = io.BytesIO()
    np.savez(out, **arrays)  # type: ignore[arg-type]
    return out.getvalue()


class FlHub:
    """HubSim + context + registry, with one released version of the task's model."""

    def __init__(self, tmp_path: Path, task: ShiftedTask | None = None, **policy: Any) -> None:
        self.sim = HubSim(tmp_path)
        self.ctx: HubContext = self.sim.context()
        self.store = self.sim.store
        self.task = task or ShiftedTask.build(seed=0)
        self.registry = Registry(self.ctx, ArtifactStore(self.ctx.settings.artifacts_dir))
        rng = np.random.default_rng(0)
        x_ref, _ = self.task.sample("A", 400, rng)
        self.registry.register(self.task.model, name=MODEL, reference=npz(X=x_ref), actor="test")
        head = find_head(self.task.model)
        assert head is not None
        self.head: Head = head
        x_val, y_val = self.task.sample("B", 500, rng)
        self.store.rounds.put_validation_set(
            MODEL, npz(X=x_val, y=y_val), rows=500, at_ms=self.sim.clock.now_ms(), by="test"
        )
        if policy:
            self.set_policy(**policy)

    def set_policy(self, **fields: Any) -> None:
        text = canonical.dumps(ModelPolicy(**fields).to_json()).decode()
        self.store.rounds.put_policy(MODEL, text, at_ms=0, by="test")

    def ref(self, version: int = 1) -> ModelRef:
        row = self.store.registry.version(MODEL, version)
        assert row is not None
        return ModelRef(MODEL, version, row.sha256)

    def device(self, name: str) -> SimDevice:
        return self.sim.device(name, enrolled=True)

    def delta(
        self,
        scale: float = 0.1,
        *,
        seed: int = 0,
        version: int = 1,
        round_id: str | None = None,
        samples: int = 100,
        tensors: bytes | None = None,
    ) -> DeltaUpload:
        rng = np.random.default_rng(seed)
        h = self.head
        arrays = {
            h.weight: (rng.normal(size=(h.n_features, h.n_outputs)) * scale).astype(np.float32),
            h.bias or "bias": (rng.normal(size=h.n_outputs) * scale).astype(np.float32),
        }
        return DeltaUpload(
            base=self.ref(version),
            num_samples=samples,
            metric="accuracy",
            before=0.5,
            after=0.6,
            clip_norm=10.0,
            tensors=tensors if tensors is not None else encode_tensors(arrays),
            round_id=round_id,
        )

    def send(self, dev: SimDevice, message: DeltaUpload) -> None:
        self.sim.send(dev.frame(message))

    def open(self, **kwargs: Any) -> str:
        return rounds.open_round(self.ctx, MODEL, actor="test", **kwargs).round_id

    def verdicts(self, slot: str) -> list[tuple[str, str, str | None]]:
        return [(v.device_id, v.status, v.reason) for v in self.store.rounds.verdicts(slot)]


def desired_config(hub: FlHub, device_id: str) -> tuple[str | None, str]:
    twin = next(t for t in hub.store.desired.twins() if t.desired.device_id == device_id)
    config = schema.from_json(DeviceConfig, canonical.loads(twin.desired.config.encode()))
    return config.round_id, config.update_kind
