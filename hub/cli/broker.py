"""``edgefleet broker config``: the Mosquitto configuration of a one-site hub, access control on.

A thin shell: it renders :mod:`hub.transport.mosquitto`'s files into ``--out``, keeps the
hub's broker password and the files' whereabouts in the hub's data directory
(:class:`hub.transport.broker_accounts.MosquittoSetup`), issues a private CA and broker
certificate with ``--tls`` (:mod:`hub.transport.tls`), and writes ``passwd`` from the
store: the hub and every active device with a verifier. From then on the running hub keeps
``passwd`` up to date and signals Mosquitto to reload it. Running the command again is
safe: it keeps the hub's password and the certificates, and rewrites the rest.
"""

from __future__ import annotations

import argparse
import os
import pwd
from datetime import UTC, datetime
from pathlib import Path

from hub.cli.common import add_command, data_option, open_store, positive
from hub.transport import tls
from hub.transport.broker_accounts import write_mosquitto
from hub.transport.mosquitto import MosquittoLayout
from protocol.topics import Topics

EPILOG = """\
Devices log in with their device id and a password they make themselves; the hub puts
each admitted device's verifier into passwd and reloads Mosquitto (SIGHUP to the pid in
OUT/mosquitto.pid). See docs/broker-security.md.

examples:
  edgefleet broker config --data hub/ --out /etc/mosquitto/edgefleet
  edgefleet broker config --data hub/ --out broker/ --tls --tls-name broker.example \\
      --no-enroll-listener
"""

CONFIG_EPILOG = """\
Writes OUT/mosquitto.conf, OUT/acl, OUT/enroll.acl, OUT/passwd (and OUT/tls/ with --tls),
and DATA/broker/hub.secret (0600) and DATA/broker/mosquitto.json for the hub. Then:

  mosquitto -c OUT/mosquitto.conf                 (as the user the hub runs as, or root)
  edgefleet hub serve --data DATA --broker mqtt://HOST:PORT

and give agents broker_url = mqtt://HOST:PORT and, while they enroll,
enroll_broker_url = mqtt://HOST:ENROLL_PORT.

example:
  edgefleet broker config --data hub/ --out broker/ --port 1883 --enroll-port 1884
"""


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``broker`` and its subcommands to the root ``edgefleet`` parser."""
    parser = subparsers.add_parser(
        "broker",
        help="configure the MQTT broker: listeners, per-device logins, topic ACLs, TLS",
        description="Configure Mosquitto for the hub, with access control on.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="broker_command", metavar="SUBCOMMAND", required=True)
    config = add_command(
        commands, "broker config", "write Mosquitto's configuration", CONFIG_EPILOG, _config
    )
    data_option(config)
    config.add_argument("--out", type=Path, required=True, help="where Mosquitto's files go")
    config.add_argument("--prefix", default="ef", help="topic prefix (default ef)")
    config.add_argument("--host", default="0.0.0.0", help="address to listen on (0.0.0.0)")  # noqa: S104
    config.add_argument("--port", type=positive, default=1883, help="device listener (1883)")
    config.add_argument(
        "--enroll-port", type=positive, default=1884, help="enrollment listener (1884)"
    )
    config.add_argument(
        "--no-enroll-listener",
        action="store_true",
        help="no anonymous listener: only devices the hub admitted can connect",
    )
    config.add_argument("--tls", action="store_true", help="add a TLS listener (mqtts)")
    config.add_argument("--tls-port", type=positive, default=8883, help="TLS listener (8883)")
    config.add_argument(
        "--tls-name",
        action="append",
        default=[],
        metavar="NAME",
        help="host name or address in the broker certificate (repeat; default localhost)",
    )
    config.add_argument("--user", help="the account Mosquitto runs as (default: yours)")
    config.add_argument("--log", type=Path, metavar="FILE", help="Mosquitto's log file")


def _config(args: argparse.Namespace) -> int:
    out: Path = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    files = None
    if args.tls:
        names = args.tls_name or ["localhost", "127.0.0.1"]
        files = tls.issue(out / "tls", names, now=datetime.now(UTC))
    topics = Topics(args.prefix)
    layout = MosquittoLayout(
        out,
        topics,
        host=args.host,
        port=args.port,
        enroll_port=None if args.no_enroll_listener else args.enroll_port,
        tls_port=args.tls_port if args.tls else None,
        tls=files,
        user=args.user or pwd.getpwuid(os.geteuid()).pw_name,
        log_file=args.log,
    )
    store = open_store(args.data, create=True, database=args.database)
    try:
        setup = write_mosquitto(args.data, layout, store)
        verifiers = len(setup.target.current())
    finally:
        store.close()
    print(f"wrote {layout.conf} ({verifiers - 1} device logins, the hub's, topic ACLs)")
    listeners = [f"devices on {args.host}:{args.port}"]
    if layout.enroll_port is not None:
        listeners.append(f"enrollment on {args.host}:{layout.enroll_port} (hello only)")
    if files is not None:
        listeners.append(f"TLS on {args.host}:{args.tls_port} (CA {files.ca})")
    print("listeners: " + "; ".join(listeners))
    print(f"run: mosquitto -c {layout.conf}")
    return 0
