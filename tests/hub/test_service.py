"""The whole hub in-process (:class:`hub.service.HubService`) on Mosquitto and on amqtt.

Everything is real: the broker, the REST API under uvicorn on a free port, the
scheduler, ingest and a protocol-level device (:mod:`tests.hub.device_double`).
"""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import httpx
import pytest

from edgefleet.clock import SystemClock
from hub import keyring
from hub.api import auth
from hub.context import HubContext
from hub.fleet import enrollment
from hub.registry.artifacts import ArtifactStore
from hub.registry.registry import Registry
from hub.service import DataDirInUse, HubService
from hub.settings import HubSettings
from hub.store.dialects import open_store
from protocol.topics import Topics
from tests import models
from tests.brokers import BrokerRunner
from tests.hub.device_double import DeviceDouble
from tests.hub.test_registry import reference
from tests.mqtt import Received, TestClient

CLOCK = SystemClock()  # the device double signs with real time, so the hub judges by it
WAIT_S = 15.0
FLEET_KINDS = {"root", "release", "heartbeat"}


def hub_settings(
    data: Path, broker: BrokerRunner, topics: Topics, database: str = ""
) -> HubSettings:
    return HubSettings(
        data_dir=data,
        database=database,
        broker_url=broker.url,
        topic_prefix=topics.prefix,
        client_id=f"hub-{uuid.uuid4().hex[:8]}",
        http_port=0,
    )


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return hub_data(tmp_path / "hub")


def hub_data(path: Path, database: str = "") -> Path:
    """A hub data directory with a key ring and one released model (so a release list
    and heartbeats exist to publish), its store in the directory or at ``database``."""
    ring = keyring.init(path / "keys", now_ms=CLOCK.now_ms())
    settings = HubSettings(data_dir=path, database=database)
    store = open_store(settings.store_location)
    try:
        ctx = HubContext(store, ring, CLOCK, settings)
        registry = Registry(ctx, ArtifactStore(path / "artifacts"))
        registry.register(
            models.gemm_classifier(), name="churn", reference=reference(), actor="test"
        )
    finally:
        store.close()
    return path


@pytest.fixture
def hub(data: Path, broker: BrokerRunner, topics: Topics) -> Iterator[HubService]:
    service = HubService.start(hub_settings(data, broker, topics))
    try:
        yield service
    finally:
        service.stop()


def eventually(check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def retained_fleet_documents(broker: BrokerRunner, topics: Topics) -> set[str]:
    """The kinds of fleet document a fresh subscriber receives as retained messages."""
    seen: set[str] = set()

    def collect(message: Received) -> bool:
        if message.retain and message.payload:
            seen.add(message.topic.rsplit("/", 1)[-1])
        return seen >= FLEET_KINDS

    with TestClient(broker) as client:
        client.subscribe(topics.all_fleet())
        with contextlib.suppress(AssertionError):  # fewer than all of them: say which
            client.wait_for(collect, 1.0)
    return seen


@pytest.fixture
def hub_on_each_store(
    tmp_path: Path, broker: BrokerRunner, topics: Topics, database: str
) -> Iterator[HubService]:
    """A hub over SQLite, then over PostgreSQL (the ``database`` fixture)."""
    data = hub_data(tmp_path / "hub", database)
    with HubService.start(hub_settings(data, broker, topics, database)) as service:
        yield service


def test_hub_serves_rest_and_enrolls_a_device_over_mqtt(
    hub_on_each_store: HubService, broker: BrokerRunner, topics: Topics
) -> None:
    hub = hub_on_each_store
    assert httpx.get(f"{hub.http_url}/healthz").json() == {"status": "ok", "store": True}
    admin = auth.create_token(hub.store, role="admin", name="t", actor="cli", now_ms=CLOCK.now_ms())
    token = enrollment.create_token(hub.store, kind="single", by="test", now_ms=CLOCK.now_ms())
    device = DeviceDouble(broker, topics, "dev-1", hub.keyring.chain[0], now=CLOCK.now_ms)

    def listed() -> list[str]:
        response = httpx.get(
            f"{hub.http_url}/api/v1/devices", headers={"Authorization": f"Bearer {admin.token}"}
        )
        assert response.status_code == 200, response.text
        return [item["id"] for item in response.json()["items"]]

    with device:
        device.hello(token.secret)
        eventually(lambda: listed() == ["dev-1"], "the device in GET /api/v1/devices")


def test_hub_publishes_retained_fleet_documents_once_connected(
    hub: HubService, broker: BrokerRunner, topics: Topics
) -> None:
    eventually(
        lambda: retained_fleet_documents(broker, topics) == FLEET_KINDS, "retained documents"
    )


def test_hub_republishes_fleet_documents_after_a_broker_restart(
    hub: HubService, broker: BrokerRunner, topics: Topics
) -> None:
    broker.stop()  # neither broker keeps retained messages across a restart
    broker.start()
    eventually(
        lambda: retained_fleet_documents(broker, topics) == FLEET_KINDS, "republished documents"
    )


def test_hub_stop_is_prompt_idempotent_and_frees_the_http_port(hub: HubService) -> None:
    url = hub.http_url
    started = time.monotonic()
    hub.stop()
    assert time.monotonic() - started < 5.0
    hub.stop()
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{url}/healthz")


def test_a_second_hub_on_the_same_data_directory_is_refused_before_it_touches_anything(
    hub: HubService, broker: BrokerRunner, topics: Topics
) -> None:
    settings = replace(hub_settings(hub.settings.data_dir, broker, topics), broker_url="mqtt://x:9")
    with pytest.raises(DataDirInUse, match=rf"{hub.settings.data_dir}.*process {os.getpid()}"):
        HubService.start(settings)
    assert httpx.get(f"{hub.http_url}/healthz").json()["store"] is True


def test_each_hub_has_a_client_id_of_its_own_per_data_directory_and_process(
    tmp_path: Path,
) -> None:
    one, two = HubSettings(data_dir=tmp_path / "a"), HubSettings(data_dir=tmp_path / "b")
    assert one.mqtt_client_id(4242) == HubSettings(data_dir=tmp_path / "a").mqtt_client_id(4242)
    assert len({one.mqtt_client_id(4242), two.mqtt_client_id(4242), one.mqtt_client_id(7)}) == 3
    assert len(one.mqtt_client_id(9_999_999)) <= 23  # what every MQTT 3.1.1 broker accepts
    assert replace(one, client_id="given").mqtt_client_id(1) == "given"
