"""The hub's MQTT link: broker URLs, shedding when the ingest queue is full, and renewing
its subscription after a broker restart (against the real embedded broker)."""

from __future__ import annotations

import queue
import time
import uuid
from pathlib import Path

import pytest

from edgefleet.brokers import BrokerUrl
from hub.errors import InvalidRequest
from hub.metrics import sample
from hub.transport.mqtt import HubLink, Inbound, TlsFiles, parse_broker_url
from protocol.topics import Topics
from tests.brokers import BrokerRunner
from tests.mqtt import TestClient


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("mqtt://127.0.0.1:1884", BrokerUrl("127.0.0.1", 1884)),
        ("mqtt://broker.local", BrokerUrl("broker.local", 1883)),
        ("mqtts://broker.local", BrokerUrl("broker.local", 8883, tls=True)),
        ("mqtts://[::1]:8884/", BrokerUrl("::1", 8884, tls=True)),
    ],
)
def test_broker_urls_parse(url: str, expected: BrokerUrl) -> None:
    assert BrokerUrl.parse(url) == expected


@pytest.mark.parametrize(
    "url",
    [
        "http://broker:1883",
        "mqtt://",
        "mqtt://broker:99999",
        "mqtt://user:secret@broker:1883",
        "mqtt://broker:1883/topic",
        "broker:1883",
    ],
)
def test_bad_broker_urls_are_refused(url: str) -> None:
    with pytest.raises(InvalidRequest):
        parse_broker_url(url)


def test_unreadable_tls_files_are_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidRequest, match="TLS"):
        TlsFiles(ca_file=tmp_path / "missing.pem").context()


def link(broker: BrokerRunner, inbox: queue.Queue[Inbound], topics: Topics) -> HubLink:
    return HubLink(
        broker.url,
        client_id=f"hub-{uuid.uuid4().hex[:8]}",
        inbox=inbox,
        subscriptions=[topics.all_up()],
        reconnect_min_s=1,
        reconnect_max_s=2,
    )


def test_a_full_inbox_sheds_and_counts(embedded_broker: BrokerRunner, topics: Topics) -> None:
    inbox: queue.Queue[Inbound] = queue.Queue(maxsize=2)
    hub = link(embedded_broker, inbox, topics)
    shed = sample("edgefleet_hub_ingest_shed_total")
    hub.start()
    try:
        assert hub.wait_ready(10)
        with TestClient(embedded_broker) as device:
            device.publish_many(topics.up("dev-1", "telemetry"), [b"%d" % i for i in range(5)])
            device.publish(topics.up("dev-1", "state"), b"last")  # QoS 1 keeps order
        deadline = time.monotonic() + 10  # the broker delivers the rest asynchronously
        while sample("edgefleet_hub_ingest_shed_total") < shed + 4 and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        hub.stop()
    assert sample("edgefleet_hub_ingest_shed_total") == shed + 4
    assert [inbox.get_nowait(), inbox.get_nowait()] == [
        (topics.up("dev-1", "telemetry"), b"0"),
        (topics.up("dev-1", "telemetry"), b"1"),
    ]


def test_the_link_resubscribes_after_a_broker_restart(
    embedded_broker: BrokerRunner, topics: Topics
) -> None:
    inbox: queue.Queue[Inbound] = queue.Queue()
    hub = link(embedded_broker, inbox, topics)
    hub.start()
    try:
        assert hub.wait_ready(10)
        embedded_broker.stop()
        deadline = time.monotonic() + 10
        while hub.ready and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not hub.publish(topics.down("dev-1", "ack"), b"x")
        embedded_broker.start()
        assert hub.wait_ready(15)
        with TestClient(embedded_broker) as device:
            device.subscribe(topics.device_down("dev-1"))
            device.publish(topics.up("dev-1", "telemetry"), b"after")
            assert hub.publish(topics.down("dev-1", "ack"), b"ack")
            [received] = device.wait_for(1)
        assert inbox.get(timeout=5) == (topics.up("dev-1", "telemetry"), b"after")
        assert received.payload == b"ack"
    finally:
        hub.stop()
