"""The hub's model delivery end to end, on Mosquitto and on the embedded amqtt broker.

A device enrolls with a token (or an operator pre-authorizes its key), the operator
registers a model and sets the device's desired version; a protocol-level device
(:mod:`tests.hub.device_double`) verifies what it receives from the root it was
provisioned with, downloads the package over ``chunk`` frames, checks it against the
signed release entry and reports the new model; the reconciler then finds the device
in sync. The hub side is the real thing: registry,
``hub.ingest.worker.Ingest`` (verifying, committing and acknowledging uplink frames, handing
``fetch`` requests to :meth:`hub.fleet.delivery.Delivery.on_fetch`),
``hub.transport.downlink.Downlink`` over a ``hub.transport.mqtt.HubLink``, and the reconciler.
"""

from __future__ import annotations

import queue
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

from hub import keyring
from hub.api import auth
from hub.api.app import create_app
from hub.api.services import HubServices
from hub.context import HubContext
from hub.fleet import enrollment
from hub.fleet.delivery import Delivery
from hub.fleet.desired import set_desired
from hub.fleet.reconciler import Actions, reconcile, republish_all
from hub.ingest.worker import Ingest
from hub.keyring import Keys
from hub.registry.artifacts import ArtifactStore
from hub.registry.registry import Registry
from hub.settings import HubSettings
from hub.store import Store
from hub.store.dialects import open_store
from hub.transport.downlink import Downlink
from hub.transport.mqtt import HubLink, Inbound, fleet_publisher
from protocol.messages import ModelRef
from protocol.topics import Topics
from tests import models
from tests.brokers import BrokerRunner
from tests.clock import FakeClock
from tests.hub.device_double import DeviceDouble
from tests.hub.test_registry import cli, reference

DEVICE = "dev-1"
READY_S = 15.0


@dataclass
class RunningHub:
    ctx: HubContext
    clock: FakeClock
    link: HubLink
    topics: Topics
    registry: Registry

    @property
    def settings(self) -> HubSettings:
        return self.ctx.settings

    @property
    def store(self) -> Store:
        return self.ctx.store

    @property
    def ring(self) -> Keys:
        return self.ctx.keyring

    def republish_all(self) -> int:
        return republish_all(self.ctx)


@pytest.fixture
def hub(
    broker: BrokerRunner, topics: Topics, tmp_path: Path, clock: FakeClock
) -> Iterator[RunningHub]:
    settings = HubSettings(
        data_dir=tmp_path / "hub",
        broker_url=broker.url,
        topic_prefix=topics.prefix,
        chunk_bytes=512,
    )
    ring = keyring.init(settings.keys_dir, now_ms=clock.now_ms())
    store = open_store(settings.db_path)
    artifacts = ArtifactStore(settings.artifacts_dir)
    inbox: queue.Queue[Inbound] = queue.Queue(maxsize=10_000)
    link = HubLink(
        broker.url,
        client_id=f"hub-{uuid.uuid4().hex[:8]}",
        inbox=inbox,
        subscriptions=[topics.all_up()],
    )
    downlink = Downlink(store, link, topics, ring.signing_keys("rollout")[0], clock)
    delivery = Delivery(store, artifacts, downlink, clock, settings)
    ingest = Ingest(store, settings, clock, downlink, on_fetch=delivery.on_fetch, inbox=inbox)
    ctx = HubContext(store, ring, clock, settings, downlink, fleet_publisher(link, topics))
    registry = Registry(ctx, artifacts)
    link.start()
    try:
        assert link.wait_ready(READY_S), f"hub link not ready on {broker}"
        ingest.start()
        yield RunningHub(ctx, clock, link, topics, registry)
    finally:
        ingest.stop()
        link.stop()
        store.close()


