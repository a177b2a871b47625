"""``edgefleet round``: start, list, show, cancel, policy and validation set, through the
REST API in-process (``--data``), as an operator on the hub's machine would."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edgefleet.cli import main
from tests.hub.federated.helpers import npz
from tests.integration.live_fleet import MODEL, hub_data


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return hub_data(tmp_path / "hub")


def test_round_start_list_show_cancel(data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = ["--data", str(data)]
    assert (
        main(["round", "start", MODEL, *d, "--target", "3", "--min", "1", "--duration", "10m"]) == 0
    )
    out = capsys.readouterr().out
    assert f"round {MODEL}-r1 open on {MODEL} v2 (default): closes at 3 deltas" in out
    assert main(["round", "start", MODEL, *d]) == 2
    assert "cancel it first" in capsys.readouterr().err
    assert main(["round", "list", *d, "--json"]) == 0
    [listed] = json.loads(capsys.readouterr().out)
    assert (listed["round_id"], listed["state"], listed["min_deltas"]) == (f"{MODEL}-r1", "open", 1)
    assert main(["round", "show", f"{MODEL}-r1", *d]) == 0
    assert "deltas: 0 waiting, 0 used" in capsys.readouterr().out
    assert main(["round", "cancel", f"{MODEL}-r1", *d]) == 0
    assert f"round {MODEL}-r1 cancelled" in capsys.readouterr().out
    assert main(["round", "cancel", f"{MODEL}-r1", *d]) == 2
    assert "cancelled" in capsys.readouterr().err


def test_round_start_refuses_bad_input_in_one_line(
    data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    d = ["--data", str(data)]
    assert main(["round", "start", "nope", *d]) == 2
    assert "no model 'nope'" in capsys.readouterr().err
    assert main(["round", "start", MODEL, *d, "--min", "5", "--target", "2"]) == 2
    assert "min_deltas" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["round", "start", MODEL, *d, "--duration", "soon"])


def test_round_policy_and_validation_set(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    d = ["--data", str(data)]
    assert main(["round", "policy", MODEL, *d, "--auto-release", "--strategy", "median"]) == 0
    policy = json.loads(capsys.readouterr().out)
    assert policy["auto_release"] is True
    assert policy["strategy"]["combiner"] == "median"
    assert main(["round", "policy", MODEL, *d, "--every", "6h", "--mode", "exact"]) == 0
    policy = json.loads(capsys.readouterr().out)
    assert (policy["every_ms"], policy["mode"]) == (6 * 3600 * 1000, "exact")
    assert main(["round", "policy", MODEL, *d, "--no-schedule", "--mode", "buffered"]) == 0
    assert json.loads(capsys.readouterr().out)["every_ms"] is None
    assert main(["round", "policy", MODEL, *d, "--every", "2h"]) == 2
    assert "buffered model has no rounds to schedule" in capsys.readouterr().err
    unlabelled = tmp_path / "x.npz"
    unlabelled.write_bytes(npz(X=np.zeros((4, 3), np.float32)))
    assert main(["round", "validation-set", MODEL, str(unlabelled), *d]) == 2
    assert "needs labels" in capsys.readouterr().err
