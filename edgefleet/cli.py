"""The one ``edgefleet`` command, assembled above everything else.

``agent`` and ``hub`` never import each other, so neither can own the root command; this
module, the only one allowed to import both (and ``simulator``), gathers the
subcommands each contributes through a ``register(subparsers)`` function. The rest of
the ``edgefleet`` package sits *below* agent/ and hub/ and imports neither
(tests/test_layout.py).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from agent import cli as agent_cli
from hub.cli import broker as cli_broker
from hub.cli import drift as cli_drift
from hub.cli import fleet as cli_fleet
from hub.cli import inspect
from hub.cli import keys as cli_keys
from hub.cli import model as cli_model
from hub.cli import rounds as cli_rounds
from hub.cli import serve as cli_serve
from hub.cli import token as cli_token

EPILOG = """\
examples:
  edgefleet demo                                  the whole loop on one machine
  edgefleet keys init --dir keys/                 root, release, rollout and heartbeat keys
  edgefleet hub serve --data hub/ --embedded-broker
  edgefleet hub token create --data hub/ --role admin    the first token, on the hub
  edgefleet model list --hub http://hub:8080 --token T   any command, from anywhere
  edgefleet agent run --config agent.toml
  edgefleet inspect frame.bin --hub-data hub/     decode and verify a captured frame
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edgefleet",
        description="Run, retrain and roll out ONNX models on a fleet of edge devices.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING (default INFO)")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    agent_cli.register(subparsers)
    hub_commands = cli_token.register(subparsers)
    cli_serve.add_serve_command(hub_commands)
    cli_fleet.add_fleet_commands(hub_commands)
    cli_model.register(subparsers)
    cli_rounds.register(subparsers)
    cli_keys.register(subparsers)
    cli_broker.register(subparsers)
    inspect.register(subparsers)
    cli_drift.register(subparsers)
    _add_sim(subparsers)
    _add_demo(subparsers)
    return parser


DEMO_EPILOG = """\
examples:
  edgefleet demo                         50 agents, temporary directory, about 2 minutes
  edgefleet demo --devices 10 --json-out report.json
                                         a smaller fleet; the run's numbers as JSON
  edgefleet demo --keep demo-run/        keep the hub's data and the agents' state, and
                                         print how to serve and explore them afterwards

The story: v1 serves; sensors of the region=eu cohort drift; the hub's drift job alerts
on those features and that cohort; the alert opens a federated round; agents retrain on
late labels and send deltas; candidate v2 passes validation and is released; v2 rolls
out 10% -> 50% -> 100% through its gates; accuracy on labelled feedback recovers.
Time scales are shrunk (4 s drift buckets, 2 s stage bakes) so it fits in minutes.
"""

SIM_EPILOG = """\
example:
  edgefleet hub enroll create --data hub/ --kind fleet --expires-in 3600   # prints SECRET
  edgefleet sim --devices 5 --broker mqtt://127.0.0.1:1883 \\
      --root-metadata hub/keys/root/1.root.json --enrollment-token SECRET --state sim/

  edgefleet sim --scenario full-loop --with-hub --devices 10 --json-out report.json
  edgefleet sim --scenario flaky-network --with-hub --plot charts/ --json-out report.json
  edgefleet sim --scenario steady --devices 1000 --duration 120 --hub http://127.0.0.1:8080 \
      --token ADMIN --broker mqtt://127.0.0.1:1883 --root-metadata hub/keys/root/1.root.json
  edgefleet sim --devices 1000 --no-http --duration 120 --json-out sim.json ...

Each device prints its local API (POST /predict, POST /feedback, GET /status) and runs
until Ctrl-C, SIGTERM or --duration; then a JSON report: devices connected and enrolled,
messages (sent, acknowledged, pending, dropped; downlink by outcome) and resources (CPU
seconds, share of a core and MB of memory per device, over the whole process). All
devices share one MQTT loop thread, one job pool and one onnxruntime session per model;
they start at most 50 a second, never more than 100 waiting for the hub's hello ack.
With --scenario, the scenario (a built-in name or a TOML file, see docs/simulator.md)
runs end to end and prints its report: against a hub in this process (--with-hub, over an
embedded broker, or --broker URL's), or a hub elsewhere (--hub URL --token T --broker URL
--root-metadata FILE; a fresh hub: the scenario registers model "sensors" v1). While it
runs, a live table (devices online, versions, messages, rollout, drift alerts, round)
shows when stdout is a terminal (--quiet: not); --plot DIR writes PNG charts (matplotlib:
pip install 'edgefleet[plot]'). --duration S sets the scenario's duration_s, --seed S its
data seed.
Device ids are PREFIX-0, PREFIX-1, ...; state survives restarts.
Devices log in to the broker as themselves (a password each makes, in its state); against
Mosquitto set up by `edgefleet broker config`, add --enroll-broker mqtt://HOST:1884.
"""


