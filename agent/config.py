"""The agent's configuration: one frozen dataclass, loaded once at the edge.

Sources, later ones winning: the defaults below, a TOML file (``agent.toml``, flat keys
plus a ``[tags]`` table), then environment variables ``EDGEFLEET_AGENT_<KEY>`` (the key
in upper case, e.g. ``EDGEFLEET_AGENT_BROKER_URL``). Environment values are text and are
converted by the field's type:

=================  =========================================================
type               environment form
=================  =========================================================
text               as is; an empty value unsets an optional key
path               a path; relative paths in the TOML file are relative to it
integer, number    ``8470``, ``2.5``
tags               ``region=eu-west,hardware=rpi4`` (keys are lowercase names)
=================  =========================================================

Every value is checked when the :class:`AgentConfig` is built; a bad one raises
:class:`~agent.errors.ConfigError` naming the key, so the CLI can print one line instead
of a traceback. Unknown keys are refused too: a typo must not silently fall back to a
default. The ``enrollment_token`` is a secret: it is excluded from ``repr`` and never
logged.
"""

from __future__ import annotations

import ipaddress
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, get_type_hints

from agent.errors import ConfigError
from edgefleet.brokers import BadBrokerUrl, BrokerUrl
from protocol.errors import Malformed
from protocol.messages import MAX_TAGS
from protocol.replay import WIDTH
from protocol.schema import check_name
from protocol.topics import Topics

ENV_PREFIX = "EDGEFLEET_AGENT_"


