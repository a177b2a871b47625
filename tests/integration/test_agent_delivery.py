"""End-to-end delivery: a real agent process, a real broker, the hub double.

The contract under test (docs/protocol.md, "Delivery"; docs/agent-delivery.md): a
message leaves the agent's outbox only when the hub has committed it, so after any crash
or outage every message is committed exactly once by (device, seq), and an outbox found
empty with nothing dropped means nothing was lost.

Outages are real: the hub double or the broker is stopped for ``outage_s`` seconds while
the agent keeps producing telemetry. The 30 s outage runs on Mosquitto in the normal
suite and for 5 s on the embedded broker; the 30 s embedded case is marked ``slow``.
"""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.daemon import STATE_DB
from agent.identity import Identity, load_or_create
from agent.outbox import Outbox, OutboxStats
from protocol import keys
from protocol.messages import DeltaUpload, ModelRef, StateReport
from protocol.topics import Topics
from tests.agent.hub_double import HubDouble
from tests.brokers import BrokerRunner

DEVICE = "dev-1"
MODEL = ModelRef("m", 1, "a" * 64)
EXIT_TIMEOUT_S = 30

LAUNCH = """
import logging, sys
from agent.config import load_config
from agent.daemon import Agent
from protocol.keys import public_from_hex

logging.basicConfig(level="INFO", format="%(asctime)s %(threadName)s %(name)s: %(message)s")
logging.getLogger("apscheduler").setLevel(logging.WARNING)
hub = public_from_hex(sys.argv[2])
Agent(load_config(sys.argv[1]), rollout_keys=lambda: [hub]).run()
"""


class AgentProcess:
    """``Agent.run()`` in a child process trusting the hub double's key; logs to a file."""

    def __init__(self, config: Path, hub: HubDouble, log: Path) -> None:
        self._log = log.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-c", LAUNCH, str(config), keys.public_hex(hub.public)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(EXIT_TIMEOUT_S)
        self._log.close()

    def terminate(self) -> int:
        """SIGTERM and the exit code (the wait is bounded: a hang fails the test)."""
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(EXIT_TIMEOUT_S)
        self._log.close()
        return code


@pytest.fixture
def agents(tmp_path: Path) -> Iterator[list[AgentProcess]]:
    started: list[AgentProcess] = []
    yield started
    for agent in started:
        if agent.process.poll() is None:
            agent.kill()


@pytest.fixture
def outage_broker(request: pytest.FixtureRequest) -> BrokerRunner:
    name = "mosquitto_broker" if request.param == "mosquitto" else "embedded_broker"
    runner: BrokerRunner = request.getfixturevalue(name)
    return runner


OUTAGES = [
    pytest.param("mosquitto", 30, id="mosquitto-30s"),
    pytest.param("amqtt", 5, id="amqtt-5s"),
    pytest.param("amqtt", 30, id="amqtt-30s", marks=pytest.mark.slow),
]


def write_config(tmp_path: Path, broker: BrokerRunner, topics: Topics, **extra: Any) -> Path:
    values: dict[str, Any] = {
        "device_id": DEVICE,
        "state_dir": str(tmp_path / "state"),
        "broker_url": broker.url,
        "topic_prefix": topics.prefix,
        "http_port": 0,
        "telemetry_interval_s": 30.0,
        "drain_interval_s": 0.2,
        "ack_timeout_s": 1.0,
        "reconnect_min_s": 0.1,
        "reconnect_max_s": 2.0,
        "stop_grace_s": 15.0,
        **extra,
    }
    path = tmp_path / "agent.toml"
    path.write_text("".join(f"{k} = {_toml(v)}\n" for k, v in values.items()))
    return path


def _toml(value: Any) -> str:
    return f'"{value}"' if isinstance(value, str) else repr(value)


def identity(tmp_path: Path) -> Identity:
    return load_or_create(tmp_path / "state", DEVICE)


