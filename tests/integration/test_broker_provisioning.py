"""The hub keeps a real Mosquitto's logins, run with what ``edgefleet broker config``
writes: an agent that was never provisioned says hello on the enrollment listener, the hub
admits it and puts its verifier into ``passwd``, the agent logs in over TLS (a CA the
command generated); a revoked device is cut off. Attacks from a device's own broker
login (garbage, then another key; a clone of its identity) end up as audit alerts and
health, never as state.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.config import AgentConfig
from agent.device import Device
from agent.link import Link
from edgefleet.clock import SystemClock
from hub import keyring
from hub.fleet import enrollment
from hub.health import Health
from hub.metrics import sample
from hub.service import HubService
from hub.settings import HubSettings
from hub.store.rows import TokenKind
from hub.store.sqlite import SqliteStore
from hub.transport.broker_accounts import new_verifier
from hub.transport.mqtt import TlsFiles
from protocol import frame, keys
from protocol.messages import Hello
from protocol.topics import Topics
from tests.brokers import SecuredMosquitto, find_mosquitto
from tests.mqtt import TestClient

WAIT_S = 30.0


def eventually(condition: Callable[[], object], what: str, timeout_s: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


@pytest.fixture
def mosquitto(tmp_path: Path, topics: Topics) -> Iterator[SecuredMosquitto]:
    if find_mosquitto() is None:
        if os.environ.get("EDGEFLEET_REQUIRE_MOSQUITTO") == "1":
            pytest.fail("mosquitto is required")
        pytest.skip("mosquitto not installed")
    data = tmp_path / "hub"
    keyring.init(data / "keys", now_ms=SystemClock().now_ms())
    store = SqliteStore.open(HubSettings(data_dir=data).db_path)
    runner = SecuredMosquitto(tmp_path / "mosquitto", data, store, topics)
    store.close()
    with runner:
        yield runner


@pytest.fixture
def hub(mosquitto: SecuredMosquitto, tmp_path: Path, topics: Topics) -> Iterator[HubService]:
    settings = HubSettings(
        data_dir=tmp_path / "hub",
        broker_url=mosquitto.tls_url,
        topic_prefix=topics.prefix,
        http_port=0,
        offline_check_interval_s=3600.0,
        cloned_takeovers=3,
    )
    with HubService.start(settings, tls=TlsFiles(ca_file=mosquitto.ca_file)) as service:
        yield service


def agent_config(
    tmp_path: Path, mosquitto: SecuredMosquitto, hub: HubService, device_id: str, token: str
) -> AgentConfig:
    root = tmp_path / "root.json"
    root.write_bytes(hub.keyring.chain[0].to_bytes())
    return AgentConfig(
        device_id=device_id,
        state_dir=tmp_path / "devices" / device_id,
        broker_url=mosquitto.tls_url,
        ca_file=mosquitto.ca_file,
        enroll_broker_url=mosquitto.enroll_url,
        topic_prefix=hub.settings.topic_prefix,
        root_metadata=root,
        enrollment_token=token,
        http_port=0,
        drain_interval_s=0.2,
        ack_timeout_s=1.0,
        reconnect_min_s=0.1,
        reconnect_max_s=1.0,
        stop_grace_s=0.5,
        telemetry_interval_s=3600.0,
    )


def token(hub: HubService, kind: TokenKind = "fleet") -> str:
    issued = enrollment.create_token(
        hub.store, kind=kind, by="test", now_ms=hub.clock.now_ms(),
        expires_at=hub.clock.now_ms() + 3_600_000,
    )  # fmt: skip
    return issued.secret


def logged_in(device: Device) -> bool:
    link = device.agent.transport
    assert isinstance(link, Link)
    return link.connected and not link.enrolling


def passwd(mosquitto: SecuredMosquitto) -> str:
    return mosquitto.layout.passwd.read_text()


def test_an_admitted_agent_logs_in_over_tls_and_a_revoked_one_is_cut_off(
    mosquitto: SecuredMosquitto, hub: HubService, tmp_path: Path
) -> None:
    config = agent_config(tmp_path, mosquitto, hub, "dev-1", token(hub))
    assert "dev-1:" not in passwd(mosquitto)
    device = Device(config)
    device.start()
    try:
        eventually(lambda: logged_in(device), "the agent's login over TLS")
        assert hub.store.devices.get("dev-1").status == "active"
        assert f"dev-1:{hub.store.broker_credentials.get('dev-1')}\n" in passwd(mosquitto)
        link = device.agent.transport
        assert isinstance(link, Link)
        assert link.enrollment_sessions >= 1  # it said hello anonymously first
        eventually(lambda: hub.store.devices.get("dev-1").online, "the device online")

        enrollment.revoke(hub.store, "dev-1", by="test", now_ms=hub.clock.now_ms())

        eventually(lambda: "dev-1:" not in passwd(mosquitto), "passwd without dev-1")
        eventually(lambda: not logged_in(device), "the revoked agent cut off")
        time.sleep(1.5)  # it keeps trying: no login gets through
        assert not logged_in(device)
    finally:
        device.stop()


def test_garbage_from_a_devices_own_login_does_not_drown_the_attack_that_follows(
    mosquitto: SecuredMosquitto, hub: HubService, topics: Topics
) -> None:
    device_key = Ed25519PrivateKey.generate()
    enrollment.preauthorize(
        hub.store, "dev-1", keys.public_hex(device_key.public_key()), by="test",
        now_ms=hub.clock.now_ms(),
    )  # fmt: skip
    password = "stolen broker password of dev-1"
    hub.store.broker_credentials.put_many({"dev-1": new_verifier(password)}, at_ms=1)
    hub.context.store.counters.bump("devices_epoch")  # what approve/revoke do: a sync follows
    eventually(lambda: "dev-1:" in passwd(mosquitto), "dev-1 provisioned")
    pinned = hub.store.devices.get("dev-1").public_key
    counted = sample("edgefleet_hub_security_events_total", {"action": "key_change_refused"})
    attacker_key = Ed25519PrivateKey.generate()
    hello = frame.encode(
        Hello(public_key=keys.public_hex(attacker_key.public_key()), agent_version="evil"),
        device_id="dev-1", seq=1, sent_at=hub.clock.now_ms(), nonce=os.urandom(16),
        key=attacker_key,
    )  # fmt: skip

    with TestClient(mosquitto, "dev-1", login=("dev-1", password)) as attacker:
        attacker.publish_many(
            topics.up("dev-1", "telemetry"), [b"garbage %d" % i for i in range(100)]
        )
        attacker.publish(topics.up("dev-1", "hello"), hello)

        eventually(
            lambda: hub.store.audit.count(action="key_change_refused", outcome="alert") == 1,
            "the key_change_refused alert",
        )

    assert hub.store.devices.get("dev-1").public_key == pinned
    assert (
        sample("edgefleet_hub_security_events_total", {"action": "key_change_refused"})
        == counted + 1
    )
    garbage_rows = hub.store.audit.count(actor="device:dev-1", outcome="rejected")
    assert garbage_rows == hub.settings.audit_rejections_per_device_per_min


def test_two_agents_sharing_one_identity_are_flagged_cloned(
    mosquitto: SecuredMosquitto, hub: HubService, tmp_path: Path
) -> None:
    config = agent_config(tmp_path, mosquitto, hub, "dev-1", token(hub))
    original = Device(config)
    original.start()
    try:
        eventually(lambda: logged_in(original), "the original's login")
    finally:
        original.stop()
    twin_dir = tmp_path / "devices" / "dev-1-twin"
    shutil.copytree(config.state_dir, twin_dir)
    twin_config = AgentConfig(**{**vars(config), "state_dir": twin_dir})
    takeovers = sample("edgefleet_hub_session_takeovers_total")
    devices = [Device(config), Device(twin_config)]
    for device in devices:
        device.start()
    try:
        eventually(
            lambda: hub.store.devices.get("dev-1").health == Health.CLONED_DEVICE,
            "dev-1 flagged cloned_device",
        )
    finally:
        for device in devices:
            device.stop()
    assert sample("edgefleet_hub_session_takeovers_total") >= takeovers + 3
    [alert] = hub.store.audit.page(action="cloned_device").items
    assert (alert.target, alert.outcome) == ("dev-1", "alert")
