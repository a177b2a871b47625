"""A real hub and a fleet of real agents on a real broker, for the rollout acceptance.

The hub is :class:`hub.service.HubService` (its scheduler ticks the rollouts every
``rollout_tick_s``); each device is an :class:`agent.device.Device` with its own key,
slots, onnxruntime session and MQTT link, sharing one job scheduler as the simulator's
fleet does. A load thread feeds every device real inputs through ``Device.predict``;
rows whose first feature exceeds :data:`NAN_ABOVE` make :func:`nan_above_classifier`
output NaN, which the agent counts as an inference error (and its watch window rolls
back when they pass its ``max_error_rate``).
"""

from __future__ import annotations

import contextlib
import io
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from onnx import helper, numpy_helper

from agent.config import AgentConfig
from agent.device import Device
from agent.download import DownloadPolicy
from agent.errors import AgentError
from agent.runtime import WatchPolicy
from agent.scheduler import ApsScheduler
from agent.updater import UpdaterConfig
from edgefleet.clock import SystemClock
from hub import keyring
from hub.context import HubContext
from hub.fleet import enrollment, rollouts
from hub.fleet.desired import set_desired
from hub.registry.artifacts import ArtifactStore
from hub.registry.registry import Registry
from hub.rollouts import RolloutSpec, Stage
from hub.rollouts.spec import GateSpec
from hub.service import HubService
from hub.settings import HubSettings
from hub.store.dialects import open_store
from protocol.messages import DeviceConfig
from tests import models
from tests.brokers import BrokerRunner

CLOCK = SystemClock()
MODEL = "churn"
FEATURES = 4
NAN_ABOVE = 2.5
UPDATER_WATCH = WatchPolicy(predictions=40, ms=4_000, max_error_rate=0.5)
CONFIG = DeviceConfig(telemetry_interval_s=1.0, window_s=0.5, retrain=False)


def nan_above_classifier(threshold: float = NAN_ABOVE) -> bytes:
    """:func:`tests.models.gemm_classifier`'s graph whose probabilities turn NaN for rows
    with ``x[:, 0] > threshold`` (``+ 0 * sqrt(threshold - x0)``): healthy on the smoke
    inputs, failing on real inputs beyond them."""
    rng = np.random.default_rng(5)
    inits = [
        numpy_helper.from_array(rng.normal(size=(FEATURES, 6)).astype(np.float32), "w1"),
        numpy_helper.from_array(rng.normal(size=6).astype(np.float32), "b1"),
        numpy_helper.from_array(rng.normal(size=(3, 6)).astype(np.float32), "w2"),
        numpy_helper.from_array(rng.normal(size=3).astype(np.float32), "b2"),
        numpy_helper.from_array(np.array([0], np.int64), "start"),
        numpy_helper.from_array(np.array([1], np.int64), "end"),
        numpy_helper.from_array(np.array([1], np.int64), "axis"),
        numpy_helper.from_array(np.array(threshold, np.float32), "threshold"),
        numpy_helper.from_array(np.array(0.0, np.float32), "zero"),
    ]
    nodes = [
        helper.make_node("Gemm", ["x", "w1", "b1"], ["h"]),
        helper.make_node("Relu", ["h"], ["hidden"]),
        helper.make_node("Gemm", ["hidden", "w2", "b2"], ["logits"], transB=1),
        helper.make_node("Softmax", ["logits"], ["soft"], axis=-1),
        helper.make_node("Slice", ["x", "start", "end", "axis"], ["x0"]),
        helper.make_node("Sub", ["threshold", "x0"], ["room"]),
        helper.make_node("Sqrt", ["room"], ["root"]),
        helper.make_node("Mul", ["root", "zero"], ["nan_or_zero"]),
        helper.make_node("Add", ["soft", "nan_or_zero"], ["probabilities"]),
    ]
    return models.build(
        nodes,
        [models.value_info("x", None, FEATURES)],
        [models.value_info("probabilities", None, 3)],
        inits,
    )


