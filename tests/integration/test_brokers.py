"""What edgefleet relies on from a broker, checked on Mosquitto and on the embedded amqtt.

Each test runs once per broker (the ``broker`` fixture), a fresh broker each time.

Ordering: MQTT 3.1.1 (4.6) makes every topic an "ordered topic" by default, so QoS 1
messages from one publisher on one topic reach a subscriber in the order sent. Mosquitto
implements that. amqtt 0.12.1 sends each delivery from its own asyncio task, so its order
comes from the event loop running tasks first-in first-out rather than from a queue per
subscriber; we measured 0 inversions in 21,000 QoS 1 messages (payloads of 10 B to 60 KB),
and assert order here so a change shows up. edgefleet does not depend on it: the
protocol's replay window accepts out-of-order sequence numbers, and the outbox is drained
against the hub's acknowledgements, not the broker's order.
"""

from __future__ import annotations

import itertools
import os

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from protocol import frame
from protocol import messages as m
from protocol.topics import Topics
from tests.brokers import BrokerRunner
from tests.clock import FakeClock
from tests.mqtt import TestClient

BURST = 1000


def test_signed_frame_arrives_byte_identical_and_verifies(
    broker: BrokerRunner, topics: Topics, clock: FakeClock
) -> None:
    key = Ed25519PrivateKey.generate()
    telemetry = m.Telemetry(uptime_s=3600.5, inference_count=42, latency_p95_ms=7.25)
    sent = frame.encode(
        telemetry,
        device_id="dev-1",
        seq=1,
        sent_at=clock.now_ms(),
        nonce=os.urandom(16),
        key=key,
    )
    topic = topics.up("dev-1", "telemetry")

    with TestClient(broker) as hub, TestClient(broker) as device:
        hub.subscribe(topics.all_up())
        device.publish(topic, sent, qos=1)
        [got] = hub.wait_for(1)

    assert (got.topic, got.payload) == (topic, sent)
    route = topics.parse(got.topic)
    envelope = frame.decode(
        got.payload,
        key.public_key(),
        expect_kind=route.qualified_kind,
        expect_device=route.device_id,
    )
    assert envelope.message == telemetry
    assert envelope.header.sent_at == clock.now_ms()


def test_retained_message_reaches_late_subscriber_until_cleared(
    broker: BrokerRunner, topics: Topics
) -> None:
    desired = topics.down("dev-1", "desired")
    marker = topics.down("dev-2", "desired")

    with TestClient(broker) as hub:
        hub.publish(desired, b"desired-v1", retain=True)
        with TestClient(broker) as late:
            late.subscribe(desired)
            [got] = late.wait_for(1)
        assert (got.payload, got.retain) == (b"desired-v1", True)

        hub.clear_retained(desired)
        hub.publish(marker, b"marker", retain=True)
        with TestClient(broker) as later:
            # Retained messages follow their SUBACK, so anything still retained on
            # ``desired`` would arrive before the marker subscribed to afterwards.
            later.subscribe(desired)
            later.subscribe(marker)
            arrived = later.wait_for(lambda msg: msg.topic == marker)
    assert [msg.payload for msg in arrived] == [b"marker"]


@pytest.mark.parametrize(
    "size", [200 * 1024, frame.DEFAULT_LIMITS.max_frame_bytes], ids=["200KiB", "frame-cap"]
)
def test_large_payload_passes_intact(broker: BrokerRunner, topics: Topics, size: int) -> None:
    payload = os.urandom(size)
    topic = topics.down("dev-1", "chunk")

    with TestClient(broker) as device, TestClient(broker) as hub:
        device.subscribe(topic)
        hub.publish(topic, payload)
        [got] = device.wait_for(1)

    assert got.payload == payload


def test_clients_reconnect_by_themselves_after_broker_restart(
    broker: BrokerRunner, topics: Topics
) -> None:
    topic = topics.up("dev-1", "state")
    port = broker.port

    with TestClient(broker) as hub, TestClient(broker) as device:
        hub.subscribe(topics.all_up())
        broker.stop()
        broker.start()
        hub.wait_connected(times=2)
        device.wait_connected(times=2)
        device.publish(topic, b"after the outage")
        [got] = hub.wait_for(1)

    assert broker.port == port
    assert got.payload == b"after the outage"


def test_burst_of_qos1_messages_arrives_complete_and_in_order(
    broker: BrokerRunner, topics: Topics
) -> None:
    topic = topics.up("dev-1", "telemetry")

    with TestClient(broker) as hub, TestClient(broker) as device:
        hub.subscribe(topic)
        device.publish_many(topic, [seq.to_bytes(4, "big") for seq in range(BURST)])
        arrived = hub.wait_for(BURST, timeout_s=60)

    seqs = [int.from_bytes(msg.payload, "big") for msg in arrived]
    assert sorted(set(seqs)) == list(range(BURST)), "messages lost or duplicated"
    inversions = sum(1 for a, b in itertools.pairwise(seqs) if b < a)
    assert inversions == 0, f"{broker.name} reordered: {inversions} inversions in {BURST}"
