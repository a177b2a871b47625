"""The daemon's seams (agent/transport.py, agent/scheduler.py) against a real broker: two agents
on one shared scheduler, and a transport given from outside.

This is what lets a simulator run many agents on one scheduler and one transport loop:
the agents own no thread of their own, their job names never collide, and stopping one
leaves the other (and the shared scheduler) running.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agent.config import AgentConfig
from agent.daemon import Agent
from agent.link import Link, LinkSettings
from agent.scheduler import ApsScheduler
from agent.transport import EventSink, WillFactory
from protocol.messages import ModelRef, StateReport
from protocol.topics import Topics
from tests.agent.hub_double import HubDouble
from tests.brokers import BrokerRunner

MODEL = ModelRef("m", 3, "b" * 64)


def eventually(condition: Callable[[], bool], what: str, timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def config(tmp_path: Path, broker: BrokerRunner, topics: Topics, device_id: str) -> AgentConfig:
    return AgentConfig(
        device_id=device_id,
        state_dir=tmp_path / device_id,
        broker_url=broker.url,
        topic_prefix=topics.prefix,
        http_port=0,
        telemetry_interval_s=3600,
        drain_interval_s=0.1,
        stop_grace_s=2.0,
    )


@pytest.fixture
def hub(broker: BrokerRunner, topics: Topics, tmp_path: Path) -> Iterator[HubDouble]:
    with HubDouble(broker, topics, tmp_path / "hub.db") as double:
        yield double


def setter(event: threading.Event) -> Callable[[int], None]:
    return lambda now_ms: event.set()


def exchange(agent: Agent, hub: HubDouble) -> None:
    """The hello and one state report reach the hub, and its acks empty the outbox."""
    device_id = agent.config.device_id
    hub.wait_until(lambda h: len(h.committed(device_id)) >= 1)
    seq = agent.send(StateReport(active=MODEL))
    hub.wait_until(lambda h: seq in h.committed(device_id))
    eventually(lambda: agent.outbox.stats().depth == 0, f"{device_id}'s acks")


def scheduler_threads() -> int:
    return sum(t.name == "APScheduler" for t in threading.enumerate())


def test_two_agents_share_one_scheduler_against_a_real_broker(
    broker: BrokerRunner, topics: Topics, tmp_path: Path, hub: HubDouble
) -> None:
    shared = ApsScheduler(threads=4)
    shared.start()
    before = scheduler_threads()
    agents = [
        Agent(
            config(tmp_path, broker, topics, d), rollout_keys=lambda: [hub.public], scheduler=shared
        )
        for d in ("dev-1", "dev-2")
    ]
    probes = {a.config.device_id: threading.Event() for a in agents}
    try:
        for agent in agents:
            agent.add_job("probe", setter(probes[agent.config.device_id]), interval_s=0.05)
            agent.start()
        assert scheduler_threads() == before  # neither agent started a scheduler of its own
        for agent in agents:
            exchange(agent, hub)
            assert probes[agent.config.device_id].wait(10)  # same job name: no collision

        first, second = agents
        first.stop()
        assert shared.running  # stopping one agent leaves the shared scheduler to the other
        seq = second.send(StateReport(active=MODEL, flags=("healthy",)))
        hub.wait_until(lambda h: seq in h.committed("dev-2"))
        eventually(lambda: second.outbox.stats().depth == 0, "dev-2's ack after dev-1 stopped")
        probes["dev-1"].clear()
        time.sleep(0.3)
        assert not probes["dev-1"].is_set()  # dev-1's jobs were cancelled with it
    finally:
        for agent in agents:
            agent.stop()
        shared.shutdown()
    offline = [e for e in hub.messages("dev-1", "state") if "offline" in e.message.flags]  # type: ignore[attr-defined]
    assert offline  # dev-1 still reported offline through the shared scheduler's pump


class CountingTransport:
    """A transport given from outside: the paho link, counting what goes through it."""

    def __init__(self, inner: Link) -> None:
        self.inner = inner
        self.published: list[str] = []
        self.subscribed: list[str] = []

    @property
    def connected(self) -> bool:
        return self.inner.connected

    @property
    def connections(self) -> int:
        return self.inner.connections

    def subscribe(self, *topics: str) -> None:
        self.subscribed.extend(topics)
        self.inner.subscribe(*topics)

    def on_event(self, sink: EventSink) -> None:
        self.inner.on_event(sink)

    def connect(self, *, will: WillFactory | None = None) -> None:
        self.inner.connect(will=will)

    def publish(self, topic: str, payload: bytes) -> bool:
        self.published.append(topic.rsplit("/", 1)[-1])
        return self.inner.publish(topic, payload)

    def disconnect(self) -> None:
        self.inner.disconnect()


def test_an_agent_speaks_only_through_the_transport_it_is_given(
    broker: BrokerRunner, topics: Topics, tmp_path: Path, hub: HubDouble
) -> None:
    cfg = config(tmp_path, broker, topics, "dev-1")
    transport = CountingTransport(Link(LinkSettings.from_config(cfg)))
    agent = Agent(cfg, rollout_keys=lambda: [hub.public], transport=transport)
    agent.start()
    try:
        hub.wait_until(lambda h: len(h.committed("dev-1")) >= 1)
        eventually(lambda: agent.outbox.stats().depth == 0, "the hello's ack")  # acks came in
    finally:
        agent.stop()
    assert transport.subscribed == [topics.device_down("dev-1"), topics.all_fleet()]
    assert transport.published[0] == "hello"
    assert transport.published[-1] == "state"  # the offline report on stop
