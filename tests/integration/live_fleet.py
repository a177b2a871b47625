"""A real hub and a real device over a real broker, for the attacks on the downlink.

:func:`live_hub` starts :class:`hub.service.HubService` on a data directory with a key
ring and one released model; :func:`live_device` starts an :class:`agent.device.Device`
enrolled with a token. Both run on the wall clock (devices judge heartbeats and seqs by
real time). Nothing is a double: the device verifies, downloads, installs and reports
exactly as on a machine of its own.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from agent.config import AgentConfig
from agent.device import Device
from agent.download import DownloadPolicy
from agent.updater import UpdaterConfig
from edgefleet.clock import SystemClock
from hub import keyring
from hub.context import HubContext
from hub.fleet import enrollment
from hub.fleet.desired import set_desired
from hub.registry.artifacts import ArtifactStore
from hub.registry.registry import Registry
from hub.service import HubService
from hub.settings import HubSettings
from hub.store.dialects import open_store
from protocol.messages import ModelRef
from protocol.topics import Topics
from tests import models
from tests.brokers import BrokerRunner
from tests.hub.test_registry import reference

CLOCK = SystemClock()
MODEL = "churn"
WAIT_S = 45.0
UPDATER = UpdaterConfig(health_runs=1, tick_s=0.2, download=DownloadPolicy(stall_ms=2_000))


def eventually(check: Callable[[], bool], what: str, timeout_s: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def hub_data(path: Path, versions: int = 2) -> Path:
    """A data directory with a key ring (root 2-of-3, every key present) and ``versions``
    released versions of one model."""
    ring = keyring.init(path / "keys", now_ms=CLOCK.now_ms())
    store = open_store(path / "hub.db")
    try:
        registry = Registry(
            HubContext(store, ring, CLOCK, HubSettings(data_dir=path)),
            ArtifactStore(path / "artifacts"),
        )
        for seed in range(versions):
            registry.register(
                models.gemm_classifier(hidden=6 + seed),
                name=MODEL,
                reference=reference(),
                actor="test",
            )
    finally:
        store.close()
    return path


def hub_settings(data: Path, broker: BrokerRunner, topics: Topics) -> HubSettings:
    return HubSettings(
        data_dir=data,
        broker_url=broker.url,
        topic_prefix=topics.prefix,
        http_port=0,
        reconcile_interval_s=1.0,
        keyring_check_interval_s=0.3,
    )


@dataclass
class LiveDevice:
    device: Device
    config: AgentConfig

    @property
    def id(self) -> str:
        return self.config.device_id

    def serving(self) -> ModelRef | None:
        runtime = self.device.manager.runtime
        return runtime.ref if runtime is not None else None

    def outbox_empty(self) -> bool:
        return self.device.agent.outbox.stats().depth == 0

    def flags(self) -> tuple[str, ...]:
        return self.device.manager.state_report().flags


def live_device(hub: HubService, root: Path, state: Path, device_id: str) -> LiveDevice:
    """A started device, enrolled with a single-use token (the caller stops it)."""
    token = enrollment.create_token(hub.store, kind="single", by="test", now_ms=CLOCK.now_ms())
    config = AgentConfig(
        device_id=device_id,
        state_dir=state,
        broker_url=hub.broker_url,
        topic_prefix=hub.settings.topic_prefix,
        root_metadata=root,
        enrollment_token=token.secret,
        http_port=0,
        telemetry_interval_s=3600,
        drain_interval_s=0.1,
        ack_timeout_s=1.0,
        stop_grace_s=0.5,
        retrain_interval_s=3600,
        window_s=3600,
    )
    device = Device(config, updater=UPDATER)
    device.start()
    live = LiveDevice(device, config)
    eventually(lambda: _active(hub, device_id), f"{device_id} enrolled")
    return live


def _active(hub: HubService, device_id: str) -> bool:
    found = hub.store.devices.find(device_id)
    return found is not None and found.status == "active"


def assign(ctx: HubContext, device: LiveDevice, version: int) -> ModelRef:
    """Make ``version`` the device's desired model; the reference it should serve."""
    assignment = set_desired(
        ctx, device_id=device.id, model_name=MODEL, model_version=version, actor="test"
    )
    entry = assignment.entry
    return ModelRef(entry.name, entry.version, entry.sha256)


def write_root(hub_dir: Path, to: Path) -> Path:
    """The pinned root v1 a device is provisioned with."""
    to.write_bytes((hub_dir / "keys" / keyring.ROOT_DIR / "1.root.json").read_bytes())
    return to
