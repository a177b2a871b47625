"""The hub's retained topics, overwritten by a hostile client on a real Mosquitto.

A client the broker lets in (no ACLs here) leaves a stale release list on ``fleet/release``,
garbage on ``fleet/heartbeat``, another device's desired state on ``dev-1``'s
``down/desired`` and garbage on the desired topic of a device the hub never knew. Within
seconds the hub puts its own messages back (the current release list, a fresh heartbeat,
dev-1's own desired state) and empties the topic it owns nothing on; each event is
audited. The device on the other end keeps serving, and trusts what it trusted.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from hub.fleet.documents import signed_release
from hub.fleet.releases import heartbeat_for
from hub.service import HubService
from protocol import frame, metadata
from protocol.documents import SignedDocument
from protocol.messages import DesiredState, DeviceConfig
from protocol.metadata import ReleaseList
from protocol.replay import downlink_seq
from protocol.topics import Topics
from tests import models
from tests.brokers import BrokerRunner
from tests.hub.test_registry import reference
from tests.integration.live_fleet import (
    MODEL,
    LiveDevice,
    assign,
    eventually,
    hub_data,
    hub_settings,
    live_device,
    write_root,
)
from tests.mqtt import TestClient

WITHIN_S = 10.0


@pytest.fixture
def hub(tmp_path: Path, mosquitto_broker: BrokerRunner, topics: Topics) -> Iterator[HubService]:
    data = hub_data(tmp_path / "hub", versions=1)
    with HubService.start(hub_settings(data, mosquitto_broker, topics)) as service:
        yield service


@pytest.fixture
def devices(hub: HubService, tmp_path: Path) -> Iterator[tuple[LiveDevice, LiveDevice]]:
    root = write_root(hub.settings.data_dir, tmp_path / "root.json")
    one = live_device(hub, root, tmp_path / "one", "dev-1")
    two = live_device(hub, root, tmp_path / "two", "dev-2")
    try:
        yield one, two
    finally:
        one.device.stop()
        two.device.stop()


def retained(broker: BrokerRunner, topic: str, wait_s: float = 2.0) -> bytes | None:
    """What a new subscriber finds retained on ``topic`` (None: nothing)."""
    with TestClient(broker) as reader:
        reader.subscribe(topic)
        try:
            found = reader.wait_for(lambda m: m.retain and m.topic == topic, wait_s)
        except AssertionError:
            return None
    return found[-1].payload or None


def release_version(payload: bytes | None) -> int | None:
    if payload is None:
        return None
    try:
        return metadata.parse(ReleaseList, SignedDocument.from_bytes(payload)).version
    except Exception:
        return None


def desired_for(hub: HubService, payload: bytes | None) -> str | None:
    """The device a retained desired frame is signed for by the hub's rollout key."""
    if payload is None:
        return None
    keys = list(hub.keyring.root.role_keys("rollout").values())
    try:
        envelope = frame.decode(payload, keys, expect_kind="down.desired")
    except Exception:
        return None
    assert isinstance(envelope.message, DesiredState)
    return envelope.header.device_id


