"""``edgefleet hub enroll`` and ``edgefleet hub device``: admit and manage devices.

A thin shell over :mod:`hub.fleet.enrollment`, working on the hub's store file like ``hub
token`` does; a running hub sees each change at its next ingest batch (approve and
revoke bump the devices epoch its caches watch). The same is offered over REST
(``/api/v1/enrollment-tokens``, ``/api/v1/devices/{id}/approve|revoke``).
"""

from __future__ import annotations

import argparse
import json
from contextlib import closing

from edgefleet.clock import SystemClock
from hub.cli.common import Subcommands, add_command, data_option, open_store, show_date
from hub.errors import InvalidRequest
from hub.fleet import enrollment

ENROLL_EPILOG = """\
A device that says hello with a valid token is enrolled at once: its public key is pinned
and the token's tags become its tags. Without a token it waits for `hub device approve`.

examples:
  edgefleet hub enroll create --data hub/ --kind fleet --expires-in 86400 --tag site=plant-3
  edgefleet hub enroll create --data hub/ --kind single       one device, never expires
  edgefleet hub enroll list --data hub/
  edgefleet hub enroll revoke tok-3f9a0c12b7de4455 --data hub/
"""

DEVICE_EPILOG = """\
examples:
  edgefleet hub device list --data hub/ --status pending
  edgefleet hub device approve pump-17 --data hub/      trust the key it presented
  edgefleet hub device revoke pump-17 --data hub/       refuse its frames from now on
"""

ACTOR = "cli"


def add_fleet_commands(hub_commands: Subcommands) -> None:
    """Add ``enroll create|list|revoke`` and ``device list|approve|revoke`` to ``hub``."""
    enroll = hub_commands.add_parser(
        "enroll",
        help="create, list and revoke enrollment tokens",
        description="Create, list and revoke the tokens devices enrol with.",
        epilog=ENROLL_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    tokens = enroll.add_subparsers(dest="enroll_command", metavar="SUBCOMMAND", required=True)
    create = add_command(
        tokens, "hub enroll create", "create a token and print its secret (once)",
        ENROLL_EPILOG, _create,
    )  # fmt: skip
    data_option(create)
    create.add_argument(
        "--kind", choices=("single", "fleet"), default="single",
        help="single: one device; fleet: any number until it expires (default single)",
    )  # fmt: skip
    create.add_argument(
        "--expires-in", type=int, metavar="SECONDS", help="lifetime; required for fleet"
    )
    create.add_argument(
        "--tag", action="append", default=[], metavar="KEY=VALUE", help="tag for its devices"
    )
    listing = add_command(
        tokens, "hub enroll list", "list tokens (never their secrets)", ENROLL_EPILOG, _list
    )
    data_option(listing)
    revoke = add_command(
        tokens, "hub enroll revoke", "make a token unusable", ENROLL_EPILOG, _revoke_token
    )
    revoke.add_argument("id", help="the token id (tok-..., from `hub enroll list`)")
    data_option(revoke)

    device = hub_commands.add_parser(
        "device",
        help="list, approve and revoke devices",
        description="List devices, approve pending ones, revoke any.",
        epilog=DEVICE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    devices = device.add_subparsers(dest="device_command", metavar="SUBCOMMAND", required=True)
    show = add_command(devices, "hub device list", "list devices", DEVICE_EPILOG, _devices)
    show.add_argument("--status", choices=("pending", "active", "revoked"), help="only these")
    data_option(show)
    for verb, summary, handler in (
        ("approve", "trust the key a pending device presented", _approve),
        ("revoke", "refuse a device's frames from now on", _revoke_device),
    ):
        one = add_command(devices, f"hub device {verb}", summary, DEVICE_EPILOG, handler)
        one.add_argument("device_id", metavar="DEVICE", help="the device id")
        data_option(one)


def _create(args: argparse.Namespace) -> int:
    now_ms = SystemClock().now_ms()
    expires_at = None if args.expires_in is None else now_ms + args.expires_in * 1000
    with closing(open_store(args.data, create=True)) as store:
        token = enrollment.create_token(
            store, kind=args.kind, by=ACTOR, now_ms=now_ms, expires_at=expires_at,
            tags=_tags(args.tag),
        )  # fmt: skip
    print(token.secret)
    print(f"enrollment token {token.id} ({token.kind}): the secret above is shown only now")
    return 0


def _tags(pairs: list[str]) -> dict[str, str]:
    tags = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise InvalidRequest(f"--tag {pair!r}: expected KEY=VALUE")
        tags[key] = value
    return tags


def _list(args: argparse.Namespace) -> int:
    with closing(open_store(args.data)) as store:
        rows = enrollment.list_tokens(store)
    print(f"{'ID':<21}  {'KIND':<6}  {'EXPIRES':<16}  {'USES':>4}  {'STATE':<7}  TAGS")
    for row in rows:
        state = "revoked" if row.revoked else "active"
        tags = json.dumps(dict(row.tags), sort_keys=True, separators=(",", ":"))
        print(
            f"{row.id:<21}  {row.kind:<6}  {show_date(row.expires_at):<16}  "
            f"{row.uses:>4}  {state:<7}  {tags}"
        )
    return 0


def _revoke_token(args: argparse.Namespace) -> int:
    with closing(open_store(args.data)) as store:
        enrollment.revoke_token(store, args.id, by=ACTOR, now_ms=SystemClock().now_ms())
    print(f"enrollment token {args.id} revoked; devices it enrolled stay enrolled")
    return 0


def _devices(args: argparse.Namespace) -> int:
    with closing(open_store(args.data)) as store:
        page = store.devices.page(status=args.status, limit=10_000)
    print(f"{'DEVICE':<24}  {'STATUS':<8}  {'ONLINE':<6}  {'MODEL':<20}  {'LAST SEEN':<16}  TAGS")
    for row in page.items:
        model = f"{row.active_name} v{row.active_version}" if row.active_name else "-"
        tags = json.dumps(dict(row.tags), sort_keys=True)
        print(
            f"{row.id:<24}  {row.status:<8}  {'yes' if row.online else 'no':<6}  "
            f"{model:<20}  {show_date(row.last_seen):<16}  {tags}"
        )
    print(f"{page.total} device(s)")
    return 0


def _approve(args: argparse.Namespace) -> int:
    with closing(open_store(args.data)) as store:
        enrollment.approve(store, args.device_id, by=ACTOR, now_ms=SystemClock().now_ms())
    print(f"device {args.device_id} approved: its key is pinned")
    return 0


def _revoke_device(args: argparse.Namespace) -> int:
    with closing(open_store(args.data)) as store:
        enrollment.revoke(store, args.device_id, by=ACTOR, now_ms=SystemClock().now_ms())
    print(f"device {args.device_id} revoked: the hub refuses its frames from now on")
    return 0