def reference() -> bytes:
    """Reference rows within [-1, 1]: the smoke inputs stay below :data:`NAN_ABOVE`."""
    x = np.random.default_rng(1).uniform(-1, 1, size=(200, FEATURES)).astype(np.float32)
    buffer = io.BytesIO()
    np.savez(buffer, X=x)
    return buffer.getvalue()


def hub_data(path: Path, extra: Sequence[bytes] = (), database: str = "") -> Path:
    """Key ring and three released versions: v1 and v2 good, v3 NaN beyond the smoke rows;
    ``extra`` models become v4, v5, ...; the store in ``path`` or at ``database``."""
    ring = keyring.init(path / "keys", now_ms=CLOCK.now_ms())
    settings = HubSettings(data_dir=path, database=database)
    store = open_store(settings.store_location)
    try:
        registry = Registry(
            HubContext(store, ring, CLOCK, settings),
            ArtifactStore(path / "artifacts"),
        )
        for model in (models.gemm_classifier(), models.gemm_classifier(hidden=7)):
            registry.register(model, name=MODEL, reference=reference(), actor="test")
        registry.register(nan_above_classifier(), name=MODEL, reference=reference(), actor="test")
        for model in extra:
            registry.register(model, name=MODEL, reference=reference(), actor="test")
    finally:
        store.close()
    return path


def hub_settings(data: Path, broker: BrokerRunner, prefix: str, database: str = "") -> HubSettings:
    return HubSettings(
        data_dir=data,
        database=database,
        broker_url=broker.url,
        topic_prefix=prefix,
        http_port=0,
        reconcile_interval_s=1.0,
        rollout_tick_s=0.25,
        offline_check_interval_s=0.5,
        offline_after_s=3.0,
    )


