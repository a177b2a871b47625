"""``edgefleet hub serve``: the whole hub in one process until SIGTERM or SIGINT.

A thin shell over :class:`hub.service.HubService`: settings come from flags, then
``EDGEFLEET_HUB_*`` environment variables, then :class:`hub.settings.HubSettings`'
defaults (one table, :data:`OPTIONS`, drives the flags, the variables and the help).
Errors are one line on stderr, never a traceback: exit status 2 for settings to fix
(missing keys, a bad URL or value), 1 when the broker or the HTTP address is not
available or another hub runs on the data directory (the line names the directory and
that hub's pid); 0 after a clean shutdown on SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from hub.cli.common import Subcommands
from hub.errors import InvalidRequest
from hub.settings import HubSettings
from hub.store.dialects import POSTGRES_SCHEMES, SQLITE_SCHEME, describe
from hub.store.interface import StoreUnreachable
from hub.transport.mqtt import TlsFiles
from protocol.errors import EdgefleetError

ENV_PREFIX = "EDGEFLEET_HUB_"
DATABASE_SCHEMES = (*POSTGRES_SCHEMES, SQLITE_SCHEME)
EMBEDDED_PORT = 1883
_TRUE, _FALSE = {"1", "true", "yes", "on"}, {"0", "false", "no", "off", ""}


def _unavailable() -> tuple[type[Exception], ...]:
    """What exits 1, not 2: something the hub needs is not there (imported late, with the
    service, so ``edgefleet`` commands that never serve start without it)."""
    from hub.service import BrokerUnreachable, DataDirInUse
    from hub.transport.broker import BrokerError
    from hub.transport.http_server import HttpUnavailable

    return (BrokerUnreachable, HttpUnavailable, BrokerError, DataDirInUse, StoreUnreachable)


# Parsers for flags and variables alike; argparse shows an ArgumentTypeError's message.


def _port(text: str) -> int:
    value = _whole(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}")
    return value


def _whole(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative: {text!r}")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds: {text!r}")
    return value


def _group(text: str) -> str:
    if not text or any(c in text for c in "/+#$") or not text.isprintable():
        raise argparse.ArgumentTypeError(f"not a shared-subscription group name: {text!r}")
    return text


def _database(text: str) -> str:
    if not text.startswith(DATABASE_SCHEMES):
        raise argparse.ArgumentTypeError(
            f"not a database URL: {describe(text)[:80]!r} (postgresql://USER:PASSWORD@HOST/DB)"
        )
    return text


def _flag(text: str) -> bool:
    if text.strip().lower() in _TRUE | _FALSE:
        return text.strip().lower() in _TRUE
    raise argparse.ArgumentTypeError(f"not a yes/no value: {text!r}")


@dataclass(frozen=True)
class Option:
    """One setting: its flag, its ``EDGEFLEET_HUB_<env>`` variable and how to parse it."""

    flag: str
    env: str
    parse: Callable[[str], Any]
    metavar: str
    help: str

    @property
    def dest(self) -> str:
        return self.flag.removeprefix("--").replace("-", "_")

    @property
    def variable(self) -> str:
        return ENV_PREFIX + self.env


OPTIONS: tuple[Option, ...] = (
    Option("--data", "DATA", Path, "DIR", "hub data directory: hub.db, keys/, artifacts/"),
    Option(
        "--database",
        "DATABASE",
        _database,
        "URL",
        "the store: postgresql://USER:PASSWORD@HOST:PORT/DB (default: SQLite, DIR/hub.db)",
    ),
    Option("--broker", "BROKER_URL", str, "URL", "mqtt://HOST:PORT or mqtts://HOST:PORT"),
    Option("--broker-port", "BROKER_PORT", _port, "PORT", "embedded broker port (1883)"),
    Option("--host", "HOST", str, "ADDR", "REST API address (127.0.0.1)"),
    Option("--port", "PORT", _port, "PORT", "REST API port (8080; 0 picks a free one)"),
    Option("--topic-prefix", "TOPIC_PREFIX", str, "P", "MQTT topic prefix (ef)"),
    Option(
        "--client-id",
        "CLIENT_ID",
        str,
        "ID",
        "the hub's MQTT client id (default: ef-hub-<data directory hash>-<pid>)",
    ),
    Option("--tls-ca", "TLS_CA", Path, "FILE", "mqtts: CA bundle (default: system trust)"),
    Option("--tls-cert", "TLS_CERT", Path, "FILE", "mqtts: client certificate"),
    Option("--tls-key", "TLS_KEY", Path, "FILE", "mqtts: client certificate's key"),
    Option(
        "--max-pending-devices",
        "MAX_PENDING_DEVICES",
        _whole,
        "N",
        "unapproved devices kept before tokenless hellos are refused (1000)",
    ),
    Option("--reconcile-interval", "RECONCILE_INTERVAL_S", _seconds, "S", "seconds (15)"),
    Option("--heartbeat-interval", "HEARTBEAT_INTERVAL_S", _seconds, "S", "seconds (60)"),
    Option("--offline-after", "OFFLINE_AFTER_S", _seconds, "S", "silent seconds (120)"),
    Option("--rollout-tick", "ROLLOUT_TICK_S", _seconds, "S", "seconds between rollout plans (5)"),
    Option("--keys", "KEYS", Path, "DIR", "the key ring, shared by replicas (default: DIR/keys)"),
    Option("--artifacts", "ARTIFACTS", Path, "DIR", "model files, shared (default: DIR/artifacts)"),
    Option(
        "--replica-group",
        "REPLICA_GROUP",
        _group,
        "NAME",
        "run as one of several replicas: the uplink via $share/NAME/, one leader",
    ),
    Option("--replica-id", "REPLICA_ID", str, "ID", "this replica in the lease (HOST:DIR)"),
    Option("--lease-ttl", "LEASE_TTL_S", _seconds, "S", "a silent leader is replaced after (8)"),
)
EMBEDDED = Option(
    "--embedded-broker",
    "EMBEDDED_BROKER",
    _flag,
    "",
    "run the pure-Python broker in this process (the one-machine tier)",
)
_FIELDS = {
    "data": "data_dir",
    "database": "database",
    "broker": "broker_url",
    "host": "http_host",
    "port": "http_port",
    "topic_prefix": "topic_prefix",
    "client_id": "client_id",
    "max_pending_devices": "max_pending_devices",
    "reconcile_interval": "reconcile_interval_s",
    "heartbeat_interval": "heartbeat_interval_s",
    "offline_after": "offline_after_s",
    "rollout_tick": "rollout_tick_s",
    "keys": "shared_keys_dir",
    "artifacts": "shared_artifacts_dir",
    "replica_group": "replica_group",
    "replica_id": "replica_id",
    "lease_ttl": "lease_ttl_s",
}

EPILOG = (
    """\
