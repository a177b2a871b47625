"""``python -m agent run --config agent.toml``: the agent without the ``edgefleet`` root.

The same subcommands as ``edgefleet agent`` (see :mod:`agent.cli`), for devices that run
the agent alone.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from agent.cli import AGENT_EPILOG, add_commands


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m agent",
        description="The edgefleet device agent.",
        epilog=AGENT_EPILOG.replace("edgefleet agent", "python -m agent"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING (default INFO)")
    add_commands(parser.add_subparsers(dest="agent_command", metavar="COMMAND", required=True))
    args = parser.parse_args(argv)
    code: int = args.handler(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
