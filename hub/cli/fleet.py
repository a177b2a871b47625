"""``edgefleet hub enroll`` and ``edgefleet hub device``: admit, manage and read devices.

Thin shells over the REST API (``/api/v1/enrollment-tokens``, ``/api/v1/devices``)
through :mod:`hub.cli.client`: ``--hub URL --token T`` for a running hub, or ``--data
DIR`` on its machine. A running hub sees a change made with ``--data`` at its next
ingest batch (approve and revoke bump the devices epoch its caches watch). What a
device reported (``device show``, ``device history``) is in :mod:`hub.cli.device_views`.
"""

from __future__ import annotations

import argparse
import sys

from hub.cli import device_views
from hub.cli.client import add_target_options, connect, segment
from hub.cli.common import (
    Subcommands,
    add_command,
    json_option,
    print_json,
    show_date,
)
from hub.errors import InvalidRequest

ENROLL_EPILOG = """\
A device that says hello with a valid token is enrolled at once: its public key is pinned
and the token's tags become its tags. Without a token it waits for `hub device approve`.
The secret goes to standard output alone (SECRET=$(edgefleet hub enroll create ...)).

examples:
  edgefleet hub enroll create --kind fleet --expires-in 86400 --tag site=plant-3
  edgefleet hub enroll create --kind single       one device, never expires
  edgefleet hub enroll list
  edgefleet hub enroll revoke tok-3f9a0c12b7de4455
"""

DEVICE_EPILOG = """\
examples:
  edgefleet hub device list --status pending
  edgefleet hub device approve pump-17        trust the key it presented
  edgefleet hub device revoke pump-17         refuse its frames from now on
  edgefleet hub device show pump-17           desired against reported, last refusal
  edgefleet hub device history pump-17 --kind deltas --json
"""


def add_fleet_commands(hub_commands: Subcommands) -> None:
    """Add ``enroll create|list|revoke`` and ``device list|approve|revoke|show|history``."""
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
    add_target_options(create)
    listing = add_command(
        tokens, "hub enroll list", "list tokens (never their secrets)", ENROLL_EPILOG, _list
    )
    add_target_options(listing)
    json_option(listing)
    revoke = add_command(
        tokens, "hub enroll revoke", "make a token unusable", ENROLL_EPILOG, _revoke_token
    )
    revoke.add_argument("id", help="the token id (tok-..., from `hub enroll list`)")
    add_target_options(revoke)

    device = hub_commands.add_parser(
        "device",
        help="list, approve, revoke and read devices",
        description="List devices, approve pending ones, revoke any, read what they report.",
        epilog=DEVICE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    devices = device.add_subparsers(dest="device_command", metavar="SUBCOMMAND", required=True)
    show = add_command(devices, "hub device list", "list devices", DEVICE_EPILOG, _devices)
    show.add_argument("--status", choices=("pending", "active", "revoked"), help="only these")
    add_target_options(show)
    json_option(show)
    for verb, summary, handler in (
        ("approve", "trust the key a pending device presented", _approve),
        ("revoke", "refuse a device's frames from now on", _revoke_device),
    ):
        one = add_command(devices, f"hub device {verb}", summary, DEVICE_EPILOG, handler)
        one.add_argument("device_id", metavar="DEVICE", help="the device id")
        add_target_options(one)
    device_views.add_commands(devices)


def _create(args: argparse.Namespace) -> int:
    body: dict[str, object] = {"kind": args.kind, "tags": _tags(args.tag)}
    if args.expires_in is not None:
        body["expires_in_s"] = args.expires_in
    elif args.kind == "fleet":
        raise InvalidRequest("a fleet token needs --expires-in SECONDS")
    with connect(args, create=True) as hub:
        token = hub.send("POST", "/api/v1/enrollment-tokens", json=body)
    print(token["token"])
    print(
        f"enrollment token {token['id']} ({token['kind']}): the secret above is shown only now",
        file=sys.stderr,
    )
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
    with connect(args) as hub:
        rows = hub.all("/api/v1/enrollment-tokens")
    if args.json:
        print_json(rows)
        return 0
    print(f"{'ID':<21}  {'KIND':<6}  {'EXPIRES':<16}  {'USES':>4}  {'STATE':<7}  TAGS")
    for row in rows:
        state = "revoked" if row["revoked"] else "active"
        tags = ",".join(f"{k}={v}" for k, v in sorted(row["tags"].items())) or "-"
        print(
            f"{row['id']:<21}  {row['kind']:<6}  {show_date(row['expires_at']):<16}  "
            f"{row['uses']:>4}  {state:<7}  {tags}"
        )
    return 0


def _revoke_token(args: argparse.Namespace) -> int:
    with connect(args) as hub:
        hub.send("DELETE", f"/api/v1/enrollment-tokens/{segment(args.id)}")
    print(f"enrollment token {args.id} revoked; devices it enrolled stay enrolled")
    return 0


def _devices(args: argparse.Namespace) -> int:
    with connect(args) as hub:
        rows = hub.all("/api/v1/devices", status=args.status)
    if args.json:
        print_json(rows)
        return 0
    print(
        f"{'DEVICE':<24}  {'STATUS':<8}  {'ONLINE':<6}  {'MODEL':<20}  {'HEALTH':<16}  "
        f"{'LAST SEEN':<16}  {'TAGS':<24}  WHY"
    )
    for row in rows:
        active = row["active"]
        model = f"{active['name']} v{active['version']}" if active else "-"
        tags = ",".join(f"{k}={v}" for k, v in sorted(row["tags"].items())) or "-"
        why = (row["pending_reason"] if row["status"] == "pending" else row["refusal"]) or "-"
        print(
            f"{row['id']:<24}  {row['status']:<8}  {'yes' if row['online'] else 'no':<6}  "
            f"{model:<20}  {row['health']:<16}  {show_date(row['last_seen']):<16}  "
            f"{tags:<24}  {why}"
        )
    print(f"{len(rows)} device(s)")
    return 0


def _approve(args: argparse.Namespace) -> int:
    with connect(args) as hub:
        hub.send("POST", f"/api/v1/devices/{segment(args.device_id)}/approve")
    print(f"device {args.device_id} approved: its key is pinned")
    return 0


def _revoke_device(args: argparse.Namespace) -> int:
    with connect(args) as hub:
        hub.send("POST", f"/api/v1/devices/{segment(args.device_id)}/revoke")
    print(f"device {args.device_id} revoked: the hub refuses its frames from now on")
    return 0