def prefill(tmp_path: Path, count: int) -> dict[int, bytes]:
    """Enqueue ``count`` state and delta messages through the real Outbox; their frames."""
    box = Outbox(tmp_path / "state" / STATE_DB, identity(tmp_path))
    try:
        now = time.time_ns() // 1_000_000
        for i in range(count):
            message = (
                StateReport(active=MODEL)
                if i % 2
                else DeltaUpload(MODEL, 10, "accuracy", 0.5, 0.6, 1.0, tensors=bytes(64))
            )
            box.enqueue(message, now)
        return {sealed.seq: sealed.frame for sealed in box.due(now, limit=count)}
    finally:
        box.close()


def final_outbox(tmp_path: Path) -> OutboxStats:
    box = Outbox(tmp_path / "state" / STATE_DB, identity(tmp_path))
    try:
        return box.stats()
    finally:
        box.close()


def live_depth(tmp_path: Path) -> int:
    """The running agent's outbox depth, read through a read-only connection."""
    uri = f"file:{tmp_path / 'state' / STATE_DB}?mode=ro"
    with sqlite3.connect(uri, uri=True, timeout=10) as db:
        depth: int = db.execute("SELECT count(*) FROM outbox").fetchone()[0]
    return depth


def wait_for(condition: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def offline_reports(hub: HubDouble) -> int:
    return sum("offline" in e.message.flags for e in hub.messages(DEVICE, "state"))  # type: ignore[attr-defined]


def test_agent_killed_mid_drain_commits_every_message_exactly_once(
    broker: BrokerRunner, topics: Topics, tmp_path: Path, agents: list[AgentProcess]
) -> None:
    expected = prefill(tmp_path, 500)
    config = write_config(tmp_path, broker, topics, outbox_max_in_flight=20)
    devices = {DEVICE: identity(tmp_path).public}
    with HubDouble(broker, topics, tmp_path / "hub.db", devices=devices) as hub:
        agents.append(AgentProcess(config, hub, tmp_path / "agent.log"))
        hub.wait_until(lambda h: len(h.committed(DEVICE)) >= 100)
        hub.mute_acks = True  # commits go on, acks stop: the agent is stuck mid-drain
        hub.wait_until(lambda h: h.withheld > 0)
        agents[0].kill()
        at_kill = set(hub.committed(DEVICE)) & expected.keys()
        assert 100 <= len(at_kill) < len(expected)
        hub.wait_until(lambda h: offline_reports(h) == 1)  # the broker published the will

        hub.mute_acks = False
        agents.append(AgentProcess(config, hub, tmp_path / "agent.log"))
        hub.wait_until(lambda h: expected.keys() <= set(h.committed(DEVICE)), timeout_s=60)
        assert agents[1].terminate() == 0

    committed = hub.frames(DEVICE)
    assert {seq: committed[seq] for seq in expected} == expected  # the very bytes, once each
    assert hub.duplicates(DEVICE) > 0  # resent after the restart, removed by seq
    assert hub.rejected == {}
    assert (final_outbox(tmp_path).depth, final_outbox(tmp_path).dropped) == (0, 0)


@pytest.mark.parametrize(("outage_broker", "outage_s"), OUTAGES, indirect=["outage_broker"])
def test_agent_keeps_producing_through_a_hub_outage_and_loses_nothing(
    outage_broker: BrokerRunner,
    outage_s: float,
    topics: Topics,
    tmp_path: Path,
    agents: list[AgentProcess],
) -> None:
    expected = prefill(tmp_path, 50)
    config = write_config(tmp_path, outage_broker, topics, telemetry_interval_s=0.2)
    devices = {DEVICE: identity(tmp_path).public}
    hub = HubDouble(outage_broker, topics, tmp_path / "hub.db", devices=devices)
    hub.start()
    try:
        agents.append(AgentProcess(config, hub, tmp_path / "agent.log"))
        hub.wait_until(lambda h: expected.keys() <= set(h.committed(DEVICE)))
        hub.stop()
        outage_start = time.time_ns() // 1_000_000
        wait_for(lambda: live_depth(tmp_path) >= 10, 30, "the outbox to grow")
        time.sleep(outage_s)
        outage_end = time.time_ns() // 1_000_000
        hub.start()
        wait_for(lambda: live_depth(tmp_path) <= 2, 60, "the outbox to drain")
        assert agents[0].terminate() == 0
    finally:
        hub.stop()

    assert (final_outbox(tmp_path).depth, final_outbox(tmp_path).dropped) == (0, 0)
    assert expected.keys() <= set(hub.committed(DEVICE))
    produced_meanwhile = [
        e
        for e in hub.messages(DEVICE, "telemetry")
        if outage_start <= e.header.sent_at <= outage_end
    ]
    assert len(produced_meanwhile) >= 10
    assert max(e.message.outbox_depth for e in produced_meanwhile) >= 10  # type: ignore[attr-defined]
    assert offline_reports(hub) == 1


@pytest.mark.parametrize(("outage_broker", "outage_s"), OUTAGES, indirect=["outage_broker"])
def test_agent_reconnects_after_a_broker_outage_and_loses_nothing(
    outage_broker: BrokerRunner,
    outage_s: float,
    topics: Topics,
    tmp_path: Path,
    agents: list[AgentProcess],
) -> None:
    config = write_config(tmp_path, outage_broker, topics, telemetry_interval_s=0.2)
    devices = {DEVICE: identity(tmp_path).public}
    with HubDouble(outage_broker, topics, tmp_path / "hub.db", devices=devices) as hub:
        agents.append(AgentProcess(config, hub, tmp_path / "agent.log"))
        hub.wait_until(lambda h: len(h.messages(DEVICE, "telemetry")) >= 3)
        outage_broker.stop()
        outage_start = time.time_ns() // 1_000_000
        time.sleep(outage_s)
        outage_end = time.time_ns() // 1_000_000
        outage_broker.start()
        hub.wait_until(
            lambda h: any(e.header.sent_at > outage_end for e in h.messages(DEVICE, "telemetry")),
            timeout_s=60,
        )
        wait_for(lambda: live_depth(tmp_path) <= 2, 60, "the outbox to drain")
        assert agents[0].terminate() == 0

    assert (final_outbox(tmp_path).depth, final_outbox(tmp_path).dropped) == (0, 0)
    sent_during = [
        e
        for e in hub.messages(DEVICE, "telemetry")
        if outage_start <= e.header.sent_at <= outage_end
    ]
    assert len(sent_during) >= 5
    assert hub.rejected == {}


def test_agent_exits_zero_on_sigterm_and_keeps_what_the_hub_has_not_acked(
    broker: BrokerRunner, topics: Topics, tmp_path: Path, agents: list[AgentProcess]
) -> None:
    expected = prefill(tmp_path, 300)
    config = write_config(tmp_path, broker, topics, outbox_max_in_flight=10, stop_grace_s=0.5)
    devices = {DEVICE: identity(tmp_path).public}
    with HubDouble(broker, topics, tmp_path / "hub.db", devices=devices) as hub:
        agents.append(AgentProcess(config, hub, tmp_path / "agent.log"))
        hub.wait_until(lambda h: len(h.committed(DEVICE)) >= 20)
        hub.mute_acks = True
        assert agents[0].terminate() == 0

        left = Outbox(tmp_path / "state" / STATE_DB, identity(tmp_path))
        remaining = {s.seq for s in left.due(0, limit=1000)}
        left.close()
        assert expected.keys() <= set(hub.committed(DEVICE)) | remaining
        assert remaining  # acks were withheld: the rest waits for the next start

        hub.mute_acks = False
        agents.append(AgentProcess(config, hub, tmp_path / "agent.log"))
        hub.wait_until(lambda h: expected.keys() <= set(h.committed(DEVICE)), timeout_s=60)
        assert agents[1].terminate() == 0
    assert offline_reports(hub) >= 1