Runs the REST API (uvicorn), MQTT ingest and delivery, the reconciler and the heartbeat
in one process until SIGTERM or SIGINT. Each flag can also be set by an environment
variable (the flag wins):

"""
    + "".join(f"  {o.flag:<22} {o.variable}\n" for o in (*OPTIONS, EMBEDDED))
    + """
The store is SQLite in DIR/hub.db unless --database names a PostgreSQL database (its
schema is migrated at start; docs/operations.md, "The store on PostgreSQL"). The key ring
must exist first: `edgefleet keys init --dir DIR/keys`. One hub per data
directory: a second one exits at once. Keys rotated with `edgefleet keys rotate` take
effect within seconds, without a restart. Exit status: 0 after SIGTERM or SIGINT, 1 if
the broker or HTTP address is unavailable or another hub runs on DIR, 2 for settings to
fix (missing keys, a bad value).

examples:
  edgefleet hub serve --data hub/ --embedded-broker
  edgefleet hub serve --data hub/ --broker mqtt://broker.local:1883 --host 0.0.0.0
  EDGEFLEET_HUB_DATA=/var/lib/edgefleet EDGEFLEET_HUB_PORT=9000 edgefleet hub serve
  edgefleet hub serve --data hub/ --database postgresql://hub:PASSWORD@db.local:5432/hub

