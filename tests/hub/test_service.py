"""The whole hub in-process (:class:`hub.service.HubService`) on Mosquitto and on amqtt.

Everything is real: the broker, the REST API under uvicorn on a free port, the
scheduler, ingest and a protocol-level device (:mod:`tests.hub.device_double`).
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Callable, Iterator
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
from hub.service import HubService
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


def hub_settings(data: Path, broker: BrokerRunner, topics: Topics) -> HubSettings:
    return HubSettings(
        data_dir=data,
        broker_url=broker.url,
        topic_prefix=topics.prefix,
        client_id=f"hub-{uuid.uuid4().hex[:8]}",
        http_port=0,
    )


@pytest.fixture
def data(tmp_path: Path) -> Path:
    """A hub data directory with a key ring and one released model (so a release list
    and heartbeats exist to publish)."""
    path = tmp_path / "hub"
    ring = keyring.init(path / "keys", now_ms=CLOCK.now_ms())
    store = open_store(path / "hub.db")
    try:
        ctx = HubContext(store, ring, CLOCK, HubSettings(data_dir=path))
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


def test_hub_serves_rest_and_enrolls_a_device_over_mqtt(
    hub: HubService, broker: BrokerRunner, topics: Topics
) -> None:
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
