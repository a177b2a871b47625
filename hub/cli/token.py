"""``edgefleet hub token``: create, list and revoke the REST API's bearer tokens.

A thin shell over :mod:`hub.api.auth`, working on the hub's store file directly (a
running hub sees the change at once: it checks tokens against the store on every
request). This is how the first admin token comes to exist; later ones can also be
made over the API by an admin. Bad input ends in one line on stderr and exit status 2.

:func:`register` adds the ``hub`` command group to the root parser and returns its
subcommand set, so ``hub serve`` (and others) can be added beside ``hub token``;
:func:`add_token_commands` adds ``token`` to a ``hub`` group made elsewhere.
"""

from __future__ import annotations

import argparse
import sys

from edgefleet.clock import SystemClock
from hub.api import auth
from hub.cli.common import Subcommands, add_command, data_option, open_store, show_date

HUB_EPILOG = """\
examples:
  edgefleet hub token create --data hub/ --role admin --name alice
  edgefleet hub token list --data hub/
"""

ROLES_EPILOG = """\
Tokens are bearer secrets for the REST API (Authorization: Bearer <token>). Roles:
viewer reads everything but secrets; operator also tags, approves and directs devices,
registers models and publishes release lists; admin also revokes devices and manages
enrollment and API tokens. The hub stores only a digest: a token is shown once.

examples:
  edgefleet hub token create --data hub/ --role admin --name alice
  edgefleet hub token create --data hub/ --role viewer --name prometheus
  edgefleet hub token list --data hub/
  edgefleet hub token revoke 3f9a0c12b7de --data hub/
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
        "example:\n  edgefleet hub token create --data hub/ --role operator --name ci\n",
        _create,
    )
    data_option(create)
    create.add_argument("--role", required=True, choices=auth.ROLES, help="the token's role")
    create.add_argument("--name", default="", help="who or what holds it (shown in listings)")

    listing = add_command(
        commands,
        "hub token list",
        "list tokens (never their secrets)",
        "example:\n  edgefleet hub token list --data hub/\n",
        _list,
    )
    data_option(listing)

    revoke = add_command(
        commands,
        "hub token revoke",
        "revoke a token for good",
        "example:\n  edgefleet hub token revoke 3f9a0c12b7de --data hub/\n",
        _revoke,
    )
    revoke.add_argument("id", metavar="ID", help="the token id (from `token list`)")
    data_option(revoke)


def _create(args: argparse.Namespace) -> int:
    store = open_store(args.data, create=True)
    try:
        issued = auth.create_token(
            store, role=args.role, name=args.name, actor="cli", now_ms=SystemClock().now_ms()
        )
    finally:
        store.close()
    print(issued.token)
    print(
        f"token {issued.id} ({issued.role}) created: this is the only time it is shown",
        file=sys.stderr,
    )
    return 0


def _list(args: argparse.Namespace) -> int:
    store = open_store(args.data)
    try:
        rows = auth.list_tokens(store)
    finally:
        store.close()
    print(f"{'ID':<12}  {'ROLE':<8}  {'CREATED':<16}  {'STATE':<7}  NAME")
    for row in rows:
        state = "revoked" if row.revoked else "active"
        print(
            f"{row.id:<12}  {row.role:<8}  {show_date(row.created_at):<16}  {state:<7}  {row.name}"
        )
    return 0


def _revoke(args: argparse.Namespace) -> int:
    store = open_store(args.data)
    try:
        auth.revoke_token(store, args.id, actor="cli", now_ms=SystemClock().now_ms())
    finally:
        store.close()
    print(f"token {args.id} revoked")
    return 0
