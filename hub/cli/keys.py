"""``edgefleet keys``: create, rotate and inspect the hub's key ring; sign release lists.

A thin shell over :mod:`hub.keyring`: parse arguments, call one function, print what
happened. Bad input ends in one line on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from pathlib import Path

from edgefleet.clock import SystemClock
from hub import keyring
from hub.cli.common import add_command, positive
from protocol.metadata import ROLES

EPILOG = """\
The hub signs with the rollout and heartbeat keys; keep the root keys and the release
key offline (one holder per root key) and bring them back only to rotate or release.

examples:
  edgefleet keys init --dir hub/keys                 root 2-of-3 plus one key per role
  edgefleet keys show --dir hub/keys                 versions, key ids, expiries
  edgefleet keys rotate rollout --dir hub/keys       after a suspected key leak
  edgefleet keys sign-release pending.json --key /media/usb/release.pem
"""

INIT_EPILOG = """\
Writes DIR/root-1.pem ... root-N.pem, release.pem, rollout.pem, heartbeat.pem (mode 0600)
and DIR/root/1.root.json, signed by every root key and valid for 365 days. Devices are
provisioned with that root/1.root.json. Then move the root and release keys offline.

example:
  edgefleet keys init --dir hub/keys --root-threshold 2 --root-keys 3
"""

ROTATE_EPILOG = """\
Writes root version N+1 naming a fresh key for ROLE, signed by the root keys present
(they must meet the old and the new root threshold), and moves the replaced key file to
DIR/retired/. Devices that see the new root drop what the old key vouched for: a
rotated rollout key resets their assignment high-water mark (fast-forward recovery).

examples:
  edgefleet keys rotate rollout --dir hub/keys
  edgefleet keys rotate root --index 2 --dir hub/keys     replace root key 2 only
"""

SIGN_EPILOG = """\
Adds the release key's signature to a pending release list, on the offline machine
holding the key. Prints the version and entries so you can check what you sign.

example:
  edgefleet keys sign-release pending-release.json --key /media/usb/release.pem \\
      --out release.json
"""

SHOW_EPILOG = """\
Lists the root chain, each role's threshold and key ids, which private keys are present
in DIR and when the root expires. Never prints key material.

example:
  edgefleet keys show --dir hub/keys
"""


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``keys`` and its subcommands to the root ``edgefleet`` parser."""
    parser = subparsers.add_parser(
        "keys",
        help="create, rotate and inspect the hub's signing keys; sign release lists",
        description="Manage the hub's key ring: root, release, rollout and heartbeat keys.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="keys_command", metavar="SUBCOMMAND", required=True)

    init = add_command(
        commands, "keys init", "create a new key ring and root v1", INIT_EPILOG, _init
    )
    _dir_option(init)
    init.add_argument(
        "--root-threshold", type=positive, default=2, help="root keys needed (default 2)"
    )
    init.add_argument("--root-keys", type=positive, default=3, help="root keys (default 3)")

    rotate = add_command(commands, "keys rotate", "replace a role's key", ROTATE_EPILOG, _rotate)
    rotate.add_argument("role", choices=ROLES, metavar="ROLE", help=", ".join(ROLES))
    _dir_option(rotate)
    rotate.add_argument(
        "--index", type=positive, help="root only: replace root key N (default: all)"
    )

    sign = add_command(
        commands, "keys sign-release", "sign a pending release list offline", SIGN_EPILOG, _sign
    )
    sign.add_argument("file", type=Path, metavar="FILE", help="the pending release list")
    sign.add_argument("--key", type=Path, required=True, help="the release key (PEM)")
    sign.add_argument("--out", type=Path, help="where to write the result (default: FILE)")

    show = add_command(commands, "keys show", "print the key ring", SHOW_EPILOG, _show)
    _dir_option(show)


def _dir_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dir", type=Path, required=True, help="the key ring directory")


def _init(args: argparse.Namespace) -> int:
    ring = keyring.init(
        args.dir,
        now_ms=SystemClock().now_ms(),
        root_keys=args.root_keys,
        root_threshold=args.root_threshold,
    )
    print(f"created key ring in {ring.path}: root v1, expires {_date(ring.root.expires)}")
    print("now move root-*.pem and release.pem offline, one holder per root key")
    return 0


def _rotate(args: argparse.Namespace) -> int:
    ring = keyring.rotate(args.dir, args.role, now_ms=SystemClock().now_ms(), index=args.index)
    print(f"rotated {args.role}: root v{ring.root.version} in {ring.path / keyring.ROOT_DIR}")
    print("publish the new root chain so devices pick it up")
    return 0


def _sign(args: argparse.Namespace) -> int:
    key = keyring.read_private_key(args.key)
    release = keyring.sign_release(args.file, key, now_ms=SystemClock().now_ms(), out=args.out)
    print(f"signed release list v{release.version}, expires {_date(release.expires)}:")
    for entry in release.entries:
        print(f"  #{entry.release_counter} {entry.name} v{entry.version} {entry.sha256[:16]}")
    print(f"written to {args.out or args.file}")
    return 0


def _show(args: argparse.Namespace) -> int:
    ring = keyring.load(args.dir)
    root = ring.root
    print(f"key ring {ring.path}")
    print(f"root v{root.version} (chain v1-v{len(ring.chain)}), expires {_date(root.expires)}")
    for role in ROLES:
        spec = root.roles[role]
        print(f"  {role:<10} {spec.threshold} of {len(spec.keyids)}")
        for keyid in spec.keyids:
            file = ring.files.get(keyid)
            where = file.name if file else "not here (offline)"
            print(f"    {keyid[:16]}  {where}")
    return 0


def _date(ms: int) -> str:
    try:
        return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M UTC")
    except (OverflowError, ValueError):  # a date past year 9999
        return f"{ms} ms after the epoch"
