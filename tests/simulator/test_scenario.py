"""Scenarios as data: the built-in full-loop file, and typed refusals naming the field."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from simulator.scenario import Cohort, Scenario, ScenarioError, Stage, builtin_names, load, parse

EDGEFLEET = [sys.executable, "-m", "edgefleet.cli"]


def test_the_full_loop_scenario_ships_in_the_package_and_says_what_the_demo_runs() -> None:
    assert "full-loop" in builtin_names()
    scenario = load("full-loop")
    assert scenario.devices == 50
    assert scenario.cohorts == (Cohort("eu", 0.3, "region"), Cohort("us", 0.7, "region"))
    assert (scenario.drift.cohort, scenario.drift.features) == ("eu", (8, 9))
    assert scenario.data.features >= 10
    assert [s.percent for s in scenario.rollout] == [10, 50, 100]


def test_a_user_file_states_only_what_it_changes(tmp_path: Path) -> None:
    path = tmp_path / "mine.toml"
    path.write_text('name = "mine"\ndevices = 12\n[drift]\nsd = 4.0\n')
    scenario = load(str(path))
    assert (scenario.name, scenario.devices, scenario.drift.sd) == ("mine", 12, 4.0)
    assert scenario.drift.features == Scenario("x").drift.features
    assert scenario.rollout == Scenario("x").rollout


def test_cohort_counts_cover_the_fleet_with_at_least_one_device_each() -> None:
    scenario = Scenario("x", cohorts=(Cohort("eu", 0.05), Cohort("us", 0.95)))
    assert scenario.counts(10) == {"eu": 1, "us": 9}
    assert scenario.counts(50) == {"eu": 2, "us": 48}


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ({"name": "x", "drift": {"sdd": 1.0}}, "drift.sdd: unknown key"),
        ({"name": "x", "drift": {"sd": "big"}}, "drift.sd: expected"),
        ({"name": "x", "devices": True}, "devices: expected int"),
        ({"name": "x", "colour": "red"}, "colour: unknown key"),
        ({"devices": 3}, "name:"),
        ({"name": "x", "drift": {"cohort": "mars"}}, "drift.cohort"),
        ({"name": "x", "drift": {"features": [12]}}, "drift.features"),
        ({"name": "x", "data": {"features": 4}}, "at least 10 features"),
        ({"name": "x", "cohorts": [{"value": "a", "share": 0.5}]}, "cohorts:"),
        ({"name": "x", "rollout": [{"percent": 50}]}, "last is 100"),
        ({"name": "x", "rollout": [{"percent": 100, "gates": ["vibes"]}]}, "rollout[0].gates"),
        ({"name": "x", "rollout": [{"bake_s": 1.0}]}, "rollout[0]:"),
    ],
)
def test_a_bad_field_is_refused_with_its_name(raw: dict[str, object], field: str) -> None:
    with pytest.raises(ScenarioError, match=re.escape(field)):
        parse(raw)


def test_an_unknown_name_lists_the_built_in_scenarios() -> None:
    with pytest.raises(ScenarioError, match=r"built in: .*full-loop"):
        load("no-such-scenario")


def test_stages_default_to_a_gated_10_50_100() -> None:
    assert Scenario("x").rollout == (Stage(10), Stage(50), Stage(100, bake_s=0))


def test_sim_refuses_a_scenario_without_a_hub_and_a_bad_file_in_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "bad"\n[hub]\nbucket_s = -1\n')
    for argv in (["--scenario", "full-loop"], ["--scenario", str(bad), "--with-hub"]):
        result = subprocess.run(
            [*EDGEFLEET, "sim", *argv], capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 2, result.stderr
        assert "Traceback" not in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1


def test_a_bad_model_rollout_ends_rolled_back_with_every_device_on_v1(tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    result = subprocess.run(
        [*EDGEFLEET, "sim", "--scenario", "bad-model-rollout", "--with-hub", "--devices", "8",
         "--json-out", str(report)],
        capture_output=True, text=True, timeout=180, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    found = json.loads(report.read_text())
    [rollout] = found["rollouts"]
    assert (rollout["version"], rollout["outcome"]) == (2, "rolled_back")
    first = rollout["stages"][0]
    assert first["outcome"] == "halted"
    assert [g["outcome"] for g in first["gates"]][-1] == "fail"
    assert rollout["stages"][-1]["outcome"] == "not_run"
    assert found["versions"]["final_distribution"] == {"1": 8}
    assert found["messages"]["lost"] == 0
    assert "halt: baking stage 1 -> rolling_back" in result.stdout


def test_poisoned_devices_still_give_a_released_candidate_that_beats_v1(tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    result = subprocess.run(
        [*EDGEFLEET, "sim", "--scenario", "poisoned-devices", "--with-hub", "--devices", "10",
         "--json-out", str(report)],
        capture_output=True, text=True, timeout=240, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    found = json.loads(report.read_text())
    [round_] = found["rounds"]
    assert round_["state"] == "accepted"
    assert round_["poisoned"]["devices"] == 2
    assert round_["poisoned"]["deltas_used"] >= 1  # the attack reached the aggregate
    assert round_["poisoned"]["honest_deltas_used"] >= 1
    validation = round_["judgement"]["validation"]
    assert validation["candidate_accuracy"] > validation["parent_accuracy"]
    assert found["versions"]["final_distribution"] == {"2": 10}
    assert found["accuracy"]["after_rollout"] > found["accuracy"]["after_drift"]
    assert found["messages"]["lost"] == 0
    assert "from poisoned devices" in result.stdout
