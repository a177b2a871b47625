"""What a device refuses reaches the operator, and the hub refuses first what a device would.

Against a real hub, real devices and a real Mosquitto:

- the operator asks (REST ``PUT /devices/{id}/desired``) for a version whose input has
  another shape than the model the device serves: 409 with the reason, and nothing is
  signed, stored or published;
- where the hub cannot check (the device serves a model the registry does not hold, as a
  factory image's), the device refuses the version itself and reports why, and the hub
  stores that reason on the device;
- a device says hello with an expired enrollment token: the hub answers it, signed, with
  ``pending: token_expired``, admits nothing, and keeps the reason on the pending device,
  and the agent logs what it means.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from agent.config import AgentConfig
from agent.device import Device
from hub.api import auth
from hub.fleet import desired, enrollment
from hub.fleet.desired import set_desired
from hub.service import HubService
from hub.store.rows import StateRecord, TelemetryRecord
from protocol.topics import Topics
from tests import models
from tests.brokers import BrokerRunner
from tests.hub.test_registry import npz
from tests.integration.live_fleet import (
    CLOCK,
    MODEL,
    UPDATER,
    LiveDevice,
    assign,
    eventually,
    hub_data,
    hub_settings,
    live_device,
    write_root,
)

INCOMPATIBLE = "its input has shape [?,5], the active model's [?,4]"


@pytest.fixture
def hub(tmp_path: Path, broker: BrokerRunner, topics: Topics) -> Iterator[HubService]:
    data = hub_data(tmp_path / "hub", versions=1)
    with HubService.start(hub_settings(data, broker, topics)) as service:
        yield service


@pytest.fixture
def device(hub: HubService, tmp_path: Path) -> Iterator[LiveDevice]:
    root = write_root(hub.settings.data_dir, tmp_path / "root.json")
    live = live_device(hub, root, tmp_path / "state", "dev-1")
    try:
        yield live
    finally:
        live.device.stop()


def five_inputs(hub: HubService) -> int:
    """Register (and release) a version whose input has 5 features, not 4."""
    reference = npz(X=np.random.default_rng(0).normal(size=(50, 5)).astype(np.float32))
    registered = hub.registry.register(
        models.gemm_classifier(n_features=5), name=MODEL, reference=reference, actor="test"
    )
    return int(registered.version)


@pytest.mark.parametrize("broker", ["mosquitto"], indirect=True)
def test_the_hub_refuses_a_version_the_device_would_refuse_and_stores_what_it_refused(
    hub: HubService, device: LiveDevice, monkeypatch: pytest.MonkeyPatch
) -> None:
    v1 = assign(hub.context, device, 1)
    eventually(lambda: device.serving() == v1, "v1 to serve")
    eventually(lambda: hub.store.devices.get(device.id).active_version == 1, "v1 reported")
    v2 = five_inputs(hub)
    admin = auth.create_token(
        hub.store, role="admin", name="t", actor="test", now_ms=CLOCK.now_ms()
    )
    before = hub.store.desired.get(device.id)

    response = httpx.put(
        f"{hub.http_url}/api/v1/devices/{device.id}/desired",
        json={"model": MODEL, "version": v2},
        headers={"Authorization": f"Bearer {admin.token}"},
    )

    assert response.status_code == 409, response.text
    assert INCOMPATIBLE in response.text
    assert hub.store.desired.get(device.id) == before
    assert hub.store.desired.current_assignment(device.id).version == before.assignment_version  # type: ignore[union-attr]

    # the same version where the hub cannot check (a model it does not hold, as a factory
    # image's): the device refuses it, says why, and the hub keeps the reason
    monkeypatch.setattr(desired, "_active_manifest", lambda ctx, device: None)
    set_desired(hub.context, device_id=device.id, model_name=MODEL, model_version=v2, actor="t")

    eventually(lambda: hub.store.devices.get(device.id).refusal is not None, "the refusal stored")
    stored = hub.store.devices.get(device.id)
    assert stored.refusal is not None
    assert stored.refusal.startswith("refused: incompatible: its inputs differ")
    assert INCOMPATIBLE in stored.refusal
    assert stored.refusal_at is not None
    assert device.serving() == v1  # the device kept what it served


def test_a_wrong_or_expired_token_is_answered_and_shown_on_the_pending_device(
    hub: HubService, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    issued = hub_token_expired(hub)
    config = AgentConfig(
        device_id="dev-late",
        state_dir=tmp_path / "late",
        broker_url=hub.broker_url,
        topic_prefix=hub.settings.topic_prefix,
        root_metadata=write_root(hub.settings.data_dir, tmp_path / "root.json"),
        enrollment_token=issued,
        http_port=0,
        telemetry_interval_s=3600,
        drain_interval_s=0.1,
        ack_timeout_s=30.0,  # so the only line said is the hub's answer
        stop_grace_s=0.2,
    )
    with caplog.at_level(logging.WARNING, logger="agent.uplink"):
        device = Device(config, updater=UPDATER)
        device.start()
        try:
            eventually(
                lambda: "pending: token_expired" in caplog.text, "the agent to log the answer"
            )
        finally:
            device.stop()

    assert "the enrollment token has expired" in caplog.text
    row = hub.store.devices.get("dev-late")
    assert (row.status, row.pending_reason) == ("pending", "token_expired")
    assert hub.store.audit.page(action="device.pending", target="dev-late").total == 1
    assert hub.store.uplink.records(StateRecord, "dev-late") == []
    assert hub.store.uplink.records(TelemetryRecord, "dev-late") == []


def hub_token_expired(hub: HubService) -> str:
    now = CLOCK.now_ms()
    issued = enrollment.create_token(
        hub.store, kind="fleet", by="t", now_ms=now, expires_at=now + 1
    )
    time.sleep(0.01)
    return issued.secret
