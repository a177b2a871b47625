"""The issue's scenarios end as they must, at a small size, read from their JSON reports.

``offline-catchup``: agents stopped during a rollout come back and converge. ``flaky-network``:
connection storms, a broker restart and damaged chunks during a rollout, and nothing lost.
``covariate-drift`` / ``concept-drift``: the hub alerts on the drifted cohort (a feature
alert for moved readings, a performance alert for moved labels).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.simulator.runs import Run, once, scenario


@pytest.fixture(scope="module")
def flaky(tmp_path_factory: pytest.TempPathFactory) -> Run:
    return once(tmp_path_factory, "flaky", lambda tmp: scenario(tmp, "flaky-network", 8))


def converged(report: dict[str, Any], devices: int, version: int) -> None:
    """Every device on ``version`` and online, the rollout completed, nothing lost."""
    assert report["versions"]["final_distribution"] == {str(version): devices}
    assert report["online"] == devices
    [rollout] = report["rollouts"]
    assert rollout["outcome"] == "completed"
    messages = report["messages"]
    assert messages["lost"] == 0
    assert messages["delivered"] == messages["sent"] > 0


def test_offline_devices_catch_up_with_a_rollout_and_nothing_is_lost(tmp_path: Path) -> None:
    out, report = scenario(tmp_path, "offline-catchup", 8)
    converged(report, 8, 2)
    stopped, started = report["faults"]["events"]
    assert (stopped["kind"], stopped["phase"]) == ("offline", "stopped")
    assert started["phase"] == "started"
    assert len(stopped["devices"]) == 2  # 20% of 8
    assert "the hub sees them offline" in out
    assert out.index("[offline]") < out.index("[rollout]")


def test_a_flaky_network_loses_nothing_and_every_device_converges(flaky: Run) -> None:
    _, report = flaky
    converged(report, 8, 2)
    assert report["messages"]["duplicates_dropped"] >= 1  # resent after the cuts, stored once


def test_disconnect_storms_cut_connections_and_the_devices_reconnect(flaky: Run) -> None:
    _, report = flaky
    storms = [e for e in report["faults"]["events"] if e["kind"] == "disconnect-storm"]
    assert len(storms) == 4
    relay = report["faults"]["relay"]
    assert relay["cut"] == sum(e["connections_cut"] for e in storms) >= 3
    assert relay["connections"] >= 8 + relay["cut"]  # each cut session came back


def test_the_broker_restarts_mid_rollout_on_its_port(flaky: Run) -> None:
    _, report = flaky
    phases = [e["phase"] for e in report["faults"]["events"] if e["kind"] == "broker-restart"]
    assert phases == ["stopped", "started"]


def test_a_corrupted_chunk_is_refused_and_fetched_again(flaky: Run) -> None:
    _, report = flaky
    assert report["faults"]["relay"]["chunks_corrupted"] >= 1
    refused = sum(n for k, n in report["downlink"].items() if k.startswith("refused"))
    assert refused >= 1  # the damaged frame failed its check on the device...
    assert report["versions"]["final_distribution"] == {"2": 8}  # ...and it got v2 anyway


@pytest.mark.parametrize(("name", "kind"), [("covariate-drift", "drift"),
                                            ("concept-drift", "performance")])  # fmt: skip
def test_drift_in_one_cohort_raises_the_hub_s_alert_on_it(
    tmp_path: Path, name: str, kind: str
) -> None:
    _, report = scenario(tmp_path, name, 6)
    [alert] = report["drift"]["alerts"]
    assert alert["kind"] == kind
    assert "region=eu" in alert["cohort"].split(", ")
    if kind == "drift":
        assert set(alert["features"]) == {"f8", "f9"}
    else:  # the readings did not move: no input test can name a feature
        assert alert["features"] == []
    accuracy = report["accuracy"]
    assert accuracy["after_drift"] < accuracy["before_drift"]
    assert report["versions"]["final_distribution"] == {"1": 6}
    assert report["messages"]["lost"] == 0
