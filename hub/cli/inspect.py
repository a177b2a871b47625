"""``edgefleet inspect``: decode a captured frame and say whether its signature holds.

What an operator needs beside ``mosquitto_sub``: header, message fields, a body summary
and a signature verdict, given a public key or the hub's data directory (where the
sender's key is pinned). It never trusts what it prints: the verdict comes first, and
a frame that does not parse is reported with the typed reason the hub would audit.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from hub.store.dialects import open_store
from protocol import canonical, frame, keys
from protocol.errors import ProtocolError

EPILOG = """\
examples:
  mosquitto_sub -h 127.0.0.1 -p 1883 -t 'ef/v1/d/+/up/delta' -C 1 -N > delta.bin
  edgefleet inspect delta.bin --hub-data hub/       verify with the device key the hub pinned
  edgefleet inspect delta.bin --public-key KEY --json     KEY: 64 hex digits
  cat frame.bin | edgefleet inspect -

-N matters: without it mosquitto_sub ends the payload with a newline and the frame no
longer verifies. Exit status: 0 valid, 1 not (malformed, unverified or invalid).
"""


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "inspect",
        help="decode a captured frame and verify its signature",
        description="Decode an edgefleet frame (a raw MQTT payload) and verify its signature.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("file", help="file holding the raw payload, or - for standard input")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--public-key", help="the signer's Ed25519 public key (64 hex digits)")
    source.add_argument(
        "--hub-data", type=Path, help="hub data directory: use the key pinned for the device"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    data = sys.stdin.buffer.read() if args.file == "-" else Path(args.file).read_bytes()
    report = inspect(data, public_key=args.public_key, hub_data=args.hub_data)
    if args.json:
        print(json.dumps(report, indent=2, sort_keys=True))
    else:
        for key, value in report.items():
            shown = canonical.dumps(value).decode() if isinstance(value, dict | list) else value
            print(f"{key:>12}: {shown}")
    return 0 if report["verdict"] == "valid" else 1


def inspect(
    data: bytes, *, public_key: str | None = None, hub_data: Path | None = None
) -> dict[str, Any]:
    """A printable report on ``data``: header, message, body summary, verdict."""
    report: dict[str, Any] = {"size": len(data)}
    try:
        opened = frame.open_frame(data)
    except ProtocolError as e:
        report.update(verdict="malformed", reason=e.reason, detail=str(e))
        return report
    header = opened.header
    report.update(
        kind=header.kind,
        device_id=header.device_id,
        seq=header.seq,
        sent_at=header.sent_at,
        nonce=header.nonce,
        msg=opened.fields,
        body=f"{len(opened.body)} bytes, sha256 {header.body_sha256[:16]}…",
    )
    try:
        verifying = _verifying_key(opened, public_key, hub_data)
    except (ProtocolError, LookupError) as e:
        report.update(verdict="unverified", reason=str(e))
        return report
    try:
        opened.verify(verifying)
    except ProtocolError as e:
        report.update(verdict="invalid", reason=e.reason, detail=str(e))
        return report
    report.update(verdict="valid", signer=keys.keyid(verifying))
    return report


def _verifying_key(
    opened: frame.Opened, public_key: str | None, hub_data: Path | None
) -> Ed25519PublicKey:
    if public_key:
        return keys.public_from_hex(public_key)
    if opened.header.kind == "up.hello" and hub_data is None:
        return keys.public_from_hex(str(opened.fields.get("public_key", "")))
    if hub_data is None:
        raise LookupError("no key given: pass --public-key or --hub-data")
    if not opened.header.kind.startswith("up."):
        raise LookupError("downlink frames are signed by the rollout key: pass --public-key")
    store = open_store(hub_data / "hub.db")
    try:
        device = store.devices.find(opened.header.device_id)
    finally:
        store.close()
    if device is None:
        raise LookupError(f"device {opened.header.device_id} is not known to this hub")
    return keys.public_from_hex(device.public_key)