replicas (docs/scale-out.md): each its own --data; one --database, --keys, --artifacts
(on one machine, replicas may share a SQLite file: --database sqlite:///shared/hub.db)
  edgefleet hub serve --data r1/ --broker mqtt://mq:1883 --replica-group hubs --database
    postgresql://hub@db/edgefleet --keys /shared/keys --artifacts /shared/artifacts
"""
)


@dataclass(frozen=True)
class ServeConfig:
    """What ``hub serve`` runs: the settings, and the embedded broker's port if it runs one."""

    settings: HubSettings
    embedded_port: int | None
    tls: TlsFiles | None


def add_serve_command(hub_commands: Subcommands) -> None:
    """Add ``serve`` to the ``hub`` command group (:func:`hub.cli.token.register`)."""
    parser = hub_commands.add_parser(
        "serve",
        help="run the hub: REST API, MQTT ingest and the scheduler",
        description="Run the hub: REST API, MQTT ingest and delivery, reconciler, heartbeat.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    for option in OPTIONS:
        parser.add_argument(
            option.flag, type=option.parse, metavar=option.metavar, help=option.help
        )
    parser.add_argument(EMBEDDED.flag, action="store_true", default=None, help=EMBEDDED.help)
    parser.set_defaults(handler=serve)


def resolve(args: argparse.Namespace, environ: Mapping[str, str]) -> ServeConfig:
    """Flags, then ``EDGEFLEET_HUB_*`` variables, then the defaults.

    Raises:
        InvalidRequest: no data directory, a variable that does not parse, both
            ``--broker`` and ``--embedded-broker``, or ``--broker-port`` without the latter.
    """
    values = {o.dest: _value(o, args, environ) for o in (*OPTIONS, EMBEDDED)}
    if values["data"] is None:
        raise InvalidRequest(f"--data DIR (or {ENV_PREFIX}DATA) is required")
    if args.broker is not None and args.embedded_broker:
        raise InvalidRequest("--broker and --embedded-broker exclude each other")
    embedded = bool(values["embedded_broker"]) and args.broker is None
    if args.broker_port is not None and not embedded:
        raise InvalidRequest("--broker-port is the embedded broker's: add --embedded-broker")
    if embedded and values["replica_group"]:
        from hub.service import EMBEDDED_REPLICAS

        raise InvalidRequest(EMBEDDED_REPLICAS)
    renew_s = HubSettings.lease_renew_s
    if values["lease_ttl"] is not None and values["lease_ttl"] < 3 * renew_s:
        raise InvalidRequest(f"--lease-ttl must be at least {3 * renew_s:g} s (3 renewals)")
    fields = {_FIELDS[k]: v for k, v in values.items() if k in _FIELDS and v is not None}
    if embedded:
        fields.pop("broker_url", None)
    port = EMBEDDED_PORT if values["broker_port"] is None else values["broker_port"]
    tls_files = (values["tls_ca"], values["tls_cert"], values["tls_key"])
    return ServeConfig(
        settings=HubSettings(**fields),
        embedded_port=port if embedded else None,
        tls=TlsFiles(*tls_files) if any(tls_files) else None,
    )


def _value(option: Option, args: argparse.Namespace, environ: Mapping[str, str]) -> Any:
    given = getattr(args, option.dest)
    if given is not None:
        return given
    text = environ.get(option.variable)
    if text is None:
        return None
    try:
        return option.parse(text)
    except argparse.ArgumentTypeError as e:
        raise InvalidRequest(f"{option.variable}: {e}") from None


def serve(args: argparse.Namespace) -> int:
    """Run the hub until SIGTERM or SIGINT; the exit status (see the module docstring)."""
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    from hub.service import HubService  # the whole hub: only when it is served
    from hub.transport.broker import EmbeddedBroker

    try:
        _configure_logging(getattr(args, "log_level", "INFO"))
        config = resolve(args, os.environ)
        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        broker = None
        if config.embedded_port is not None:
            broker = EmbeddedBroker(port=config.embedded_port)
        service = HubService.start(config.settings, tls=config.tls, embedded_broker=broker)
    except (EdgefleetError, OSError, ValueError) as e:
        print(f"edgefleet hub serve: error: {e}", file=sys.stderr)
        return 1 if isinstance(e, _unavailable()) else 2
    stop.wait()
    service.stop()
    return 0


def _configure_logging(level: str) -> None:
    """Log to stderr at ``level``; the chatty libraries only from WARNING.

    Raises:
        ValueError: ``level`` is not a logging level name.
    """
    logging.basicConfig(
        level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    for name in ("apscheduler", "uvicorn"):  # a line per job run; a line per startup step
        logging.getLogger(name).setLevel(logging.WARNING)
