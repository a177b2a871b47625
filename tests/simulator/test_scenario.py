"""Scenarios as data: the built-in full-loop file, and typed refusals naming the field."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from simulator.scenario import (
    Cohort,
    Fault,
    Scenario,
    ScenarioError,
    Stage,
    builtin_names,
    load,
    parse,
)
from tests.simulator.runs import EDGEFLEET, scenario


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
        ({"name": "x", "drift": {"kind": "vibes"}}, "drift.kind: one of covariate, concept"),
        ({"name": "x", "faults": [{"at": 1.0, "kind": "meteor"}]}, "faults[0].kind: one of"),
        ({"name": "x", "faults": [{"kind": "agent-crash"}]}, "faults[0]:"),
        ({"name": "x", "offline": {"share": 1.0}}, "offline.share"),
        ({"name": "x", "agent": {"retrain": "yes"}}, "agent.retrain: expected bool"),
    ],
)
def test_a_bad_field_is_refused_with_its_name(raw: dict[str, object], field: str) -> None:
    with pytest.raises(ScenarioError, match=re.escape(field)):
        parse(raw)


def test_every_scenario_of_the_issue_is_built_in_and_loads() -> None:
    wanted = {"steady", "covariate-drift", "concept-drift", "bad-model-rollout", "flaky-network",
              "poisoned-devices", "offline-catchup", "full-loop"}  # fmt: skip
    assert wanted <= set(builtin_names())
    for name in wanted:
        assert load(name).name == name
    assert load("concept-drift").drift.kind == "concept"
    assert load("offline-catchup").offline.share > 0
    kinds = {f.kind for f in load("flaky-network").faults}
    assert {"disconnect-storm", "broker-restart", "corrupted-chunk"} <= kinds


def test_faults_are_a_list_of_tables_with_defaults(tmp_path: Path) -> None:
    path = tmp_path / "f.toml"
    path.write_text('name = "f"\n[[faults]]\nat = 2\nkind = "garbage-frames"\nframes = 3\n')
    [fault] = load(str(path)).faults
    assert fault == Fault(at=2.0, kind="garbage-frames", frames=3)
    assert fault.share == 0.2


def test_an_unknown_name_lists_the_built_in_scenarios() -> None:
    with pytest.raises(ScenarioError, match=r"built in: .*full-loop"):
        load("no-such-scenario")


def test_stages_default_to_a_gated_10_50_100() -> None:
    assert Scenario("x").rollout == (Stage(10), Stage(50), Stage(100, bake_s=0))


def test_sim_refuses_a_scenario_without_a_hub_and_a_bad_file_in_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "bad"\n[hub]\nbucket_s = -1\n')
    for argv in (
        ["--scenario", "full-loop"],
        ["--scenario", str(bad), "--with-hub"],
        ["--scenario", "steady", "--hub", "http://127.0.0.1:9", "--token", "t"],
        ["--scenario", "steady", "--with-hub", "--hub", "http://127.0.0.1:9"],
    ):
        result = subprocess.run(
            [*EDGEFLEET, "sim", *argv], capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 2, result.stderr
        assert "Traceback" not in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1


def test_a_bad_model_rollout_ends_rolled_back_with_every_device_on_v1(tmp_path: Path) -> None:
    out, found = scenario(tmp_path, "bad-model-rollout", 8, timeout_s=180)
    [rollout] = found["rollouts"]
    assert (rollout["version"], rollout["outcome"]) == (2, "rolled_back")
    first = rollout["stages"][0]
    assert first["outcome"] == "halted"
    assert [g["outcome"] for g in first["gates"]][-1] == "fail"
    assert rollout["stages"][-1]["outcome"] == "not_run"
    assert found["versions"]["final_distribution"] == {"1": 8}
    assert found["messages"]["lost"] == 0
    assert "halt: baking stage 1 -> rolling_back" in out


def test_poisoned_devices_still_give_a_released_candidate_that_beats_v1(tmp_path: Path) -> None:
    out, found = scenario(tmp_path, "poisoned-devices", 10)
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
    assert "from poisoned devices" in out
