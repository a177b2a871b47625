"""Broker access control, performed against both tiers: Mosquitto running exactly what
``edgefleet broker config`` writes, and the embedded broker behind its gate.

Each test logs in as a device (or as nobody), tries what a hostile or broken device
would, and checks what the hub's subscription actually received afterwards, ending with a
sentinel the device may publish so "nothing else arrived" is a fact, not a timeout.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from edgefleet.clock import SystemClock
from hub import keyring
from hub.service import HubService
from hub.settings import HubSettings
from hub.store.sqlite import SqliteStore
from hub.transport.broker import EmbeddedBroker
from hub.transport.broker_access import HUB_USERNAME
from hub.transport.broker_accounts import new_password, new_verifier
from protocol.topics import Topics
from tests.brokers import SecuredBroker, SecuredEmbedded, SecuredMosquitto, find_mosquitto
from tests.mqtt import Received, TestClient


@dataclass(frozen=True)
class At:
    """A listener other than the runner's own (Mosquitto's enrollment listener)."""

    host: str
    port: int


@pytest.fixture(params=["mosquitto", "amqtt"])
def secured(
    request: pytest.FixtureRequest, tmp_path: Path, topics: Topics
) -> Iterator[SecuredBroker]:
    runner: SecuredBroker
    if request.param == "mosquitto":
        if find_mosquitto() is None:
            if os.environ.get("EDGEFLEET_REQUIRE_MOSQUITTO") == "1":
                pytest.fail("mosquitto is required")
            pytest.skip("mosquitto not installed")
        store = SqliteStore.open(tmp_path / "hub" / "hub.db")
        runner = SecuredMosquitto(tmp_path / "mosquitto", tmp_path / "hub", store, topics)
        store.close()
    else:
        runner = SecuredEmbedded(topics)
    with runner:
        yield runner


@dataclass
class Devices:
    """Provisioned devices' passwords by id."""

    passwords: dict[str, str]

    def login(self, device_id: str) -> tuple[str, str]:
        return device_id, self.passwords[device_id]


def provision(broker: SecuredBroker, *ids: str) -> Devices:
    passwords = {device_id: new_password() for device_id in ids}
    broker.provision({d: new_verifier(p) for d, p in passwords.items()})
    return Devices(passwords)


@contextlib.contextmanager
def hub_client(broker: SecuredBroker, topics: Topics) -> Iterator[TestClient]:
    """The hub's account, subscribed to everything under the prefix.

    Connects exactly once: a second CONNECT under the same client id takes the first
    session over, and whatever arrived in between would be lost to the test.
    """
    with TestClient(broker, HUB_USERNAME, login=broker.hub_login.pair()) as hub:
        hub.subscribe(f"{topics.base}/#")
        yield hub


def topics_of(messages: list[Received]) -> list[str]:
    return [m.topic for m in messages]


def test_a_device_publishes_only_under_its_own_uplink(
    secured: SecuredBroker, topics: Topics
) -> None:
    devices = provision(secured, "dev-a", "dev-b")
    sentinel = topics.up("dev-a", "telemetry")
    with (
        hub_client(secured, topics) as hub,
        TestClient(secured, "dev-a", login=devices.login("dev-a")) as dev_a,
    ):
        dev_a.publish(topics.up("dev-a", "state"), b"mine")
        dev_a.publish(topics.up("dev-b", "state"), b"spoofed")  # as another device
        dev_a.publish(topics.down("dev-a", "ack"), b"forged ack")  # as the hub
        dev_a.publish(topics.down("dev-b", "desired"), b"forged desired", retain=True)
        dev_a.publish(topics.fleet("release"), b"forged release", retain=True)
        dev_a.publish(sentinel, b"done")

        got = hub.wait_for(lambda m: m.topic == sentinel)

    assert topics_of(got) == [topics.up("dev-a", "state"), sentinel]


def test_a_device_reads_only_its_own_downlink_and_the_fleet(
    secured: SecuredBroker, topics: Topics
) -> None:
    devices = provision(secured, "dev-a", "dev-b")
    with (
        hub_client(secured, topics) as hub,
        TestClient(secured, "dev-a", login=devices.login("dev-a")) as dev_a,
    ):
        dev_a.subscribe(topics.device_down("dev-a"))
        dev_a.subscribe(topics.all_fleet())
        for wider in (topics.device_down("dev-b"), f"{topics.base}/d/+/down/#", f"{topics.base}/#"):
            # Mosquitto grants and then never delivers; the embedded broker refuses
            with contextlib.suppress(AssertionError):
                dev_a.subscribe(wider)
        hub.publish(topics.down("dev-b", "ack"), b"for b")
        hub.publish(topics.up("dev-b", "state"), b"b's uplink")
        hub.publish(topics.down("dev-a", "ack"), b"for a")
        hub.publish(topics.fleet("heartbeat"), b"for all")

        got = dev_a.wait_for(lambda m: m.topic == topics.fleet("heartbeat"))

    assert topics_of(got) == [topics.down("dev-a", "ack"), topics.fleet("heartbeat")]


