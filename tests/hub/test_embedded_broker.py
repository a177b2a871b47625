"""The embedded broker's lifecycle: ports, restarts, size cap, and nothing left behind."""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Iterator

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from hub.transport.broker import BrokerError, EmbeddedBroker, _Subscriptions
from tests.brokers import mqtt_ping
from tests.mqtt import TestClient


def broker_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("edgefleet-broker")]


@pytest.fixture
def running() -> Iterator[EmbeddedBroker]:
    with EmbeddedBroker() as broker:
        yield broker


def test_port_zero_binds_a_free_port_and_reports_it(running: EmbeddedBroker) -> None:
    assert running.port != 0
    assert running.url == f"mqtt://127.0.0.1:{running.port}"
    assert mqtt_ping(running.host, running.port)


def test_start_and_stop_are_idempotent() -> None:
    broker = EmbeddedBroker()
    broker.stop()
    broker.start()
    port = broker.port
    broker.start()
    assert (broker.running, broker.port) == (True, port)
    broker.stop()
    broker.stop()
    assert not broker.running
    assert not mqtt_ping(broker.host, port)


def test_restart_serves_again_on_the_same_port(running: EmbeddedBroker) -> None:
    port = running.port
    running.stop()
    running.start()
    assert running.port == port
    assert mqtt_ping(running.host, port)


def test_two_brokers_run_side_by_side_without_sharing_messages() -> None:
    with EmbeddedBroker() as first, EmbeddedBroker() as second:
        assert first.port != second.port
        with TestClient(first) as one, TestClient(second) as two:
            one.publish("side/by/side", b"first", retain=True)
            two.publish("side/by/side", b"second", retain=True)
            one.subscribe("side/#")
            two.subscribe("side/#")
            assert [m.payload for m in one.wait_for(1)] == [b"first"]
            assert [m.payload for m in two.wait_for(1)] == [b"second"]


def test_stop_leaves_no_broker_thread_running() -> None:
    before = set(threading.enumerate())
    with EmbeddedBroker() as broker, TestClient(broker) as client:
        client.subscribe("any/#")
        assert broker_threads()
    assert broker_threads() == []
    leftover = [t for t in set(threading.enumerate()) - before if t.is_alive()]
    assert leftover == []


def test_port_in_use_raises_broker_error_and_leaves_nothing_running() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        broker = EmbeddedBroker(port=taken.getsockname()[1])
        with pytest.raises(BrokerError, match="failed to start") as raised:
            broker.start()
    assert raised.value.reason == "broker"
    assert not broker.running
    assert broker_threads() == []


def test_oversize_message_disconnects_its_sender_and_is_not_forwarded() -> None:
    disconnected = threading.Event()
    sender = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv311)
    sender.on_disconnect = lambda *args: disconnected.set()

    with EmbeddedBroker(max_message_bytes=1024) as broker, TestClient(broker) as receiver:
        receiver.subscribe("cap/#")
        sender.connect(broker.host, broker.port)
        sender.loop_start()
        try:
            sender.publish("cap/big", b"x" * 2048, qos=1)
            assert disconnected.wait(10), "the broker kept a client that sent 2 KiB"
        finally:
            sender.disconnect()
            sender.loop_stop()
        with TestClient(broker) as other:
            other.publish("cap/small", b"y" * 1024)
        arrived = receiver.wait_for(1)

    assert [(m.topic, len(m.payload)) for m in arrived] == [("cap/small", 1024)]


def test_amqtt_logging_is_quiet_by_default(running: EmbeddedBroker) -> None:
    assert not logging.getLogger("amqtt.broker").isEnabledFor(logging.INFO)


def test_the_subscription_table_can_change_while_a_broadcast_walks_it() -> None:
    # amqtt awaits inside this loop; a SUBSCRIBE meanwhile used to end the broadcast
    table = _Subscriptions({"a/#": [], "b/#": []})
    walked = []
    for topic_filter, _ in table.items():
        table[f"new/{topic_filter}"] = []
        walked.append(topic_filter)
    for topic_filter in table:
        del table[topic_filter]
    assert walked == ["a/#", "b/#"]
    assert table == {}