def test_the_hub_restores_its_retained_topics_a_hostile_client_overwrote(
    hub: HubService,
    devices: tuple[LiveDevice, LiveDevice],
    mosquitto_broker: BrokerRunner,
    topics: Topics,
) -> None:
    one, two = devices
    v1 = assign(hub.context, one, 1)
    assign(hub.context, two, 1)
    eventually(lambda: one.serving() == v1 and two.serving() == v1, "both devices on v1")
    stale_release = retained(mosquitto_broker, topics.fleet("release"))
    hub.registry.register(
        models.gemm_classifier(hidden=9), name=MODEL, reference=reference(), actor="test"
    )
    eventually(
        lambda: release_version(retained(mosquitto_broker, topics.fleet("release"))) == 2,
        "release list v2 published",
    )
    eventually(lambda: one.device.trust.versions().release == 2, "dev-1 to trust list v2")
    trusted = one.device.trust.versions()
    two_desired = retained(mosquitto_broker, topics.down("dev-2", "desired"))
    assert stale_release is not None
    assert desired_for(hub, two_desired) == "dev-2"

    started = time.monotonic()
    with TestClient(mosquitto_broker, client_id="intruder") as intruder:
        intruder.publish(topics.fleet("release"), stale_release, retain=True)
        intruder.publish(topics.fleet("heartbeat"), b"\x00garbage", retain=True)
        intruder.publish(topics.down("dev-1", "desired"), two_desired or b"", retain=True)
        intruder.publish(topics.down("ghost", "desired"), b"garbage", retain=True)

    eventually(
        lambda: release_version(retained(mosquitto_broker, topics.fleet("release"))) == 2,
        "the current release list back",
        WITHIN_S,
    )
    eventually(
        lambda: (
            desired_for(hub, retained(mosquitto_broker, topics.down("dev-1", "desired"))) == "dev-1"
        ),
        "dev-1's own desired state back",
        WITHIN_S,
    )
    eventually(
        lambda: retained(mosquitto_broker, topics.down("ghost", "desired"), 0.5) is None,
        "the unowned topic emptied",
        WITHIN_S,
    )
    heartbeat = retained(mosquitto_broker, topics.fleet("heartbeat"))
    assert heartbeat is not None
    assert metadata.parse(metadata.Heartbeat, SignedDocument.from_bytes(heartbeat)).version > 0
    assert time.monotonic() - started < 3 * WITHIN_S

    audited = {e.target: e for e in hub.store.audit.page(action="retained.restored").items}
    assert set(audited) == {
        topics.fleet("release"),
        topics.fleet("heartbeat"),
        topics.down("dev-1", "desired"),
        topics.down("ghost", "desired"),
    }
    assert audited[topics.down("ghost", "desired")].reason == "foreign_message"
    assert one.serving() == v1  # the device was never harmed
    assert one.device.trust.versions().release == trusted.release
    assert one.device.trust.versions().assignment >= trusted.assignment
    assert "downlink_refused" not in one.flags()
    # the hub's own older release list is stale, not forged: no fast-forward alarm
    assert hub.store.audit.count(action="security.fast_forward") == 0


def test_a_document_signed_with_the_hubs_own_key_ahead_of_the_hub_raises_the_alarm(
    hub: HubService,
    devices: tuple[LiveDevice, LiveDevice],
    mosquitto_broker: BrokerRunner,
    topics: Topics,
) -> None:
    one, _ = devices
    assign(hub.context, one, 1)
    eventually(lambda: one.serving() is not None, "dev-1 serving")
    # a thief holding the heartbeat and rollout keys (threat-model T7): a heartbeat far
    # ahead, and a desired state whose seq stands a day ahead of the hub's clock
    now_ms = int(time.time() * 1000)
    current = signed_release(hub.store)
    assert current is not None
    beat = heartbeat_for(current, version=999_999, now_ms=now_ms, lifetime_ms=3_600_000)
    forged_beat = metadata.sign(beat, hub.keyring.signing_keys("heartbeat")).to_bytes()
    far_list = replace(current.release, version=current.release.version + 1000)
    forged_list = metadata.sign(far_list, hub.keyring.signing_keys("release")).to_bytes()
    forged_desired = frame.encode(
        DesiredState(DeviceConfig()),
        device_id="dev-1",
        seq=downlink_seq(now_ms + 86_400_000, 7),
        sent_at=now_ms,
        nonce=os.urandom(16),
        key=hub.keyring.signing_keys("rollout")[0],
    )
    with TestClient(mosquitto_broker, client_id="thief") as thief:
        thief.publish(topics.fleet("heartbeat"), forged_beat, retain=True)
        thief.publish(topics.fleet("release"), forged_list, retain=True)
        thief.publish(topics.down("dev-1", "desired"), forged_desired, retain=True)

    def alarms() -> dict[str, str] | None:
        found = hub.store.audit.page(action="security.fast_forward").items
        by_target = {e.target: e.reason for e in found if e.outcome == "alert"}
        return by_target if len(by_target) == 3 else None

    eventually(lambda: alarms() is not None, "every forgery to raise the alarm", WITHIN_S)
    raised = alarms()
    assert raised is not None
    assert raised[topics.fleet("heartbeat")].startswith("a heartbeat v999999 signed with the")
    assert "rotate the heartbeat key" in raised[topics.fleet("heartbeat")]
    assert "release list v1001 signed with the release key" in raised[topics.fleet("release")]
    assert "ahead of the hub's clock" in raised[topics.down("dev-1", "desired")]
    assert "rotate the rollout key" in raised[topics.down("dev-1", "desired")]
    eventually(
        lambda: (
            desired_for(hub, retained(mosquitto_broker, topics.down("dev-1", "desired"))) == "dev-1"
            and retained(mosquitto_broker, topics.down("dev-1", "desired")) != forged_desired
        ),
        "the hub's own desired state back",
        WITHIN_S,
    )