@dataclass(frozen=True)
class AgentConfig:
    """Everything the agent daemon needs to start (units in the names).

    Raises:
        ConfigError: on construction, for any value out of range; the message names the key.
    """

    device_id: str
    state_dir: Path
    broker_url: str = "mqtt://127.0.0.1:1883"
    enroll_broker_url: str | None = None  # where to say hello before the hub admits us
    ca_file: Path | None = None  # PEM bundle that signs the broker's certificate (mqtts)
    cert_file: Path | None = None  # client certificate for mutual TLS (mqtts)
    key_file: Path | None = None  # its private key, when not inside cert_file
    root_metadata: Path | None = None  # pinned root v1 document; the trust module verifies it
    enrollment_token: str | None = field(default=None, repr=False)
    tags: dict[str, str] = field(default_factory=dict)
    topic_prefix: str = "ef"
    http_host: str = "127.0.0.1"  # loopback only: the local API has no authentication
    http_port: int = 8470  # 0 disables the local HTTP API
    telemetry_interval_s: float = 30.0
    drain_interval_s: float = 1.0  # how often resend deadlines are checked
    ack_timeout_s: float = 10.0  # first resend after this; doubles up to 8x
    outbox_max_messages: int = 10_000  # soft bound; the hard cap is twice this
    outbox_max_bytes: int = 64 * 1024 * 1024  # soft bound; the hard cap is twice this
    outbox_max_in_flight: int = 1024  # sent but unacknowledged, < replay WIDTH / 2
    reconnect_min_s: float = 0.5  # backoff: full jitter in [0, min(max, min * 2**n)]
    reconnect_max_s: float = 30.0
    keepalive_s: int = 30
    stop_grace_s: float = 3.0  # on SIGTERM, how long to wait for the hub to ack the rest
    retrain_interval_s: float = 60.0  # how often new labelled feedback is trained on
    window_s: float = 60.0  # length of a data window (input and prediction sketches)

    def __post_init__(self) -> None:
        try:
            check_name(self.device_id, "device_id")
        except Malformed as e:
            raise ConfigError(str(e)) from e
        broker = self.broker
        _ = self.enroll_broker
        for key in ("ca_file", "cert_file", "key_file"):
            if getattr(self, key) is not None and not broker.tls:
                raise ConfigError(f"{key} is set but broker_url is not mqtts://")
        if self.key_file is not None and self.cert_file is None:
            raise ConfigError("key_file is set without cert_file")
        if self.enrollment_token is not None and not 0 < len(self.enrollment_token) <= 256:
            raise ConfigError("enrollment_token must be 1 to 256 characters")
        _check_tags(self.tags)
        try:
            Topics(self.topic_prefix)
        except Malformed as e:
            raise ConfigError(f"topic_prefix: {e}") from e
        check_loopback(self.http_host)
        _check_range("http_port", self.http_port, 0, 65535)
        for name in (
            "telemetry_interval_s",
            "drain_interval_s",
            "ack_timeout_s",
            "retrain_interval_s",
            "window_s",
        ):
            _check_range(name, getattr(self, name), 0.01, 86400)
        _check_range("outbox_max_messages", self.outbox_max_messages, 1, 10**8)
        _check_range("outbox_max_bytes", self.outbox_max_bytes, 1024 * 1024, 2**40)
        _check_range("outbox_max_in_flight", self.outbox_max_in_flight, 1, WIDTH // 2 - 1)
        _check_range("reconnect_min_s", self.reconnect_min_s, 0.01, 3600)
        _check_range("reconnect_max_s", self.reconnect_max_s, self.reconnect_min_s, 3600)
        _check_range("keepalive_s", self.keepalive_s, 5, 65535)
        _check_range("stop_grace_s", self.stop_grace_s, 0, 600)

    @property
    def broker(self) -> BrokerUrl:
        """The parsed ``broker_url``.

        Raises:
            ConfigError: it is not ``mqtt://host[:port]`` or ``mqtts://host[:port]``.
        """
        try:
            return BrokerUrl.parse(self.broker_url)
        except BadBrokerUrl as e:
            raise ConfigError(f"broker_url: {e}") from e

    @property
    def enroll_broker(self) -> BrokerUrl | None:
        """The parsed ``enroll_broker_url`` (None: enrollment sessions use ``broker_url``).

        Raises:
            ConfigError: it is not ``mqtt://host[:port]`` or ``mqtts://host[:port]``.
        """
        if self.enroll_broker_url is None:
            return None
        try:
            return BrokerUrl.parse(self.enroll_broker_url)
        except BadBrokerUrl as e:
            raise ConfigError(f"enroll_broker_url: {e}") from e

    @property
    def topics(self) -> Topics:
        return Topics(self.topic_prefix)


def load_config(path: str | Path | None, env: Mapping[str, str] | None = None) -> AgentConfig:
    """Build the config from a TOML file (optional) and ``EDGEFLEET_AGENT_*`` variables.

    ``env`` defaults to ``os.environ``; tests pass a dict.

    Raises:
        ConfigError: the file is missing or not TOML, a key is unknown, a value has the
            wrong type or is out of range, or a required key (device_id, state_dir) is unset.
    """
    hints = _field_types()
    values: dict[str, Any] = {}
    if path is not None:
        values.update(_from_toml(Path(path), hints))
    environ = os.environ if env is None else env
    for name, text in environ.items():
        if not name.startswith(ENV_PREFIX):
            continue
        key = name[len(ENV_PREFIX) :].lower()
        if key not in hints:
            raise ConfigError(f"unknown setting {name}")
        values[key] = _from_text(key, text, hints[key])
    for required in ("device_id", "state_dir"):
        if values.get(required) is None:
            env_name = ENV_PREFIX + required.upper()
            raise ConfigError(f"{required} is required (agent.toml key or {env_name})")
    return AgentConfig(**{k: v for k, v in values.items() if v is not None})


def _field_types() -> dict[str, str]:
    """Each field's type as one of: str, path, int, float, tags (optionality aside)."""
    kinds = {str: "str", Path: "path", int: "int", float: "float", dict[str, str]: "tags"}
    hints = get_type_hints(AgentConfig)
    out = {}
    for f in fields(AgentConfig):
        hint = hints[f.name]
        base = next((t for t in getattr(hint, "__args__", ()) if t is not type(None)), hint)
        out[f.name] = kinds.get(hint) or kinds[base]
    return out


def _from_toml(path: Path, hints: Mapping[str, str]) -> dict[str, Any]:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise ConfigError(f"config file {path} does not exist") from e
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"config file {path} cannot be read: {e}") from e
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file {path} is not valid TOML: {e}") from e
    out: dict[str, Any] = {}
    for key, value in data.items():
        if key not in hints:
            raise ConfigError(f"unknown key {key!r} in {path}")
        out[key] = _from_toml_value(key, value, hints[key], path.parent)
    return out


