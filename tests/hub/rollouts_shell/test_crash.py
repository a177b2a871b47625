"""kill -9 of the hub mid-stage, restart: the rollout finishes, and no device was ever
given two desired states for the rollout (issue 12's crash-safety acceptance); the same in
the shadow stage, where no shadow assignment is signed twice.

The hub runs as ``edgefleet hub serve`` in a child process; the devices and the test's
own view of the store (SQLite in WAL mode, shared with the hub) stay in this one.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import httpx

from hub import keyring
from hub.context import HubContext
from hub.fleet import rollouts
from hub.rollouts import RolloutSpec, ShadowStage, Stage
from hub.rollouts.spec import GateSpec
from hub.settings import HubSettings
from hub.store.dialects import open_store
from tests import models
from tests.brokers import BrokerRunner, free_port
from tests.hub.rollouts_shell.live import (
    CLOCK,
    MODEL,
    Load,
    devices,
    eventually,
    prepare,
    rollout_in_stage_2,
)

REPO = Path(__file__).resolve().parents[3]
SUCCESS = (GateSpec.default("update_success"),)


@contextmanager
def hub_process(
    data: Path, broker: BrokerRunner, prefix: str, log: Path
) -> Iterator[subprocess.Popen[bytes]]:
    port = free_port()
    command = [
        sys.executable, "-m", "edgefleet.cli", "hub", "serve", "--data", str(data),
        "--broker", broker.url, "--topic-prefix", prefix, "--port", str(port),
        "--rollout-tick", "0.25", "--reconcile-interval", "1", "--offline-after", "30",
    ]  # fmt: skip
    with log.open("a") as stderr:
        process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=stderr)
    try:
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            process.wait(20)


def test_a_hub_killed_mid_stage_resumes_the_rollout_and_gives_no_device_two_assignments(
    tmp_path: Path, mosquitto_broker: BrokerRunner
) -> None:
    data, prefix = prepare(tmp_path)
    log = tmp_path / "hub.log"
    with ExitStack() as stack:
        store = open_store(data / "hub.db")
        stack.callback(store.close)
        ctx = HubContext(store, keyring.load(data / "keys"), CLOCK, HubSettings(data_dir=data))
        first = stack.enter_context(hub_process(data, mosquitto_broker, prefix, log))
        fleet = stack.enter_context(devices(ctx, tmp_path, mosquitto_broker.url, prefix, 10))
        load = Load(fleet.devices)
        load.start()
        stack.callback(load.stop)
        rollout_id = rollout_in_stage_2(ctx)
        os.kill(first.pid, signal.SIGKILL)
        first.wait()
        touched_at_kill = len(store.rollouts.progress(rollout_id))
        assert 0 < touched_at_kill < 10
        stack.enter_context(hub_process(data, mosquitto_broker, prefix, log))
        eventually(
            lambda: rollouts.get(ctx, rollout_id).rollout.phase == "completed",
            "the rollout completes after the restart",
        )
        eventually(lambda: all(fleet.serving(d) == 2 for d in fleet.devices), "all on v2")
        for device_id in fleet.devices:
            versions = [
                record.model_version
                for k in range(1, store.desired.next_assignment_version(device_id))
                if (record := store.desired.assignment(device_id, k)) is not None
            ]
            assert versions == [1, 2], f"{device_id}: {versions}"


def test_a_hub_killed_in_the_shadow_stage_resumes_it_and_signs_no_shadow_twice(
    tmp_path: Path, mosquitto_broker: BrokerRunner
) -> None:
    agrees = models.nudged(models.gemm_classifier())  # v4: agrees with v1 on nearly every row
    data, prefix = prepare(tmp_path, [agrees])
    log = tmp_path / "hub.log"
    with ExitStack() as stack:
        store = open_store(data / "hub.db")
        stack.callback(store.close)
        ctx = HubContext(store, keyring.load(data / "keys"), CLOCK, HubSettings(data_dir=data))
        first = stack.enter_context(hub_process(data, mosquitto_broker, prefix, log))
        fleet = stack.enter_context(devices(ctx, tmp_path, mosquitto_broker.url, prefix, 10))
        load = Load(fleet.devices, rows=4)
        load.start()
        stack.callback(load.stop)
        spec = RolloutSpec(
            MODEL, 4, seed=4, device_timeout_ms=30_000,
            shadow=ShadowStage(percent=30, bake_ms=3_000, extend_ms=60_000),
            stages=(Stage(50, bake_ms=300, extend_ms=0, gates=SUCCESS),
                    Stage(100, bake_ms=0, gates=SUCCESS)),
        )  # fmt: skip
        rollout_id = rollouts.create(ctx, spec, actor="test").rollout.rollout_id

        def shadows_run() -> bool:
            on = [d for d in fleet.devices.values() if d.manager.shadow.status == "running"]
            return rollouts.get(ctx, rollout_id).rollout.phase == "shadow" and len(on) == 3

        eventually(shadows_run, "three shadows running on the devices")
        os.kill(first.pid, signal.SIGKILL)
        first.wait()
        shadowed = {s.device_id for s in store.rollouts.shadows(rollout_id)}
        assert len(shadowed) == 3
        stack.enter_context(hub_process(data, mosquitto_broker, prefix, log))
        eventually(
            lambda: rollouts.get(ctx, rollout_id).rollout.phase == "completed",
            "the rollout completes after the restart",
        )
        eventually(lambda: all(fleet.serving(d) == 4 for d in fleet.devices), "all on v4")
        assert "advance: shadow -> baking stage 1" in "\n".join(
            t.line for t in store.rollouts.timeline(rollout_id)
        )
        for device_id in fleet.devices:
            versions = [
                record.model_version
                for k in range(1, store.desired.next_assignment_version(device_id))
                if (record := store.desired.assignment(device_id, k)) is not None
            ]
            expected = [1, 4, 4] if device_id in shadowed else [1, 4]
            assert versions == expected, f"{device_id}: {versions}"
