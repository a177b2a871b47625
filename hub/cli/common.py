"""What every ``edgefleet`` hub-side subcommand shares: how it is declared, and how a
failure reaches the user: one line on stderr, never a traceback, and the exit status
docs/cli.md promises (2: fix your input; 1: something outside failed, from
:class:`hub.cli.client.CliFailure`)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeAlias

from hub.cli.client import CliFailure
from hub.settings import HubSettings
from hub.store import Store
from hub.store.dialects import open_store as open_location
from protocol.errors import EdgefleetError

Subcommands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"
Handler = Callable[[argparse.Namespace], int]


def add_command(
    commands: Subcommands, path: str, summary: str, epilog: str, handler: Handler
) -> argparse.ArgumentParser:
    """Add the last word of ``path`` (e.g. ``"keys init"``) to ``commands``, guarded."""
    parser = commands.add_parser(
        path.rsplit(" ", 1)[-1],
        help=summary,
        description=summary[0].upper() + summary[1:] + ".",
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        prog=f"edgefleet {path}",
    )
    parser.set_defaults(handler=guarded(path, handler))
    return parser


def guarded(path: str, handler: Handler) -> Handler:
    """Turn every failure into one line on stderr and its exit status (module docstring):
    the hub's answers carry theirs; a local error (a file that is not there, a key ring
    that does not load) is the caller's to fix, 2."""

    def run(args: argparse.Namespace) -> int:
        try:
            return handler(args)
        except CliFailure as e:
            print(f"edgefleet {path}: error: {e}", file=sys.stderr)
            return e.exit_code
        except BrokenPipeError:
            raise  # the reader went away: edgefleet/cli.py ends quietly
        except (EdgefleetError, OSError) as e:
            print(f"edgefleet {path}: error: {e}", file=sys.stderr)
            return 2

    return run


def positive(text: str) -> int:
    """An argparse type: a whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def data_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", type=Path, required=True, help="the hub's data directory")
    parser.add_argument(
        "--database",
        metavar="URL",
        help="the hub's PostgreSQL store, postgresql://USER:PASSWORD@HOST/DB (default: "
        "SQLite in --data)",
    )


def open_store(data: Path, *, create: bool = False, database: str | None = None) -> Store:
    """The hub's store: in ``data``, or at ``database``; only ``create`` may start a new
    SQLite one.

    Raises:
        FileNotFoundError: no store yet and not ``create``.
    """
    settings = HubSettings(data_dir=data, database=database or "")
    if not create and not settings.store_exists():
        raise FileNotFoundError(f"no hub store at {settings.db_path}")
    return open_location(settings.store_location)


def json_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the hub's JSON answer")


def print_json(value: object) -> None:
    print(json.dumps(value, indent=2, sort_keys=True))


def show_date(ms: int | None) -> str:
    """A stored time (ms) as UTC minutes, for listings."""
    if ms is None:
        return "-"
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M")