def _from_toml_value(key: str, value: Any, kind: str, base: Path) -> Any:
    if kind == "tags":
        if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
            raise ConfigError(f"{key} must be a table of text values, e.g. [tags] region = 'eu'")
        return dict(value)
    if kind == "int" and (type(value) is not int):
        raise ConfigError(f"{key} must be an integer, not {value!r}")
    if kind == "float" and (type(value) not in (int, float)):
        raise ConfigError(f"{key} must be a number, not {value!r}")
    if kind in ("str", "path") and not isinstance(value, str):
        raise ConfigError(f"{key} must be text, not {value!r}")
    if kind == "path":
        return base / Path(value).expanduser()
    return float(value) if kind == "float" else value


def _from_text(key: str, text: str, kind: str) -> Any:
    if text == "":
        return None
    try:
        if kind == "int":
            return int(text)
        if kind == "float":
            return float(text)
    except ValueError as e:
        what = "an integer" if kind == "int" else "a number"
        raise ConfigError(f"{ENV_PREFIX}{key.upper()} must be {what}, not {text!r}") from e
    if kind == "path":
        return Path(text).expanduser()
    if kind == "tags":
        tags = {}
        for item in text.split(","):
            name, sep, value = item.partition("=")
            if not sep:
                raise ConfigError(f"{ENV_PREFIX}TAGS item {item!r} is not key=value")
            tags[name.strip()] = value.strip()
        return tags
    return text


def _check_tags(tags: Mapping[str, str]) -> None:
    if len(tags) > MAX_TAGS:
        raise ConfigError(f"tags: more than {MAX_TAGS}")
    for key, value in tags.items():
        try:
            check_name(key, "tag key")
        except Malformed as e:
            raise ConfigError(f"tags: {e}") from e
        if not isinstance(value, str) or len(value) > 128:
            raise ConfigError(f"tags: value of {key!r} must be text of at most 128 characters")


def check_loopback(host: str) -> None:
    """Refuse a host that is not a loopback address or ``localhost``.

    Raises:
        ConfigError: naming http_host.
    """
    if host == "localhost":
        return
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ConfigError(
            f"http_host {host!r} is not a loopback address: the local API has no "
            "authentication, so it only listens on 127.0.0.1, ::1 or localhost"
        )


def _check_range(key: str, value: float, low: float, high: float) -> None:
    if isinstance(value, bool) or not low <= value <= high:
        raise ConfigError(f"{key} = {value!r} is outside [{low}, {high}]")


EXAMPLE_TOML = """\
# edgefleet agent configuration. Every key can also be set with an environment variable
# EDGEFLEET_AGENT_<KEY> (e.g. EDGEFLEET_AGENT_BROKER_URL), which wins over this file.
# Relative paths are relative to this file.

device_id = "sensor-0001"              # [a-z0-9][a-z0-9._-]{0,63}; also the MQTT topic level
state_dir = "state"                    # device key (0600), outbox, model slots

broker_url = "mqtt://127.0.0.1:1883"   # or mqtts://broker.example:8883
# enroll_broker_url = "mqtt://127.0.0.1:1884"  # Mosquitto's enrollment listener, if separate
                                       # (the login is the device id and state/broker.json)
# ca_file = "ca.pem"                   # mqtts: CA bundle for the broker's certificate
# cert_file = "device.crt"             # mqtts: client certificate (mutual TLS)
# key_file = "device.key.pem"          # mqtts: its key, if not inside cert_file

# root_metadata = "root.json"          # pinned root v1 of the fleet's trust chain
# enrollment_token = "..."             # secret: lets the hub pin this device's key
topic_prefix = "ef"

http_host = "127.0.0.1"                # loopback only: POST /predict, POST /feedback, GET /status
http_port = 8470                       # 0 disables the local API

telemetry_interval_s = 30.0
ack_timeout_s = 10.0                   # resend unacknowledged frames after this (doubling, 8x cap)
outbox_max_messages = 10000            # soft bound: then telemetry, then data windows are dropped
outbox_max_bytes = 67108864            # 64 MiB soft bound; hard caps are twice both bounds
reconnect_min_s = 0.5                  # reconnect backoff with full jitter
reconnect_max_s = 30.0
stop_grace_s = 3.0                     # on SIGTERM, wait this long for the hub's last acks

retrain_interval_s = 60.0              # retrain the model's head on new labelled feedback
window_s = 60.0                        # send input/prediction sketches once per window

[tags]                                 # cohort labels the hub can target and slice by
region = "eu-west"
hardware = "rpi4"
"""
