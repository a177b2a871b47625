"""A real agent daemon installs models from a hub double over a real broker (both brokers).

The daemon (agent/daemon.py) runs with the trust store's rollout keys guarding its
downlink and the model manager attached; the hub double (tests/agent/model_hub.py)
publishes the root chain, release list and heartbeat retained, the desired state on the
device's ``down/desired``, and answers every ``up/fetch`` with a signed chunk.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from agent.config import AgentConfig
from agent.daemon import Agent
from agent.download import DownloadPolicy
from agent.trust_store import TrustStore
from agent.updater import ModelManager, UpdaterConfig
from protocol.messages import ModelRef, StateReport
from protocol.topics import Topics
from tests import models
from tests.agent.model_hub import FleetDouble, ModelHub
from tests.brokers import BrokerRunner
from tests.clock import FakeClock
from tests.packages import Built, build_package, with_manifest
from tests.protocol.trust_sim import TrustSim

DEVICE = "dev-1"
CONFIG = UpdaterConfig(
    health_runs=2,
    tick_s=0.2,
    download=DownloadPolicy(chunk_bytes=256, window=2, stall_ms=2_000),
)


def eventually(condition: Callable[[], bool], what: str, clock: FakeClock) -> None:
    """Wait up to 30 s for ``condition``; the fake clock keeps pace with real time, so
    a lost fetch is asked again after the stall timeout."""
    deadline = time.monotonic() + 30
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)
        clock.advance(0.05)


@pytest.fixture
def fleet(clock: FakeClock) -> FleetDouble:
    return FleetDouble(TrustSim(now=clock.now_ms(), device_id=DEVICE))


@pytest.fixture
def hub(
    broker: BrokerRunner, topics: Topics, tmp_path: Path, fleet: FleetDouble
) -> Iterator[ModelHub]:
    with ModelHub(broker, topics, tmp_path / "hub.db", fleet, DEVICE) as double:
        double.publish_fleet()
        yield double


@pytest.fixture
def agent(
    broker: BrokerRunner,
    topics: Topics,
    tmp_path: Path,
    clock: FakeClock,
    fleet: FleetDouble,
    hub: ModelHub,
) -> Iterator[tuple[Agent, ModelManager]]:
    root = tmp_path / "root.json"
    root.write_bytes(fleet.sim.root_chain[0].to_bytes())
    config = AgentConfig(
        device_id=DEVICE,
        state_dir=tmp_path / "state",
        broker_url=broker.url,
        topic_prefix=topics.prefix,
        root_metadata=root,
        http_port=0,
        telemetry_interval_s=3600,
        drain_interval_s=0.1,
        stop_grace_s=0.5,
    )
    trust = TrustStore.open(config.state_dir, config.root_metadata)
    daemon = Agent(config, clock=clock, rollout_keys=trust.rollout_keys)
    manager = ModelManager(
        config.state_dir, trust, device_id=DEVICE, clock=clock, send=daemon.send, config=CONFIG
    )
    manager.attach(daemon)
    daemon.start()
    hub.double.wait_until(lambda h: bool(h.messages(DEVICE, "hello")))
    yield daemon, manager
    daemon.stop()


def serving(manager: ModelManager) -> ModelRef | None:
    runtime = manager.runtime
    return runtime.ref if runtime is not None else None


def assign(hub: ModelHub, manager: ModelManager, clock: FakeClock, built: Built) -> None:
    """Release and assign ``built``: fleet documents first, the desired state once the
    agent trusts them (they travel on other topics, so the broker may reorder them)."""
    hub.fleet.assign(hub.fleet.release(built))
    hub.publish_fleet()
    versions = hub.fleet.sim.release.version, hub.fleet.sim.heartbeat.version
    eventually(
        lambda: (
            (manager.state_report().trust.release, manager.state_report().trust.heartbeat)
            == versions
        ),
        "the fleet documents",
        clock,
    )
    hub.publish_desired()


def reported(hub: ModelHub, match: Callable[[StateReport], bool]) -> bool:
    return any(match(report) for report in hub.states())


def test_agent_installs_over_chunks_refetches_a_bad_chunk_and_rolls_back_by_itself(
    agent: tuple[Agent, ModelManager], hub: ModelHub, fleet: FleetDouble, clock: FakeClock
) -> None:
    daemon, manager = agent
    v1, v2 = (build_package(models.gemm_classifier(), version=v) for v in (1, 2))
    v3 = with_manifest(build_package(models.gemm_classifier(), version=3), latency_budget_ms=0.0)

    assign(hub, manager, clock, v1)
    eventually(lambda: serving(manager) == v1.ref, "v1 to serve", clock)

    fleet.corrupt.add(512)
    assign(hub, manager, clock, v2)
    eventually(lambda: serving(manager) == v2.ref, "v2 to serve", clock)
    assert manager.counters["chunk.bad_chunk_hash"] == 1
    for _ in range(5):
        manager.predict(np.ones((1, 4), np.float32))
    eventually(lambda: reported(hub, lambda r: r.active == v2.ref), "v2 reported", clock)

    assign(hub, manager, clock, v3)

    def rolled_back(report: StateReport) -> bool:
        outcome = report.install
        return outcome is not None and outcome.model == v3.ref and outcome.status == "rolled_back"

    eventually(lambda: reported(hub, rolled_back), "v3 rolled back", clock)
    assert serving(manager) == v2.ref
    assert manager.predict(np.ones((1, 4), np.float32)).scores.shape == (1, 3)
    assert daemon.stats.snapshot().inference_count == 6  # telemetry sees every inference
    last = hub.states()[-1]
    assert last.active == v2.ref
    assert last.install is not None
    assert last.install.reason.startswith("model_unhealthy")
    acks = [e.message for e in hub.double.messages(DEVICE, "ack")]
    assert [a.status for a in acks] == ["accepted"] * 3  # type: ignore[attr-defined]