def eventually(check: Callable[[], bool], what: str, timeout_s: float = READY_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def enroll(hub: RunningHub, broker: BrokerRunner, device_id: str = DEVICE) -> DeviceDouble:
    device = DeviceDouble(broker, hub.topics, device_id, hub.ring.chain[0], now=hub.clock.now_ms)
    enrollment.preauthorize(
        hub.store, device_id, device.public_hex, by="operator", now_ms=hub.clock.now_ms()
    )
    return device


def rest_get(hub: RunningHub, path: str) -> Any:
    """GET ``path`` from the hub's REST API, as a viewer."""
    services = HubServices(
        registry=hub.registry, artifacts=hub.registry.artifacts, metrics=CollectorRegistry()
    )
    app = create_app(hub.ctx, services)
    viewer = auth.create_token(
        hub.store, role="viewer", name="it", actor="cli", now_ms=hub.clock.now_ms()
    )
    with TestClient(app) as client:
        response = client.get(path, headers={"Authorization": f"Bearer {viewer.token}"})
    assert response.status_code == 200, response.text
    return response.json()


def release_and_assign(hub: RunningHub) -> None:
    model = models.mlp_classifier()
    hub.registry.register(  # publishes the release list and a heartbeat pinning it
        model.model, name="churn", reference=reference(features=4), actor="operator"
    )
    set_desired(
        hub.ctx,
        device_id=DEVICE,
        model_name="churn",
        model_version=1,
        actor="operator",
    )


def test_device_downloads_its_assigned_model_over_chunks_and_converges(
    hub: RunningHub, broker: BrokerRunner
) -> None:
    token = enrollment.create_token(
        hub.store, kind="single", by="operator", now_ms=hub.clock.now_ms()
    )
    device = DeviceDouble(broker, hub.topics, DEVICE, hub.ring.chain[0], now=hub.clock.now_ms)
    with device:
        device.hello(token.secret)
        eventually(lambda: hub.store.devices.status(DEVICE) == "active", "enrollment")
        release_and_assign(hub)
        assignment = device.sync()
        entry = assignment.entry
        assert (entry.name, entry.version, entry.release_counter) == ("churn", 1, 1)
        assert reconcile(hub.ctx) == Actions()

        package = device.download(entry, chunk=64 * 1024)
        assert package == hub.registry.download("churn", 1)
        assert len(package) > 4 * hub.settings.chunk_bytes  # it took several chunks
        device.report(ModelRef(entry.name, entry.version, entry.sha256))

        eventually(lambda: hub.store.devices.get(DEVICE).active_version == 1, "the state report")
    shown = rest_get(hub, f"/api/v1/devices/{DEVICE}")
    assert shown["active"] == {"name": "churn", "version": 1, "sha256": entry.sha256}
    assert (shown["desired"]["model"], shown["desired"]["version"]) == ("churn", 1)
    hub.clock.advance(hub.settings.stuck_after_s)
    assert reconcile(hub.ctx) == Actions()
    assert hub.store.audit.count(outcome="rejected") == 0


def test_retained_state_is_restored_after_a_broker_restart(
    hub: RunningHub, broker: BrokerRunner
) -> None:
    device = enroll(hub, broker)
    release_and_assign(hub)
    broker.stop()  # neither broker here keeps retained messages across a restart
    broker.start()
    eventually(lambda: hub.link.ready, "the hub link to reconnect")
    assert hub.republish_all() == 1
    with device:
        entry = device.sync().entry
        assert entry.name == "churn"
        assert device.download(entry) == hub.registry.download("churn", 1)


def test_cli_stores_release_and_desired_state_and_the_running_hub_publishes_them(
    hub: RunningHub, broker: BrokerRunner
) -> None:
    """The CLI publishes nothing itself (issue 8: its own downlink frames stranded a
    device's replay window); the hub it stores for publishes what it stored."""
    device = enroll(hub, broker)  # on the hub's clock, which also signs the heartbeat
    data = hub.settings.data_dir
    model = data / "churn.onnx"
    model.write_bytes(models.mlp_classifier().model)
    ref = data / "ref.npz"
    ref.write_bytes(reference(features=4))
    assert (
        cli("model", "register", model, "--name", "churn", "--reference", ref, "--data", data) == 0
    )
    assert (
        cli(
            "rollout", "set", "--device", DEVICE, "--model", "churn", "--version", 1, "--data", data
        )
        == 0
    )
    assert hub.store.desired.get(DEVICE).published_at is None
    assert hub.republish_all() == 1  # what the running hub does on a reconnect, too
    with device:
        assert device.sync().entry.name == "churn"
