"""``edgefleet inspect`` decodes captured frames and gives an honest verdict."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from hub.cli import inspect as inspect_cmd
from hub.store.rows import Device
from hub.store.sqlite import SqliteStore
from protocol import frame, keys
from protocol import messages as m

KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))


def telemetry_frame(key: Ed25519PrivateKey = KEY) -> bytes:
    return frame.encode(
        m.Telemetry(uptime_s=1.0, inference_count=2),
        device_id="dev-1",
        seq=3,
        sent_at=1000,
        nonce=bytes(16),
        key=key,
    )


def test_inspect_verifies_with_a_given_public_key() -> None:
    report = inspect_cmd.inspect(telemetry_frame(), public_key=keys.public_hex(KEY.public_key()))
    assert report["verdict"] == "valid"
    assert report["kind"] == "up.telemetry"
    assert report["msg"]["inference_count"] == 2
    assert report["signer"] == keys.keyid(KEY.public_key())


def test_inspect_reports_a_tampered_frame_as_invalid() -> None:
    tampered = telemetry_frame().replace(b'"inference_count":2', b'"inference_count":7')
    report = inspect_cmd.inspect(tampered, public_key=keys.public_hex(KEY.public_key()))
    assert (report["verdict"], report["reason"]) == ("invalid", "bad_signature")


def test_inspect_reports_garbage_as_malformed_with_the_audit_reason() -> None:
    report = inspect_cmd.inspect(b"\x00" * 80)
    assert (report["verdict"], report["reason"]) == ("malformed", "unknown_version")


def test_inspect_uses_the_key_the_hub_pinned(tmp_path: Path) -> None:
    store = SqliteStore.open(tmp_path / "hub.db")
    store.devices.add(Device("dev-1", keys.public_hex(KEY.public_key()), "active", first_seen=1))
    store.close()
    assert inspect_cmd.inspect(telemetry_frame(), hub_data=tmp_path)["verdict"] == "valid"
    other = Ed25519PrivateKey.generate()
    assert inspect_cmd.inspect(telemetry_frame(other), hub_data=tmp_path)["verdict"] == "invalid"


def test_inspect_without_a_key_says_it_could_not_verify() -> None:
    report = inspect_cmd.inspect(telemetry_frame())
    assert report["verdict"] == "unverified"


def test_inspect_command_prints_json_and_exits_by_verdict(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "frame.bin"
    path.write_bytes(telemetry_frame())
    parser = argparse.ArgumentParser()
    inspect_cmd.register(parser.add_subparsers())
    args = parser.parse_args(
        ["inspect", str(path), "--public-key", keys.public_hex(KEY.public_key()), "--json"]
    )
    assert args.handler(args) == 0
    assert json.loads(capsys.readouterr().out)["verdict"] == "valid"
    args = parser.parse_args(["inspect", str(path), "--json"])
    assert args.handler(args) == 1
