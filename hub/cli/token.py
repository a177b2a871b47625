"""``edgefleet hub token``: create, list and revoke the REST API's bearer tokens.

A thin shell over ``/api/v1/tokens`` (admin) through :mod:`hub.cli.client`: ``--hub URL
--token T`` for a running hub, or ``--data DIR`` on the hub's machine, which is how the
first admin token comes to exist (a running hub sees it at once: it checks tokens
against the store on every request).

:func:`register` adds the ``hub`` command group to the root parser and returns its
subcommand set, so ``hub serve`` (and others) can be added beside ``hub token``;
:func:`add_token_commands` adds ``token`` to a ``hub`` group made elsewhere.
"""

from __future__ import annotations

import argparse
import sys

from hub.api import auth
from hub.cli.client import add_target_options, connect, segment
from hub.cli.common import (
    Subcommands,
    add_command,
    json_option,
    print_json,
    show_date,
)

HUB_EPILOG = """\
examples:
  edgefleet hub token create --data hub/ --role admin --name alice     the first one
  edgefleet hub token list --hub http://hub:8080 --token $EDGEFLEET_TOKEN
"""

ROLES_EPILOG = """\
Tokens are bearer secrets for the REST API (Authorization: Bearer <token>). Roles:
viewer reads everything but secrets; operator also tags, approves and directs devices,
registers models and publishes release lists; admin also revokes devices and manages
enrollment and API tokens. The hub stores only a digest: a token is shown once.

The first admin token is made on the hub's machine with --data; later ones anywhere,
with an admin token (--hub URL --token T, or EDGEFLEET_HUB_URL and EDGEFLEET_TOKEN).

examples:
  edgefleet hub token create --data hub/ --role admin --name alice
  edgefleet hub token create --role viewer --name prometheus
  edgefleet hub token list
  edgefleet hub token revoke 3f9a0c12b7de
"""


def register(subparsers: Subcommands) -> Subcommands:
    """Add ``hub`` (with ``token``) to the root parser; return the ``hub`` subcommands."""
    parser = subparsers.add_parser(
        "hub",
        help="run and administer the hub",
        description="Run and administer the edgefleet hub.",
        epilog=HUB_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="hub_command", metavar="SUBCOMMAND", required=True)
    add_token_commands(commands)
    return commands


def add_token_commands(hub_commands: Subcommands) -> None:
    """Add ``token create|list|revoke`` to the ``hub`` command group."""
    parser = hub_commands.add_parser(
        "token",
        help="create, list and revoke REST API tokens",
        description="Create, list and revoke the bearer tokens of the hub's REST API.",
        epilog=ROLES_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="token_command", metavar="SUBCOMMAND", required=True)

    create = add_command(
        commands,
        "hub token create",
        "create a token and print it (once)",
        "examples:\n  edgefleet hub token create --data hub/ --role admin --name me\n"
        "  edgefleet hub token create --role operator --name ci\n",
        _create,
    )
    create.add_argument("--role", required=True, choices=auth.ROLES, help="the token's role")
    create.add_argument("--name", default="", help="who or what holds it (shown in listings)")
    add_target_options(create)

    listing = add_command(
        commands,
        "hub token list",
        "list tokens (never their secrets)",
        "example:\n  edgefleet hub token list --hub http://127.0.0.1:8080 --token T\n",
        _list,
    )
    add_target_options(listing)
    json_option(listing)

    revoke = add_command(
        commands,
        "hub token revoke",
        "revoke a token for good",
        "example:\n  edgefleet hub token revoke 3f9a0c12b7de\n",
        _revoke,
    )
    revoke.add_argument("id", metavar="ID", help="the token id (from `token list`)")
    add_target_options(revoke)


def _create(args: argparse.Namespace) -> int:
    with connect(args, create=True) as hub:
        issued = hub.send("POST", "/api/v1/tokens", json={"role": args.role, "name": args.name})
    print(issued["token"])
    print(
        f"token {issued['id']} ({issued['role']}) created: this is the only time it is shown",
        file=sys.stderr,
    )
    return 0


def _list(args: argparse.Namespace) -> int:
    with connect(args) as hub:
        rows = hub.all("/api/v1/tokens")
    if args.json:
        print_json(rows)
        return 0
    print(f"{'ID':<12}  {'ROLE':<8}  {'CREATED':<16}  {'STATE':<7}  NAME")
    for row in rows:
        state = "revoked" if row["revoked"] else "active"
        print(
            f"{row['id']:<12}  {row['role']:<8}  {show_date(row['created_at']):<16}  "
            f"{state:<7}  {row['name']}"
        )
    return 0


def _revoke(args: argparse.Namespace) -> int:
    with connect(args) as hub:
        hub.send("DELETE", f"/api/v1/tokens/{segment(args.id)}")
    print(f"token {args.id} revoked")
    return 0
