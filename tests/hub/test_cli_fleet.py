"""``edgefleet hub enroll`` and ``hub device``: the operator's way to admit and refuse devices."""

from __future__ import annotations

import getpass
import json
from contextlib import closing
from pathlib import Path

import pytest

from edgefleet.cli import main
from edgefleet.clock import SystemClock
from hub import keyring
from hub.cli.common import open_store
from hub.fleet.identity import token_hash
from hub.store.rows import Device
from tests.hub.tables import rows


@pytest.fixture
def data(tmp_path: Path) -> Path:
    path = tmp_path / "hub"
    keyring.init(path / "keys", now_ms=SystemClock().now_ms())
    with closing(open_store(path, create=True)) as store:
        store.devices.add(
            Device("pump-17", "11" * 32, "pending", first_seen=1, tags={"site": "plant-3"})
        )
    return path


def test_enroll_create_prints_a_secret_the_hub_stores_only_hashed(
    data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["hub", "enroll", "create", "--data", str(data), "--kind", "fleet"]
    assert main([*args, "--expires-in", "3600", "--tag", "site=plant-3"]) == 0
    secret = capsys.readouterr().out.splitlines()[0]
    with closing(open_store(data)) as store:
        [row] = rows(store, "enrollment_tokens")
    assert row["hash"] == token_hash(secret)
    assert secret not in json.dumps(row)
    assert json.loads(row["tags"]) == {"site": "plant-3"}

    assert main(["hub", "enroll", "list", "--data", str(data)]) == 0
    listing = capsys.readouterr().out
    assert row["id"] in listing
    assert secret not in listing


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        pytest.param(["--kind", "fleet"], "needs --expires-in", id="fleet-without-expiry"),
        pytest.param(["--tag", "site"], "KEY=VALUE", id="tag-without-value"),
        pytest.param(["--tag", "Bad Key=x"], "tags.Bad Key", id="bad-tag-key"),
    ],
)
def test_enroll_create_refuses_bad_input_in_one_line(
    data: Path, extra: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["hub", "enroll", "create", "--data", str(data), *extra]) == 2
    err = capsys.readouterr().err
    assert message in err
    assert len(err.strip().splitlines()) == 1


def test_device_approve_then_revoke_changes_status_and_audits_who(
    data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with closing(open_store(data)) as store:
        store.devices.set_pending_reason("pump-17", "token_expired")
    assert main(["hub", "device", "list", "--data", str(data), "--status", "pending"]) == 0
    [line] = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("pump-17")]
    assert line.endswith("token_expired")
    assert main(["hub", "device", "approve", "pump-17", "--data", str(data)]) == 0
    assert main(["hub", "device", "revoke", "pump-17", "--data", str(data)]) == 0
    with closing(open_store(data)) as store:
        assert store.devices.get("pump-17").status == "revoked"
        entries = list(reversed(store.audit.page().items))
        actions = [e.action for e in entries]
        actors = {e.actor for e in entries}
    assert actions == ["device.approve", "device.revoke"]
    assert actors == {f"cli:{getpass.getuser()}"}


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        pytest.param(["approve", "nobody"], "nobody", id="unknown-device"),
        pytest.param(["revoke", "pump-17", "approve"], "", id="extra-argument"),
    ],
)
def test_device_commands_fail_in_one_line_without_a_traceback(
    data: Path, argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    try:
        code = main(["hub", "device", *argv, "--data", str(data)])
    except SystemExit as e:  # argparse's own usage error
        code = int(e.code or 0)
    assert code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert message in err


def test_device_show_of_a_device_given_nothing_says_nothing_is_desired(
    data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["hub", "device", "show", "pump-17", "--data", str(data)]) == 0
    shown = capsys.readouterr().out.splitlines()
    assert "  desired   none" in shown
    assert "  in sync   - (nothing desired)" in shown
