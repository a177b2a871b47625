"""The daemon in-process against a real broker and the hub double: its extension points,
telemetry, hello, transient fetches, nudges, and forged acks."""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.config import AgentConfig
from agent.daemon import Agent
from agent.errors import NotReady
from agent.http_api import Prediction
from protocol import frame
from protocol.messages import FetchRequest, HubAck, ModelRef, Nudge, StateReport, Telemetry
from protocol.topics import Topics
from tests.agent.hub_double import HubDouble
from tests.brokers import BrokerRunner
from tests.clock import FakeClock
from tests.mqtt import TestClient

DEVICE = "dev-1"
MODEL = ModelRef("m", 3, "b" * 64)


def eventually(condition: Callable[[], bool], what: str, timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def make_config(tmp_path: Path, broker: BrokerRunner, topics: Topics, **extra: Any) -> AgentConfig:
    return AgentConfig(
        device_id=DEVICE,
        state_dir=tmp_path / "state",
        broker_url=broker.url,
        topic_prefix=topics.prefix,
        http_port=0,
        telemetry_interval_s=3600,
        drain_interval_s=0.1,
        stop_grace_s=0.5,
        **extra,
    )


@pytest.fixture
def hub(embedded_broker: BrokerRunner, topics: Topics, tmp_path: Path) -> Iterator[HubDouble]:
    with HubDouble(embedded_broker, topics, tmp_path / "hub.db") as double:
        yield double


@pytest.fixture
def agent(
    embedded_broker: BrokerRunner,
    topics: Topics,
    tmp_path: Path,
    clock: FakeClock,
    hub: HubDouble,
) -> Iterator[Agent]:
    running = Agent(
        make_config(tmp_path, embedded_broker, topics),
        clock=clock,
        rollout_keys=lambda: [hub.public],
    )
    running.set_state_source(lambda: StateReport(active=MODEL, flags=("healthy",)))
    running.start()
    hub.wait_until(lambda h: len(h.committed(DEVICE)) >= 1)  # the hello, which pins the key
    eventually(lambda: running.outbox.stats().depth == 0, "the hello's ack")
    yield running
    running.stop()


def test_agent_hello_carries_key_version_tags_and_model(
    embedded_broker: BrokerRunner, topics: Topics, tmp_path: Path, hub: HubDouble
) -> None:
    config = make_config(
        tmp_path, embedded_broker, topics, tags={"region": "eu"}, enrollment_token="tok-1"
    )
    agent = Agent(config, rollout_keys=lambda: [hub.public])
    agent.set_state_source(lambda: StateReport(active=MODEL))
    agent.start()
    try:
        hub.wait_until(lambda h: len(h.messages(DEVICE, "hello")) == 1)
        agent.send_hello(0)  # acknowledged already: nothing more to say
    finally:
        agent.stop()
    (hello,) = hub.messages(DEVICE, "hello")
    assert hello.message.public_key == agent.identity.public_hex  # type: ignore[attr-defined]
    assert hello.message.tags == {"region": "eu"}  # type: ignore[attr-defined]
    assert hello.message.enrollment_token == "tok-1"  # type: ignore[attr-defined]
    assert hello.message.active == MODEL  # type: ignore[attr-defined]


def test_agent_telemetry_reports_uptime_inference_and_outbox(
    agent: Agent, hub: HubDouble, clock: FakeClock
) -> None:
    for latency in (1.0, 2.0, 3.0, 4.0):
        agent.stats.record(latency)
    agent.stats.record(9.0, outcome="failed")
    clock.advance(12.5)
    agent.send_telemetry(clock.now_ms())
    hub.wait_until(lambda h: len(h.messages(DEVICE, "telemetry")) == 1)
    (telemetry,) = hub.messages(DEVICE, "telemetry")
    assert telemetry.message == Telemetry(
        uptime_s=12.5,
        inference_count=5,
        error_count=1,
        latency_p50_ms=3.0,
        latency_p95_ms=9.0,
        outbox_depth=0,
        outbox_dropped=0,
        model=MODEL,
    )
    assert telemetry.header.sent_at == clock.now_ms()


def test_agent_runs_added_jobs_with_the_clock_time(agent: Agent, clock: FakeClock) -> None:
    seen: list[int] = []
    ran = threading.Event()

    def job(now_ms: int) -> None:
        seen.append(now_ms)
        ran.set()

    agent.add_job("probe", job, interval_s=0.05)
    assert ran.wait(10)
    assert seen[0] == clock.now_ms()


def test_agent_sends_fetch_requests_directly_without_storing_them(
    agent: Agent, embedded_broker: BrokerRunner, topics: Topics
) -> None:
    with TestClient(embedded_broker) as listener:
        listener.subscribe(topics.up(DEVICE, "fetch"))
        fetch = FetchRequest("c" * 64, 0, 4096)
        seq = agent.send(fetch)
        (received,) = listener.wait_for(1)
    envelope = frame.decode(received.payload, agent.identity.public)
    assert (envelope.header.seq, envelope.message) == (seq, fetch)
    assert not agent.outbox.contains(seq)


def test_agent_resends_unacknowledged_frames_on_a_resend_nudge(
    agent: Agent, hub: HubDouble
) -> None:
    hub.mute_acks = True
    seq = agent.send(StateReport(active=MODEL))
    hub.wait_until(lambda h: seq in h.committed(DEVICE))
    hub.publish_down(DEVICE, Nudge("resend"))
    hub.wait_until(lambda h: h.receipts[(DEVICE, seq)] == 2)
    hub.mute_acks = False
    hub.publish_down(DEVICE, Nudge("resend"))
    hub.wait_until(lambda h: h.receipts[(DEVICE, seq)] == 3)
    eventually(lambda: not agent.outbox.contains(seq), "the ack to settle the frame")


def test_agent_keeps_frames_an_ack_signed_by_another_key_claims(
    agent: Agent, hub: HubDouble, embedded_broker: BrokerRunner, topics: Topics
) -> None:
    hub.mute_acks = True
    seq = agent.send(StateReport(active=MODEL))
    hub.wait_until(lambda h: seq in h.committed(DEVICE))
    forged = frame.encode(
        HubAck(committed=((1, seq),)),
        device_id=DEVICE,
        seq=10_000,
        sent_at=0,
        nonce=os.urandom(16),
        key=Ed25519PrivateKey.generate(),
    )
    with TestClient(embedded_broker) as attacker:
        attacker.publish(topics.down(DEVICE, "ack"), forged)
    hub.publish_down(DEVICE, Nudge("state"))  # a genuine frame after the forged one
    hub.wait_until(lambda h: agent.downlink.counters().get("accepted", 0) >= 2)
    assert agent.downlink.counters()["refused.bad_signature"] == 1
    assert agent.outbox.contains(seq)


def test_agent_flags_the_next_state_report_after_an_outbox_drop(
    embedded_broker: BrokerRunner, topics: Topics, tmp_path: Path
) -> None:
    agent = Agent(make_config(tmp_path, embedded_broker, topics, outbox_max_messages=2))
    try:
        for _ in range(3):
            agent.send(Telemetry(uptime_s=1.0))
        agent.outbox.settle(HubAck(committed=((1, 4),)))  # hello + 3: room again, no more drops
        first = agent.send(StateReport(active=MODEL, flags=("healthy",)))
        second = agent.send(StateReport(active=MODEL))
        frames = {s.seq: s.frame for s in agent.outbox.due(0)}
    finally:
        agent.stop()
    flags = {
        seq: frame.decode(frames[seq], agent.identity.public).message.flags  # type: ignore[attr-defined]
        for seq in (first, second)
    }
    assert flags == {first: ("healthy", "outbox_dropped"), second: ()}


def test_agent_answers_not_ready_until_a_runtime_is_plugged_in(
    embedded_broker: BrokerRunner, topics: Topics, tmp_path: Path
) -> None:
    agent = Agent(make_config(tmp_path, embedded_broker, topics))

    class Runtime:
        def predict(self, inputs: list[Any]) -> Prediction:
            return Prediction(["p1"], [0.5])

        def feedback(self, labels: Any) -> dict[str, int]:
            return {"accepted": len(labels)}

        def status(self) -> dict[str, str]:
            return {"model": "m@3"}

    try:
        with pytest.raises(NotReady):
            agent.predict([[1.0]])
        agent.set_inference(Runtime())
        assert agent.predict([[1.0]]) == Prediction(["p1"], [0.5])
        assert agent.status()["runtime"] == {"model": "m@3"}
        assert agent.status()["device_id"] == DEVICE
    finally:
        agent.stop()


def test_agent_queues_hello_before_the_first_message_it_is_given(
    embedded_broker: BrokerRunner, topics: Topics, tmp_path: Path
) -> None:
    agent = Agent(make_config(tmp_path, embedded_broker, topics))
    agent.set_state_source(lambda: StateReport(active=MODEL))
    try:
        seq = agent.send(StateReport(active=MODEL))  # before start, as a resuming component does
        agent.send_hello(0)  # start() says hello too: one is waiting already
        queued = [(s.seq, s.kind) for s in agent.outbox.due(0)]
    finally:
        agent.stop()
    assert (seq, queued) == (2, [(1, "hello"), (2, "state")])


@pytest.mark.parametrize("fault", ["handler", "key source"])
def test_agent_worker_keeps_handling_downlink_frames_after_one_raises(
    broker: BrokerRunner, topics: Topics, tmp_path: Path, fault: str
) -> None:
    armed, seen = threading.Event(), list[int]()

    def fail_once(where: str) -> None:
        if fault == where and armed.is_set():
            armed.clear()
            raise RuntimeError(f"{where} failed")

    with HubDouble(broker, topics, tmp_path / "hub.db") as hub:

        def keys() -> list[Any]:
            fail_once("key source")
            return [hub.public]

        def handler(envelope: Any) -> None:
            fail_once("handler")
            seen.append(envelope.header.seq)

        agent = Agent(make_config(tmp_path, broker, topics), rollout_keys=keys)
        agent.register_downlink("nudge", handler)
        agent.start()
        try:
            eventually(lambda: agent.outbox.stats().depth == 0, "the hello's ack")
            armed.set()
            hub.publish_down(DEVICE, Nudge("state"))
            eventually(lambda: agent.downlink.counters().get("failed") == 1, "the failure")
            second = hub.publish_down(DEVICE, Nudge("state"))
            eventually(lambda: second in seen, "the next frame to be handled")
            agent.send(StateReport(active=MODEL))  # acks still settle the outbox
            eventually(lambda: agent.outbox.stats().depth == 0, "the report's ack")
        finally:
            agent.stop()
    assert not armed.is_set()


def test_agent_reschedules_a_running_job_and_refuses_unknown_ones(
    agent: Agent, hub: HubDouble
) -> None:
    ran = threading.Event()
    agent.add_job("probe", lambda now_ms: ran.set(), interval_s=3600)
    agent.reschedule("probe", 0.05)
    assert ran.wait(10)
    agent.reschedule("telemetry", 0.05)
    hub.wait_until(lambda h: len(h.messages(DEVICE, "telemetry")) >= 2, timeout_s=10)
    with pytest.raises(ValueError, match="no job"):
        agent.reschedule("nope", 1.0)
    with pytest.raises(ValueError, match="positive"):
        agent.reschedule("probe", 0.0)


def test_agent_schedules_a_job_at_the_interval_it_was_given_before_start(
    embedded_broker: BrokerRunner, topics: Topics, tmp_path: Path, hub: HubDouble
) -> None:
    agent = Agent(make_config(tmp_path, embedded_broker, topics), rollout_keys=lambda: [hub.public])
    ran = threading.Event()
    agent.add_job("probe", lambda now_ms: ran.set(), interval_s=3600)
    agent.reschedule("probe", 0.05)
    agent.reschedule("telemetry", 0.05)
    agent.start()
    try:
        assert ran.wait(10)
        hub.wait_until(lambda h: bool(h.messages(DEVICE, "telemetry")), timeout_s=10)
    finally:
        agent.stop()


def test_agent_says_it_waits_for_approval_and_why(
    embedded_broker: BrokerRunner,
    topics: Topics,
    tmp_path: Path,
    hub: HubDouble,
    caplog: pytest.LogCaptureFixture,
) -> None:
    hub.mute_acks = True  # a hub that has not pinned the key acknowledges nothing
    config = make_config(
        tmp_path, embedded_broker, topics, ack_timeout_s=0.2, enrollment_token="tok-1"
    )
    agent = Agent(config, rollout_keys=lambda: [hub.public])

    def said(text: str) -> list[str]:
        lines = [r.getMessage() for r in caplog.records if r.name == "agent.uplink"]
        return [line for line in lines if text in line]

    with caplog.at_level(logging.INFO, logger="agent.uplink"):
        agent.start()
        try:
            hub.wait_until(lambda h: bool(h.messages(DEVICE, "hello")))
            eventually(lambda: bool(said("waiting for approval")), "the waiting line")
            (waiting,) = said("waiting for approval")
            assert "not pinned this device's key" in waiting
            assert "token may be wrong or expired" in waiting
            assert f"edgefleet hub device approve {DEVICE}" in waiting
            hello = hub.messages(DEVICE, "hello")[0].header.seq
            hub.publish_down(
                DEVICE, HubAck(committed=(), refused=((hello, "pending: token_expired"),))
            )
            eventually(lambda: bool(said("refused this device's hello")), "the refusal line")
            (refused,) = said("refused this device's hello")
            assert "the enrollment token has expired [pending: token_expired]" in refused
            hub.mute_acks = False
            agent.send_hello(0)  # the hello job's retry, now
            eventually(lambda: bool(said("pinned this device's key")), "the approval line")
        finally:
            agent.stop()


def test_agent_runs_stop_hooks_before_it_reports_offline(
    embedded_broker: BrokerRunner, topics: Topics, tmp_path: Path, hub: HubDouble
) -> None:
    config = dataclasses.replace(make_config(tmp_path, embedded_broker, topics), stop_grace_s=10)
    agent = Agent(config, rollout_keys=lambda: [hub.public])

    def broken(now_ms: int) -> None:
        raise RuntimeError("flush failed")

    def flush(now_ms: int) -> None:
        agent.send(Telemetry(uptime_s=1.0))

    agent.add_stop_hook("broken", broken)
    agent.add_stop_hook("flush", flush)
    agent.start()
    hub.wait_until(lambda h: bool(h.messages(DEVICE, "hello")))
    agent.stop()

    (flushed,) = hub.messages(DEVICE, "telemetry")
    states = [e for e in hub.messages(DEVICE, "state") if isinstance(e.message, StateReport)]
    (offline,) = [e for e in states if "offline" in e.message.flags]  # type: ignore[attr-defined]
    assert flushed.header.seq < offline.header.seq
