"""Agent configuration: TOML, EDGEFLEET_AGENT_* overrides, and one clear error per bad value."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.config import EXAMPLE_TOML, AgentConfig, load_config
from agent.errors import ConfigError
from edgefleet.brokers import BrokerUrl

BASE = {"EDGEFLEET_AGENT_DEVICE_ID": "dev-1", "EDGEFLEET_AGENT_STATE_DIR": "/var/lib/ef"}


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(text)
    return path


def test_config_example_file_loads_with_paths_relative_to_it(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, EXAMPLE_TOML), env={})
    assert config.device_id == "sensor-0001"
    assert config.state_dir == tmp_path / "state"
    assert config.tags == {"region": "eu-west", "hardware": "rpi4"}
    assert config.broker == BrokerUrl("127.0.0.1", 1883, tls=False)


def test_config_environment_overrides_the_file(tmp_path: Path) -> None:
    env = {
        "EDGEFLEET_AGENT_BROKER_URL": "mqtts://broker.example",
        "EDGEFLEET_AGENT_HTTP_PORT": "0",
        "EDGEFLEET_AGENT_ACK_TIMEOUT_S": "2.5",
        "EDGEFLEET_AGENT_TAGS": "region=us-east, hardware=jetson",
        "EDGEFLEET_AGENT_CA_FILE": "/etc/ef/ca.pem",
        "OTHER_VARIABLE": "ignored",
    }
    config = load_config(write(tmp_path, EXAMPLE_TOML), env=env)
    assert config.broker == BrokerUrl("broker.example", 8883, tls=True)
    assert (config.http_port, config.ack_timeout_s) == (0, 2.5)
    assert config.tags == {"region": "us-east", "hardware": "jetson"}
    assert config.ca_file == Path("/etc/ef/ca.pem")


def test_config_from_the_environment_alone() -> None:
    config = load_config(None, env=BASE)
    assert (config.device_id, config.state_dir) == ("dev-1", Path("/var/lib/ef"))


def test_config_empty_variable_unsets_an_optional_key(tmp_path: Path) -> None:
    path = write(tmp_path, 'device_id = "d"\nstate_dir = "s"\nenrollment_token = "tok"\n')
    assert load_config(path, env={"EDGEFLEET_AGENT_ENROLLMENT_TOKEN": ""}).enrollment_token is None


def test_config_never_shows_the_enrollment_token(tmp_path: Path) -> None:
    config = load_config(None, env={**BASE, "EDGEFLEET_AGENT_ENROLLMENT_TOKEN": "s3cret"})
    assert config.enrollment_token == "s3cret"
    assert "s3cret" not in repr(config)


BAD_ENV = [
    pytest.param({"EDGEFLEET_AGENT_HTTP_PORT": "eighty"}, "HTTP_PORT", id="int-text"),
    pytest.param({"EDGEFLEET_AGENT_HTTP_PORT": "70000"}, "http_port", id="port-range"),
    pytest.param({"EDGEFLEET_AGENT_ACK_TIMEOUT_S": "soon"}, "ACK_TIMEOUT_S", id="float-text"),
    pytest.param({"EDGEFLEET_AGENT_ACK_TIMEOUT_S": "0"}, "ack_timeout_s", id="zero-timeout"),
    pytest.param({"EDGEFLEET_AGENT_BROKR_URL": "x"}, "BROKR_URL", id="unknown-variable"),
    pytest.param({"EDGEFLEET_AGENT_HTTP_HOST": "0.0.0.0"}, "http_host", id="public-http"),
    pytest.param({"EDGEFLEET_AGENT_HTTP_HOST": "device.lan"}, "http_host", id="hostname-http"),
    pytest.param({"EDGEFLEET_AGENT_BROKER_URL": "http://b:1883"}, "broker_url", id="scheme"),
    pytest.param({"EDGEFLEET_AGENT_BROKER_URL": "mqtt://:1883"}, "broker_url", id="no-host"),
    pytest.param({"EDGEFLEET_AGENT_BROKER_URL": "mqtt://b:99999"}, "broker_url", id="bad-port"),
    pytest.param({"EDGEFLEET_AGENT_BROKER_URL": "mqtt://b/x"}, "broker_url", id="path"),
    pytest.param({"EDGEFLEET_AGENT_DEVICE_ID": "Dev/1"}, "device_id", id="device-id"),
    pytest.param({"EDGEFLEET_AGENT_OUTBOX_MAX_IN_FLIGHT": "2048"}, "max_in_flight", id="window"),
    pytest.param({"EDGEFLEET_AGENT_CA_FILE": "/ca.pem"}, "ca_file", id="tls-file-plain-mqtt"),
    pytest.param(
        {"EDGEFLEET_AGENT_BROKER_URL": "mqtts://b", "EDGEFLEET_AGENT_KEY_FILE": "/k.pem"},
        "key_file", id="key-without-cert",
    ),
    pytest.param({"EDGEFLEET_AGENT_TAGS": "Region=eu"}, "tag key", id="tag-key"),
    pytest.param({"EDGEFLEET_AGENT_TAGS": "region"}, "TAGS", id="tag-item"),
    pytest.param({"EDGEFLEET_AGENT_RECONNECT_MIN_S": "60"}, "reconnect_max_s", id="backoff-order"),
    pytest.param({"EDGEFLEET_AGENT_TOPIC_PREFIX": "ef/#"}, "topic_prefix", id="prefix-wildcard"),
    pytest.param({"EDGEFLEET_AGENT_DEVICE_ID": ""}, "device_id is required", id="no-device"),
]  # fmt: skip


@pytest.mark.parametrize(("env", "named"), BAD_ENV)
def test_config_refuses_bad_environment_values_naming_the_key(env: dict, named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        load_config(None, env={**BASE, **env})


BAD_FILES = [
    pytest.param('device_id = "d"\nstate_dir = "s"\nhttp_prot = 80\n', "http_prot", id="typo"),
    pytest.param('device_id = "d"\nstate_dir = "s"\nhttp_port = "80"\n', "http_port", id="type"),
    pytest.param('device_id = "d"\nstate_dir = "s"\nhttp_port = true\n', "http_port", id="bool"),
    pytest.param('device_id = "d"\nstate_dir = 3\n', "state_dir", id="path-type"),
    pytest.param('device_id = "d"\nstate_dir = "s"\ntags = "a=b"\n', "tags", id="tags-type"),
    pytest.param('device_id = "d"\nstate_dir = ', "not valid TOML", id="syntax"),
    pytest.param('state_dir = "s"\n', "device_id is required", id="missing-device"),
]  # fmt: skip


@pytest.mark.parametrize(("text", "named"), BAD_FILES)
def test_config_refuses_bad_files_naming_the_key(tmp_path: Path, text: str, named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        load_config(write(tmp_path, text), env={})


def test_config_refuses_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.toml", env={})


def test_config_validates_when_built_directly() -> None:
    with pytest.raises(ConfigError, match="http_host"):
        AgentConfig(device_id="d", state_dir=Path("s"), http_host="10.0.0.1")
