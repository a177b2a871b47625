"""``edgefleet rollout start|list|show|pause|resume|abort|rollback`` in ``--data`` mode
(the REST API in process, over the hub's real store and keys)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgefleet.cli import main
from hub.store.dialects import open_store
from hub.store.rows import Device
from tests.hub.rollouts_shell.live import MODEL, hub_data


@pytest.fixture
def data(tmp_path: Path) -> Path:
    data = hub_data(tmp_path / "hub")
    store = open_store(data / "hub.db")
    v1 = store.registry.version(MODEL, 1)
    assert v1 is not None
    for k in range(4):
        store.devices.add(
            Device(f"d-{k}", "ab" * 32, "active", first_seen=0, online=True,
                   active_name=MODEL, active_version=1, active_sha256=v1.sha256)
        )  # fmt: skip
    store.close()
    return data


def rollout(data: Path, *argv: str) -> int:
    return main(["rollout", *argv, "--data", str(data)])


def test_an_operator_starts_follows_and_steers_a_rollout_from_the_cli(
    data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    start = ("start", "--model", MODEL, "--version", "2", "--stages", "50,100", "--bake", "0")
    assert rollout(data, *start, "--dry-run") == 0
    assert "stage 1: +2" in capsys.readouterr().out
    assert rollout(data, *start) == 0
    assert capsys.readouterr().out.strip() == "r-1"
    assert rollout(data, *start) == 2, "a second live rollout over the same devices: 409"
    assert "r-1" in capsys.readouterr().err
    assert rollout(data, "list") == 0
    assert "r-1" in capsys.readouterr().out
    assert rollout(data, "show", "r-1") == 0
    shown = capsys.readouterr().out
    assert "churn v2, baking (stage 1)" in shown
    assert "created: churn v2, 4 devices" in shown
    assert rollout(data, "pause", "r-1", "--reason", "lunch") == 0
    assert capsys.readouterr().out.strip() == "r-1: paused"
    assert rollout(data, "approve", "r-1") == 2
    assert "paused" in capsys.readouterr().err
    assert rollout(data, "resume", "r-1") == 0
    assert rollout(data, "rollback", "r-1", "--reason", "changed my mind") == 0
    assert "r-1: rolling_back" in capsys.readouterr().out


def test_bad_stages_are_refused_before_anything_is_sent(
    data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert rollout(data, "start", "--model", MODEL, "--version", "2", "--stages", "50,40") == 2
    assert "percentages must increase" in capsys.readouterr().err


def test_a_shadow_stage_from_the_cli_runs_first_on_its_share(
    data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    start = ("start", "--model", MODEL, "--version", "2", "--stages", "50,100", "--shadow", "50")
    assert rollout(data, *start, "--dry-run") == 0
    assert "shadow: 2" in capsys.readouterr().out
    assert rollout(data, *start) == 0
    assert capsys.readouterr().out.strip() == "r-1"
    assert rollout(data, "show", "r-1", "--json") == 0
    assert json.loads(capsys.readouterr().out)["spec"]["shadow"]["percent"] == 50
    assert rollout(data, "show", "r-1") == 0
    assert "shadow stage" in capsys.readouterr().out
