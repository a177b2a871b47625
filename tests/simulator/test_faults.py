"""Scripted faults on a steady fleet, from a user's scenario file: each one happens, the
fleet survives it, and the report shows its effect.

One run of six devices carries garbage frames, an agent crash and a clock skew (the
network faults, storms, a broker restart and damaged chunks, are in ``flaky-network``:
tests/simulator/test_stories.py).
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.simulator.runs import Run, once, scenario, write

FAULTS = """
name = "faults"
story = "steady"
devices = 6
duration_s = 18.0

[data]
rows_per_s = 40   # fills v1's watch window (200 rows) in 5 s: a crash while a new model
                  # is watched rolls it back (the agent's crash-loop guard), not tested here

[agent]
window_s = 2.0
telemetry_s = 2.0
retrain = false

[[faults]]
at = 1.0
kind = "garbage-frames"
share = 0.34
frames = 4

[[faults]]
at = 7.0
kind = "agent-crash"
share = 0.34
down_s = 2.0

[[faults]]
at = 10.0
kind = "clock-skew"
share = 0.2
skew_s = 300.0
down_s = 1.0
"""


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    return once(tmp_path_factory, "faults", lambda tmp: scenario(tmp, write(tmp, FAULTS), 6))


def events(report: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [e for e in report["faults"]["events"] if e["kind"] == kind]


def test_the_fleet_survives_every_fault_online_and_losing_nothing(run: Run) -> None:
    _, report = run
    assert report["online"] == 6
    assert report["steady"]["online"] == 6
    assert report["messages"]["lost"] == 0
    assert report["versions"]["final_distribution"] == {"1": 6}
    assert not [e for e in report["faults"]["events"] if "error" in e]


def test_garbage_frames_are_counted_rejected_by_the_hub(run: Run) -> None:
    _, report = run
    [garbage] = events(report, "garbage-frames")
    assert len(garbage["devices"]) == 2
    assert garbage["frames_published"] == 8
    assert report["messages"]["rejected"] >= 8


def test_a_crashed_agent_restarts_from_its_state_and_resends_what_was_in_flight(
    run: Run,
) -> None:
    _, report = run
    stopped, started = events(report, "agent-crash")
    assert stopped["devices"] == started["devices"]
    assert len(stopped["devices"]) == 2
    assert report["messages"]["delivered"] == report["messages"]["sent"]


def test_a_skewed_clock_shows_in_the_hub_s_skew_and_the_device_carries_on(run: Run) -> None:
    _, report = run
    _, started = events(report, "clock-skew")
    assert started["skew_s"] == 300.0
    assert report["hub"]["frames_a_minute_ahead"] >= 1
