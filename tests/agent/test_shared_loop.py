"""Many MQTT sessions on one SharedLoop thread, against real brokers (Mosquitto and amqtt)."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator

import pytest

from agent.link import LinkSettings
from agent.shared_loop import LoopLink, SharedLoop
from agent.transport import Connected, Inbound, LinkEvent
from edgefleet.brokers import BrokerUrl
from protocol.topics import Topics
from tests.brokers import BrokerRunner, free_port
from tests.mqtt import TestClient

SESSIONS = 20
WAIT_S = 20.0


def settings(port: int, client_id: str) -> LinkSettings:
    return LinkSettings(
        broker=BrokerUrl("127.0.0.1", port, tls=False),
        client_id=client_id,
        reconnect_min_s=0.05,
        reconnect_max_s=0.5,
    )


@pytest.fixture
def loop() -> Iterator[SharedLoop]:
    shared = SharedLoop()
    shared.start()
    yield shared
    shared.stop()


def sessions(
    loop: SharedLoop, port: int, topics: Topics, count: int
) -> dict[str, tuple[LoopLink, queue.Queue[LinkEvent]]]:
    """``count`` sessions dev-0..., each subscribed to its own downlink, connecting."""
    out = {}
    for i in range(count):
        device = f"dev-{i}"
        events: queue.Queue[LinkEvent] = queue.Queue()
        link = loop.link(settings(port, device))
        link.subscribe(topics.device_down(device))
        link.on_event(events.put_nowait)
        link.connect()
        out[device] = (link, events)
    return out


def next_event(events: queue.Queue[LinkEvent], kind: type) -> LinkEvent:
    while True:
        event = events.get(timeout=WAIT_S)
        if isinstance(event, kind):
            return event


def next_payload(events: queue.Queue[LinkEvent]) -> bytes:
    event = next_event(events, Inbound)
    assert isinstance(event, Inbound)
    return event.payload


def test_twenty_sessions_share_one_thread_and_each_gets_its_own_downlink_in_order(
    broker: BrokerRunner, loop: SharedLoop, topics: Topics
) -> None:
    threads_before = threading.active_count()
    fleet = sessions(loop, broker.port, topics, SESSIONS)
    try:
        for _, events in fleet.values():
            next_event(events, Connected)
        assert threading.active_count() == threads_before
        assert loop.sessions == SESSIONS
        with TestClient(broker) as hub:
            hub.subscribe(topics.all_up())
            for device, (link, _) in fleet.items():
                assert link.publish(topics.up(device, "telemetry"), device.encode())
            got = {m.payload.decode() for m in hub.wait_for(SESSIONS)}
            assert got == set(fleet)
            for device in fleet:
                for n in range(3):
                    hub.publish(topics.down(device, "nudge"), f"{device}/{n}".encode())
        for device, (_, events) in fleet.items():
            payloads = [next_payload(events) for _ in range(3)]
            assert payloads == [f"{device}/{n}".encode() for n in range(3)]
    finally:
        for link, _ in fleet.values():
            link.disconnect()


def test_sessions_reconnect_and_resubscribe_after_a_broker_restart(
    broker: BrokerRunner, loop: SharedLoop, topics: Topics
) -> None:
    fleet = sessions(loop, broker.port, topics, 5)
    try:
        for _, events in fleet.values():
            next_event(events, Connected)
        broker.stop()
        broker.start()
        for _, events in fleet.values():
            next_event(events, Connected)
        with TestClient(broker) as hub:
            for device in fleet:
                hub.publish(topics.down(device, "nudge"), b"after")
        for device, (link, events) in fleet.items():
            assert next_event(events, Inbound) == Inbound(
                topics.down(device, "nudge"), b"after", retained=False
            )
            assert link.connections == 2
    finally:
        for link, _ in fleet.values():
            link.disconnect()


def test_a_session_refuses_to_publish_while_no_broker_answers(
    loop: SharedLoop, topics: Topics
) -> None:
    fleet = sessions(loop, free_port(), topics, 1)
    link, _ = fleet["dev-0"]
    try:
        assert not link.publish("t/x", b"frame")
        assert not link.connected
    finally:
        link.disconnect()


def test_a_clean_disconnect_suppresses_the_will_and_a_dropped_loop_fires_it(
    mosquitto_broker: BrokerRunner, topics: Topics
) -> None:
    with TestClient(mosquitto_broker) as hub:
        hub.subscribe(topics.all_up())
        for clean in (True, False):
            shared = SharedLoop()
            shared.start()
            device = "will-clean" if clean else "will-dropped"
            link = shared.link(settings(mosquitto_broker.port, device))
            connected = threading.Event()
            last_will = (topics.up(device, "state"), b"offline")

            def sink(event: LinkEvent, up: threading.Event = connected) -> None:
                if isinstance(event, Connected):
                    up.set()

            link.on_event(sink)

            def will(w: tuple[str, bytes] = last_will) -> tuple[str, bytes]:
                return w

            link.connect(will=will)
            assert connected.wait(WAIT_S)
            if clean:
                link.disconnect()
                shared.stop()
            else:
                shared.stop()  # the loop ends with the socket open: no DISCONNECT
                assert link._sock is not None
                link._sock.close()  # what the process's death would do
        [fired] = hub.wait_for(1)
        assert fired.topic == topics.up("will-dropped", "state")
        time.sleep(1.0)
        assert hub.messages.empty()
