"""``edgefleet agent ...``: run the device daemon, or write an example configuration.

The root command (``edgefleet/cli.py``) calls :func:`register`; ``python -m agent``
offers the same subcommands without the ``agent`` level. Handlers return an exit code:
0 on success (also after a SIGTERM), 2 for a configuration error, 1 for any other
error the agent reports. Errors are one line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from agent.config import ENV_PREFIX, EXAMPLE_TOML, load_config
from agent.errors import AgentError, ConfigError

AGENT_EPILOG = f"""\
examples:
  edgefleet agent init-config --output agent.toml   write a commented example
  edgefleet agent run --config agent.toml           run until SIGTERM / Ctrl-C

Every agent.toml key can be set (or overridden) by an environment variable
{ENV_PREFIX}<KEY>, e.g. {ENV_PREFIX}BROKER_URL=mqtts://broker:8883 or
{ENV_PREFIX}TAGS=region=eu-west,hardware=rpi4.
"""

RUN_EPILOG = f"""\
example:
  edgefleet agent run --config /etc/edgefleet/agent.toml
  {ENV_PREFIX}DEVICE_ID=sensor-0002 {ENV_PREFIX}STATE_DIR=/var/lib/edgefleet \\
      edgefleet agent run

On first start the agent generates the device key in state_dir (mode 0600) and says hello
to the hub. SIGTERM finishes the current step, reports the device offline, waits up to
stop_grace_s for the hub's acknowledgements and disconnects; nothing unsent is lost.
"""


def register(subparsers: Any) -> None:
    """Add ``agent`` (with ``run`` and ``init-config``) to the root command's subparsers."""
    parser = subparsers.add_parser(
        "agent",
        help="the device daemon: inference, local learning, sync with the hub",
        description="The edgefleet device agent.",
        epilog=AGENT_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_commands(parser.add_subparsers(dest="agent_command", metavar="COMMAND", required=True))


def add_commands(subparsers: Any) -> None:
    """Add ``run`` and ``init-config`` to ``subparsers``."""
    run = subparsers.add_parser(
        "run",
        help="run the agent until SIGTERM",
        description="Run the device agent until SIGTERM or SIGINT.",
        epilog=RUN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help=f"agent.toml; without it, settings come from {ENV_PREFIX}* variables only",
    )
    run.set_defaults(handler=run_agent)
    init = subparsers.add_parser(
        "init-config",
        help="write a commented example agent.toml",
        description="Write a commented example agent.toml to edit.",
        epilog="example:\n  edgefleet agent init-config --output agent.toml",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    init.add_argument(
        "--output", type=Path, default=Path("agent.toml"), metavar="FILE", help="default agent.toml"
    )
    init.add_argument("--force", action="store_true", help="overwrite an existing file")
    init.set_defaults(handler=init_config)


def run_agent(args: argparse.Namespace) -> int:
    """Load the configuration, run the whole device agent until a signal; return the exit code."""
    from agent.device import Device  # pulls in paho, APScheduler and onnxruntime: only to run

    _configure_logging(getattr(args, "log_level", "INFO"))
    try:
        Device(load_config(args.config)).run()
    except ConfigError as e:
        return _fail(e, 2)
    except AgentError as e:
        return _fail(e, 1)
    return 0


def init_config(args: argparse.Namespace) -> int:
    """Write the example configuration; refuse to overwrite without ``--force``."""
    path: Path = args.output
    if path.exists() and not args.force:
        print(f"edgefleet agent: {path} exists; use --force to overwrite", file=sys.stderr)
        return 1
    path.write_text(EXAMPLE_TOML, encoding="utf-8")
    print(f"wrote {path}; edit device_id and broker_url, then: edgefleet agent run --config {path}")
    return 0


def _fail(error: AgentError, code: int) -> int:
    print(f"edgefleet agent: error: {error}", file=sys.stderr)
    return code


def _configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("apscheduler").setLevel(logging.WARNING)  # logs every job run at INFO
