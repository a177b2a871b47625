"""Broker URLs: plain MQTT off this machine is called out, once (threat-model M8)."""

from __future__ import annotations

import logging
import queue

import pytest

from agent.link import Link, LinkSettings
from edgefleet.brokers import BrokerUrl, warn_if_exposed
from hub.transport.mqtt import HubLink

EXPOSED = "over plain mqtt://"


@pytest.mark.parametrize(
    ("url", "exposed"),
    [
        ("mqtt://broker.example:1883", True),
        ("mqtt://192.0.2.10", True),
        ("mqtt://[2001:db8::1]", True),
        ("mqtts://broker.example", False),
        ("mqtt://127.0.0.1:1883", False),
        ("mqtt://127.8.9.10", False),
        ("mqtt://localhost", False),
        ("mqtt://[::1]:1883", False),
    ],
)
def test_plain_mqtt_is_exposed_only_off_this_machine(url: str, exposed: bool) -> None:
    assert BrokerUrl.parse(url).exposed is exposed


@pytest.fixture(autouse=True)
def _forget_warnings() -> None:
    warn_if_exposed.cache_clear()


def test_an_agent_logging_in_over_plain_mqtt_to_another_host_warns_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = LinkSettings(
        broker=BrokerUrl.parse("mqtt://192.0.2.10"), client_id="dev-1", username="dev-1",
        password="s3cret-password",
    )  # fmt: skip
    with caplog.at_level(logging.WARNING):
        Link(settings)
        Link(settings)  # a second session (or a simulated fleet): no second line
    lines = [r.getMessage() for r in caplog.records if EXPOSED in r.getMessage()]
    assert lines == [
        "this agent logs in to mqtt://192.0.2.10:1883 over plain mqtt://: its broker password "
        "crosses the network in clear; use mqtts:// where the network is not yours "
        "(docs/broker-security.md)"
    ]
    assert "s3cret-password" not in caplog.text


@pytest.mark.parametrize("url", ["mqtts://192.0.2.10", "mqtt://127.0.0.1"])
def test_an_agent_over_tls_or_loopback_does_not_warn(
    caplog: pytest.LogCaptureFixture, url: str
) -> None:
    settings = LinkSettings(
        broker=BrokerUrl.parse(url), client_id="dev-1", username="dev-1", password="pw"
    )
    with caplog.at_level(logging.WARNING):
        Link(settings)
    assert EXPOSED not in caplog.text


def test_the_hub_logging_in_over_plain_mqtt_to_another_host_warns(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING):
        HubLink("mqtt://192.0.2.10", client_id="hub", inbox=queue.Queue(), login=("hub", "pw"))
        HubLink("mqtt://192.0.2.11", client_id="hub-2", inbox=queue.Queue())  # no password
    lines = [r.getMessage() for r in caplog.records if EXPOSED in r.getMessage()]
    assert len(lines) == 1
    assert lines[0].startswith("the hub logs in to mqtt://192.0.2.10:1883")