def eventually(check: Callable[[], bool], what: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


@dataclass
class Load:
    """Feeds every running device a batch every ``every_s``; ``bad_share`` of the rows
    have their first feature above :data:`NAN_ABOVE`."""

    devices: dict[str, Device]
    bad_share: float = 0.0
    every_s: float = 0.02
    rows: int = 1  # the agent fails a whole request when one row is NaN
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="load", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        rng = np.random.default_rng(0)
        while not self._stop.wait(self.every_s):
            for device in list(self.devices.values()):
                x = rng.uniform(-1, 1, size=(self.rows, FEATURES)).astype(np.float32)
                x[rng.random(self.rows) < self.bad_share, 0] = NAN_ABOVE + 1.0
                with contextlib.suppress(AgentError):  # NaN scores: the agent counts it
                    device.predict(x)


@dataclass
class Fleet:
    """Devices started against one hub; ``context``: the hub's (or one over its store)."""

    context: HubContext
    root: Path
    broker_url: str
    prefix: str
    token: str
    scheduler: ApsScheduler
    devices: dict[str, Device] = field(default_factory=dict)

    def start_device(self, device_id: str) -> Device:
        config = AgentConfig(
            device_id=device_id,
            state_dir=self.root / "devices" / device_id,
            broker_url=self.broker_url,
            topic_prefix=self.prefix,
            root_metadata=self.root / "root.json",
            enrollment_token=self.token,
            tags={"fleet": "f"},
            http_port=0,
            telemetry_interval_s=1.0,
            drain_interval_s=0.1,
            ack_timeout_s=1.0,
            stop_grace_s=0.5,
            retrain_interval_s=3600,
            window_s=0.5,
        )
        updater = UpdaterConfig(
            health_runs=1,
            tick_s=0.2,
            download=DownloadPolicy(stall_ms=2_000),
            watch=UPDATER_WATCH,
        )
        device = Device(config, updater=updater, scheduler=self.scheduler)
        device.start()
        self.devices[device_id] = device
        return device

    def stop_device(self, device_id: str) -> None:
        self.devices.pop(device_id).stop()

    def serving(self, device_id: str) -> int | None:
        runtime = self.devices[device_id].manager.runtime
        return runtime.ref.version if runtime is not None else None

    def reported(self, device_id: str) -> int | None:
        found = self.context.store.devices.find(device_id)
        return None if found is None else found.active_version

    def put_on(self, version: int, ids: list[str]) -> None:
        """Assign ``version`` to ``ids`` directly (before any rollout); wait until they
        serve it and the hub has their report."""
        for device_id in ids:
            set_desired(
                self.context,
                device_id=device_id,
                model_name=MODEL,
                model_version=version,
                config=CONFIG,
                actor="test",
            )
        eventually(
            lambda: all(self.reported(d) == version for d in ids),
            f"{len(ids)} devices on v{version}",
        )


def prepare(tmp_path: Path, extra: Sequence[bytes] = (), database: str = "") -> tuple[Path, str]:
    """The hub's data directory (see :func:`hub_data`), the devices' pinned root beside
    it, and a topic prefix of the test's own."""
    data = hub_data(tmp_path / "hub", extra, database)
    (tmp_path / "root.json").write_bytes(
        (data / "keys" / keyring.ROOT_DIR / "1.root.json").read_bytes()
    )
    return data, f"ro{time.monotonic_ns() % 1_000_000}"


@contextmanager
def devices(
    context: HubContext, tmp_path: Path, broker_url: str, prefix: str, count: int
) -> Iterator[Fleet]:
    """``count`` devices enrolled with a fleet token, all serving v1 (stopped on exit)."""
    token = enrollment.create_token(
        context.store, kind="fleet", by="test", now_ms=CLOCK.now_ms(),
        expires_at=CLOCK.now_ms() + 3_600_000,
    )  # fmt: skip
    scheduler = ApsScheduler(threads=8)
    scheduler.start()
    fleet = Fleet(context, tmp_path, broker_url, prefix, token.secret, scheduler)
    try:
        for k in range(count):
            fleet.start_device(f"dev-{k:02d}")
        ids = list(fleet.devices)

        def enrolled() -> bool:
            found = [context.store.devices.find(i) for i in ids]
            return all(d is not None and d.status == "active" for d in found)

        eventually(enrolled, "devices enrolled")
        fleet.put_on(1, ids)
        yield fleet
    finally:
        stoppers = [threading.Thread(target=d.stop) for d in fleet.devices.values()]
        for thread in stoppers:
            thread.start()
        for thread in stoppers:
            thread.join()
        fleet.devices.clear()
        scheduler.shutdown()


@contextmanager
def live_fleet(
    tmp_path: Path,
    broker: BrokerRunner,
    count: int,
    extra: Sequence[bytes] = (),
    database: str = "",
) -> Iterator[Fleet]:
    """A hub in this process and ``count`` devices serving v1 (stopped on exit);
    ``extra`` models registered as v4, v5, ...; the store in the hub's data directory or
    at ``database`` (PostgreSQL)."""
    data, prefix = prepare(tmp_path, extra, database)
    with (
        HubService.start(hub_settings(data, broker, prefix, database)) as hub,
        devices(hub.context, tmp_path, hub.broker_url, prefix, count) as fleet,
    ):
        yield fleet


def rollout_in_stage_2(ctx: HubContext) -> str:
    """A rollout of v2 over 10 % (bake 0.5 s), 50 % (bake 4 s) and 100 %, gated on update
    success, waited for until it bakes its second stage (some devices touched, not all): where
    the crash tests kill a hub. Its id."""
    success = (GateSpec.default("update_success"),)
    spec = RolloutSpec(
        MODEL, 2, seed=4, device_timeout_ms=30_000,
        stages=(
            Stage(10, bake_ms=500, extend_ms=0, gates=success),
            Stage(50, bake_ms=4_000, extend_ms=0, gates=success),
            Stage(100, bake_ms=0, gates=success),
        ),
    )  # fmt: skip
    rollout_id = rollouts.create(ctx, spec, actor="test").rollout.rollout_id

    def in_stage_2() -> bool:
        rollout = rollouts.get(ctx, rollout_id).rollout
        return rollout.phase == "baking" and rollout.stage == 1

    eventually(in_stage_2, "stage 2")
    return rollout_id
