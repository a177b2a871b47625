"""The one ``edgefleet`` command.

It lives in ``simulator`` because that is the one package allowed to import both
``agent`` and ``hub`` (they never import each other); each of them contributes its own
subcommands through a ``register(subparsers)`` function.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from agent import cli as agent_cli
from hub import cli_keys, cli_model, cli_token, inspect

EPILOG = """\
examples:
  edgefleet demo                                  the whole loop on one machine
  edgefleet keys init --dir keys/                 root, release, rollout and heartbeat keys
  edgefleet hub serve --data hub/ --embedded-broker
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
    cli_token.register(subparsers)
    cli_model.register(subparsers)
    cli_keys.register(subparsers)
    inspect.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 2
    result: int = handler(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