def _add_demo(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="the whole loop on one machine: drift, a federated round, a staged rollout",
        description="Run a hub and real agents in one process and walk the whole loop.",
        epilog=DEMO_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--devices", type=int, help="agents to run (default: the scenario's, 50 for full-loop)"
    )
    parser.add_argument(
        "--scenario",
        default="full-loop",
        metavar="NAME|FILE.toml",
        help="what to run (default full-loop; docs/simulator.md describes the TOML schema)",
    )
    parser.add_argument(
        "--keep", type=Path, metavar="DIR", help="work in DIR and keep it (default: a temp dir)"
    )
    parser.add_argument(
        "--json-out", type=Path, metavar="FILE", help="write the run's report (JSON) to FILE"
    )
    parser.set_defaults(handler=_run_demo)


def _add_sim(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "sim",
        help="run a few complete simulated devices in one process against a hub",
        description="Run N simulated devices (real agents) in one process until Ctrl-C.",
        epilog=SIM_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--devices", type=int,
        help="how many, 1 to 5000 (default 3; with --scenario, the scenario's)",
    )  # fmt: skip
    parser.add_argument(
        "--broker", metavar="URL", help="the hub's broker (default mqtt://127.0.0.1:1883)"
    )
    parser.add_argument(
        "--embedded-broker",
        action="store_true",
        help="with --scenario --with-hub: the hub runs an embedded broker (the default)",
    )
    parser.add_argument("--hub", metavar="URL", help="with --scenario: a hub elsewhere")
    parser.add_argument("--token", help="with --hub: an admin token of that hub")
    parser.add_argument("--seed", type=int, metavar="S", help="with --scenario: the data seed")
    parser.add_argument(
        "--quiet", action="store_true", help="with --scenario: no live table while it runs"
    )
    parser.add_argument(
        "--plot", type=Path, metavar="DIR", help="with --scenario: PNG charts of the run in DIR"
    )
    parser.add_argument(
        "--enroll-broker",
        metavar="URL",
        help="Mosquitto's enrollment listener (edgefleet broker config), if separate",
    )
    parser.add_argument(
        "--root-metadata", type=Path, metavar="FILE", help="root v1 to pin (required)"
    )
    parser.add_argument("--enrollment-token", help="a token from the hub (or approve them)")
    parser.add_argument("--state", type=Path, default=Path("sim"), help="state root (sim/)")
    parser.add_argument("--prefix", default="sim", help="device id prefix (default sim)")
    parser.add_argument(
        "--scenario",
        metavar="NAME|FILE.toml",
        help="run a scenario end to end with its report (--with-hub or --hub; docs/simulator.md)",
    )
    parser.add_argument(
        "--with-hub",
        action="store_true",
        help="with --scenario: run a hub and an embedded broker in this process",
    )
    parser.add_argument(
        "--keep", type=Path, metavar="DIR", help="with --scenario: work in DIR and keep it"
    )
    parser.add_argument(
        "--duration",
        type=float,
        metavar="S",
        help="stop after S seconds of steady running and print the report (default: Ctrl-C)",
    )
    parser.add_argument(
        "--http",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="each device serves its local HTTP API on a free port (a thread each; "
        "--no-http for large fleets)",
    )
    parser.add_argument(
        "--json-out", type=Path, metavar="FILE", help="also write the report to FILE as JSON"
    )
    parser.set_defaults(handler=_run_sim)


def _run_demo(args: argparse.Namespace) -> int:
    from simulator import demo  # agents and hub in one process: imported only to run

    return demo.main(args)


def _run_sim(args: argparse.Namespace) -> int:
    if args.scenario is not None:
        return _run_scenario(args)
    args.broker = args.broker or "mqtt://127.0.0.1:1883"
    if args.root_metadata is None:
        print("edgefleet sim: --root-metadata FILE is required (or --scenario)", file=sys.stderr)
        return 2
    if args.devices is None:
        args.devices = 3
    from simulator import fleet

    return fleet.main(args)


def _run_scenario(args: argparse.Namespace) -> int:
    problem = None
    if args.with_hub == (args.hub is not None):
        problem = "--scenario needs a hub: --with-hub (in this process) or --hub URL"
    elif args.hub is not None and not (args.token and args.broker and args.root_metadata):
        problem = "--hub needs --token, --broker and --root-metadata too"
    elif args.embedded_broker and (args.broker or args.hub):
        problem = "--embedded-broker is for --with-hub without --broker"
    if problem is not None:
        print(f"edgefleet sim: {problem}", file=sys.stderr)
        return 2
    from simulator import demo  # the hub and the agents: imported only to run

    where = demo.Where(args.hub, args.token, args.broker, args.root_metadata)
    options = demo.Options(
        devices=args.devices, duration_s=args.duration, seed=args.seed,
        live=sys.stdout.isatty() and not args.quiet, plot=args.plot,
    )  # fmt: skip
    return demo.run(
        "sim", args.scenario, devices=args.devices, json_out=args.json_out, keep=args.keep,
        where=where, options=options,
    )  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)  # --help prints here
        handler = getattr(args, "handler", None)
        if handler is None:
            parser.print_help()
            return 2
        result: int = handler(args)
        sys.stdout.flush()  # a closed pipe shows here, not at interpreter exit
    except BrokenPipeError:
        return _reader_gone()
    return result


def _reader_gone() -> int:
    """The reader of standard output went away (``edgefleet hub device list | head -1``):
    end quietly with status 1, as Python's documentation advises. Output still buffered
    goes to /dev/null, so the interpreter's last flush raises nothing either."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return 1


if __name__ == "__main__":
    sys.exit(main())