def test_an_anonymous_client_may_only_say_hello_under_its_own_client_id(
    secured: SecuredBroker, topics: Topics
) -> None:
    enroll = At(secured.host, int(secured.enroll_url.rsplit(":", 1)[1]))
    with hub_client(secured, topics) as hub, TestClient(enroll, "dev-c") as newcomer:
        newcomer.publish(topics.up("dev-c", "state"), b"not yet")
        newcomer.publish(topics.up("dev-d", "hello"), b"someone else's hello")
        newcomer.publish(topics.down("dev-c", "ack"), b"forged")
        newcomer.publish(topics.up("dev-c", "hello"), b"hello")

        got = hub.wait_for(lambda m: m.topic == topics.up("dev-c", "hello"))

    assert topics_of(got) == [topics.up("dev-c", "hello")]


def test_a_login_never_takes_over_another_devices_session(
    secured: SecuredBroker, topics: Topics
) -> None:
    devices = provision(secured, "dev-a", "dev-b")
    with (
        hub_client(secured, topics) as hub,
        TestClient(secured, "dev-b", login=devices.login("dev-b")) as dev_b,
    ):
        dev_b.subscribe(topics.device_down("dev-b"))
        intruder = TestClient(secured, "dev-b", login=devices.login("dev-a"), timeout_s=2.0)
        try:  # Mosquitto renames it to its user name; the embedded broker refuses it
            intruder.connect()
            intruder.close()
        except AssertionError:
            pass
        time.sleep(0.3)
        hub.publish(topics.down("dev-b", "ack"), b"still there")

        [got] = dev_b.wait_for(1)
        assert dev_b.disconnects == 0

    assert got.payload == b"still there"


def test_a_wrong_or_unprovisioned_login_is_refused(secured: SecuredBroker) -> None:
    devices = provision(secured, "dev-a")

    wrong = TestClient(secured, "dev-a", login=("dev-a", "not the password")).connect_refused()
    unknown = TestClient(secured, "dev-z", login=("dev-z", devices.passwords["dev-a"]))

    assert wrong.value in (134, 135)
    assert unknown.connect_refused().value in (134, 135)


def test_a_revoked_device_is_cut_off_and_cannot_log_in_again(
    secured: SecuredBroker, topics: Topics
) -> None:
    devices = provision(secured, "dev-a")
    dev_a = TestClient(secured, "dev-a", login=devices.login("dev-a"))
    dev_a.connect()
    try:
        secured.provision({})  # the hub revoked dev-a: its account is gone

        deadline = time.monotonic() + 10
        while dev_a.disconnects == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert dev_a.disconnects >= 1
    finally:
        dev_a.close()
    again = TestClient(secured, "dev-a", login=devices.login("dev-a")).connect_refused()
    assert again.value in (134, 135)


def test_the_hub_runs_its_embedded_broker_with_access_control_on(
    tmp_path: Path, topics: Topics
) -> None:
    settings = HubSettings(data_dir=tmp_path / "hub", topic_prefix=topics.prefix, http_port=0)
    keyring.init(settings.keys_dir, now_ms=SystemClock().now_ms())
    with HubService.start(settings, embedded_broker=EmbeddedBroker()) as hub:
        broker = hub.embedded_broker
        assert broker is not None
        with TestClient(broker, "dev-x") as anonymous:
            with pytest.raises(AssertionError, match="refused subscription"):
                anonymous.subscribe(topics.all_fleet())
            anonymous.publish(topics.up("dev-x", "state"), b"dropped by the broker")
        guessed = TestClient(broker, "dev-x", login=("dev-x", "a guess")).connect_refused()
        impostor = TestClient(broker, HUB_USERNAME, login=(HUB_USERNAME, "a guess"))

        assert guessed.value in (134, 135)
        assert impostor.connect_refused().value in (134, 135)
        assert hub.store.audit.count(outcome="rejected") == 0  # nothing reached ingest


def test_a_device_never_receives_another_devices_retained_downlink_when_it_connects(
    secured: SecuredBroker, topics: Topics
) -> None:
    devices = provision(secured, "dev-a", "dev-b")
    with (
        hub_client(secured, topics) as hub,
        TestClient(secured, "dev-b", login=devices.login("dev-b")) as dev_b,
    ):
        dev_b.subscribe(topics.device_down("dev-b"))
        hub.publish(topics.down("dev-b", "desired"), b"b's desired", retain=True)
        hub.publish(topics.down("dev-a", "desired"), b"a's desired", retain=True)
        dev_b.wait_for(1)
        with TestClient(secured, "dev-a", login=devices.login("dev-a")) as dev_a:
            dev_a.subscribe(topics.device_down("dev-a"))

            got = dev_a.wait_for(1)
            hub.publish(topics.down("dev-a", "ack"), b"sentinel")
            got += dev_a.wait_for(1)

    assert [(m.topic, m.payload) for m in got] == [
        (topics.down("dev-a", "desired"), b"a's desired"),
        (topics.down("dev-a", "ack"), b"sentinel"),
    ]
