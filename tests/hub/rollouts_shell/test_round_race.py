"""Two writers of a device's desired state at once: a round's end (``announce`` clears the
round from every device's config and republishes) and a rollout's tick (assigns a new
version). Each must keep what the other wrote, or the rollout's devices are told their old
version again and its first stage waits for the device timeout."""

from __future__ import annotations

import threading
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from hub.context import HubContext
from hub.federated.rounds import announce
from hub.fleet import rollouts
from hub.fleet.desired import publish_desired, set_desired
from hub.rollouts import RolloutSpec, Stage
from hub.rollouts.spec import GateSpec
from hub.store.rows import Device
from protocol import canonical
from protocol.frame import Message
from protocol.messages import DeviceConfig
from tests import models
from tests.clock import FakeClock
from tests.hub.test_registry import Hub, make_hub

MODEL = "iris"
DEVICES = 20
SPEC = RolloutSpec(
    MODEL,
    2,
    stages=(Stage(100, bake_ms=0, gates=(GateSpec.default("update_success"),)),),
    max_updating=DEVICES,
    device_timeout_ms=3_600_000,
)


@pytest.fixture
def hub(tmp_path: Path) -> Hub:
    """v1 and v2 released; DEVICES devices on v1, told of a live round on v1."""
    made = make_hub(tmp_path, FakeClock())
    made.register(models.gemm_classifier(hidden=6))
    made.register(models.gemm_classifier(hidden=7))
    v1 = made.store.registry.version(MODEL, 1)
    assert v1 is not None
    ctx = made.context()
    for k in range(DEVICES):
        device_id = f"d-{k:02d}"
        made.store.devices.add(
            Device(device_id, "ab" * 32, "active", first_seen=0, online=True,
                   active_name=MODEL, active_version=1, active_sha256=v1.sha256)
        )  # fmt: skip
        set_desired(ctx, device_id=device_id, model_name=MODEL, model_version=1,
                    config=DeviceConfig(round_id="round-1"), actor="test")  # fmt: skip
    return made


class TickBetweenReadAndWrite:
    """The store's desired states, with a rollout tick started on another thread right
    after the twins are read: it runs then, unless the reader holds the write lock."""

    def __init__(self, ctx: HubContext, rollout_id: str) -> None:
        self.real = ctx.store.desired
        self.ctx, self.rollout_id = ctx, rollout_id
        self.thread: threading.Thread | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)

    def twins(self) -> Any:
        read = self.real.twins()
        if self.thread is None:
            tick = (self.ctx, self.rollout_id)
            self.thread = threading.Thread(target=rollouts.tick_one, args=tick)
            self.thread.start()
            self.thread.join(0.5)  # done, unless it waits for the reader's transaction
        return read


def converge(made: Hub) -> None:
    """Devices whose desired state names v2 report it active (as agents would)."""
    v2 = made.store.registry.version(MODEL, 2)
    assert v2 is not None
    for twin in made.store.desired.twins():
        if twin.desired.model_version == 2:
            made.store.devices.put(replace(twin.device, active_version=2, active_sha256=v2.sha256))


def test_a_rollout_started_as_a_round_ends_completes_its_stage_at_once(
    hub: Hub, monkeypatch: pytest.MonkeyPatch
) -> None:
    ctx = hub.context()
    rollout_id = rollouts.create(ctx, SPEC, actor="test").rollout.rollout_id
    racing = TickBetweenReadAndWrite(ctx, rollout_id)
    monkeypatch.setattr(ctx.store, "desired", racing)
    announce(ctx, MODEL, 1, None, None)  # the round's end
    assert racing.thread is not None
    racing.thread.join()
    monkeypatch.undo()
    for twin in ctx.store.desired.twins():
        config = DeviceConfig(**canonical.loads(twin.desired.config.encode()))
        assert (twin.desired.model_version, config.round_id) == (2, None), twin.device.id
    converge(hub)
    rollouts.tick_one(ctx, rollout_id)
    assert rollouts.get(ctx, rollout_id).rollout.phase == "completed"


class ReassignedWhileSending:
    """A downlink during whose send another writer gives the device v2."""

    def __init__(self, other: HubContext) -> None:
        self.other = other
        self.sent: list[Message] = []

    def send(self, device_id: str, message: Message, *, retain: bool = False) -> int | None:
        self.sent.append(message)
        if len(self.sent) == 1:
            set_desired(self.other, device_id=device_id, model_name=MODEL, model_version=2,
                        actor="test")  # fmt: skip
        return len(self.sent)


def test_a_desired_state_replaced_while_its_older_one_is_sent_stays_unpublished(
    hub: Hub,
) -> None:
    downlink = ReassignedWhileSending(hub.context())
    ctx = hub.context(downlink=downlink)
    assert publish_desired(ctx, "d-00")
    after = hub.store.desired.get("d-00")
    assert after.model_version == 2
    assert after.published_at is None, "the v1 frame sent must not mark v2 published"
    assert publish_desired(ctx, "d-00")
    assert hub.store.desired.get("d-00").published_at is not None
