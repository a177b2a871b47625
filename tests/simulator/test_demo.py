"""``edgefleet demo``: the whole loop runs to the end, and ``edgefleet sim`` runs real agents.

The demo is what ``make demo`` runs on a fresh machine; this runs the same command in a
subprocess at a small size, so a regression anywhere in the loop (enrollment, install,
drift scoring and alerts, rounds, validation, staged rollouts, retraining, ingest, REST)
fails here with the demo's own output, and checks its JSON report against the issue's
acceptance: nothing lost, every device on v2, an alert naming the drifted features and
cohort, one completed rollout of at least three stages, accuracy recovering.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from edgefleet.clock import SystemClock
from hub import keyring
from hub.api import auth
from hub.service import HubService
from hub.settings import HubSettings
from hub.transport.broker import EmbeddedBroker

REPO = Path(__file__).resolve().parents[2]
EDGEFLEET = [sys.executable, "-m", "edgefleet.cli"]
README = (REPO / "README.md").read_text()


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict[str, Any], Path]:
    """One run of ten devices, shared by the checks below: its output, report and kept dir."""
    root = tmp_path_factory.mktemp("demo")
    result = subprocess.run(
        [*EDGEFLEET, "demo", "--devices", "10", "--json-out", str(root / "report.json"),
         "--keep", str(root / "run")],
        cwd=REPO, capture_output=True, text=True, timeout=240, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout, json.loads((root / "report.json").read_text()), root / "run"


def test_demo_loses_no_message(demo: tuple[str, dict[str, Any], Path]) -> None:
    _, report, _ = demo
    messages = report["messages"]
    assert messages["lost"] == 0
    assert messages["sent"] > 0
    assert messages["delivered"] == messages["sent"]


def test_demo_ends_with_every_device_on_the_round_s_candidate(
    demo: tuple[str, dict[str, Any], Path],
) -> None:
    _, report, _ = demo
    [round_] = report["rounds"]
    assert (round_["base"], round_["candidate"]) == (1, 2)
    assert round_["deltas"] >= 1
    assert report["versions"] == {"initial": 1, "final_distribution": {"2": 10}}


def test_demo_alerts_on_the_drifted_features_in_the_drifted_cohort(
    demo: tuple[str, dict[str, Any], Path],
) -> None:
    _, report, _ = demo
    [alert] = report["drift"]["alerts"]
    assert set(alert["features"]) == {"f8", "f9"}
    # the acceptance: the alert names the drifted cohort. Once, under a loaded full suite,
    # it named region=us beside it (a misattribution noted for the drift issue)
    assert "region=eu" in alert["cohort"].split(", ")
    assert alert["score"] > 0.25  # PSI well past the alert level
    assert alert["round_requested"] is True


def test_demo_rolls_v2_out_in_three_gated_stages(demo: tuple[str, dict[str, Any], Path]) -> None:
    _, report, _ = demo
    [rollout] = report["rollouts"]
    assert (rollout["version"], rollout["outcome"]) == (2, "completed")
    assert [s["percent"] for s in rollout["stages"]] == [10, 50, 100]
    for stage in rollout["stages"]:
        assert stage["outcome"] == "passed"
        assert [g["outcome"] for g in stage["gates"] if g["metric"] == "update_success"][-1] == (
            "pass"
        )


def test_demo_accuracy_drops_with_the_drift_and_recovers_after_the_rollout(
    demo: tuple[str, dict[str, Any], Path],
) -> None:
    _, report, _ = demo
    accuracy = report["accuracy"]
    assert accuracy["after_drift"] < accuracy["before_drift"]
    assert accuracy["after_rollout"] > accuracy["after_drift"]


def test_demo_narrates_each_step_and_says_how_to_explore(
    demo: tuple[str, dict[str, Any], Path],
) -> None:
    out, report, kept = demo
    steps = ["[hub]", "[register]", "[enrol]", "[v1]", "[steady]", "[drift]", "[round]",
             "[rollout]", "[recover]", "Summary"]  # fmt: skip
    positions = [out.index(s) for s in steps]
    assert positions == sorted(positions)
    assert "ALERT alert: features f8, f9 in region=eu" in out
    assert "complete: baking stage 3 -> completed" in out
    assert "edgefleet hub serve --data" in out
    assert (kept / "hub" / "hub.db").exists()
    assert report["resources"]["cpu_s_per_device"] > 0


def test_readme_shows_lines_the_demo_prints(demo: tuple[str, dict[str, Any], Path]) -> None:
    out, _, _ = demo
    block = README.split("## What `make demo` shows", 1)[1].split("```", 2)[1]

    def steps(text: str) -> list[str]:  # from the step's name on, any number as "#"
        return [re.sub(r"\d+", "#", s[s.index("[") :]) for s in text.splitlines() if " s  [" in s]

    shown = steps(block)
    assert len(shown) >= 5, "README shows the demo's step lines"
    printed = set(steps(out))
    for line in shown:
        assert line in printed, line


def test_demo_refuses_a_fleet_too_small_for_a_cohort_in_one_line() -> None:
    result = subprocess.run(
        [*EDGEFLEET, "demo", "--devices", "1"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stdout + result.stderr


def test_sim_runs_devices_that_enrol_with_a_hub_and_stops_on_sigterm(tmp_path: Path) -> None:
    clock = SystemClock()
    settings = HubSettings(data_dir=tmp_path / "hub", http_port=0)
    ring = keyring.init(settings.keys_dir, now_ms=clock.now_ms())
    root = tmp_path / "root.json"
    root.write_bytes(ring.chain[0].to_bytes())
    with HubService.start(settings, embedded_broker=EmbeddedBroker()) as hub:
        now = clock.now_ms()
        admin = auth.create_token(hub.store, role="admin", name="t", actor="test", now_ms=now)
        token = httpx.post(
            f"{hub.http_url}/api/v1/enrollment-tokens",
            json={"kind": "fleet", "expires_in_s": 600},
            headers={"Authorization": f"Bearer {admin.token}"},
        ).json()["token"]
        sim = subprocess.Popen(
            [*EDGEFLEET, "sim", "--devices", "2", "--broker", hub.broker_url,
             "--root-metadata", str(root), "--enrollment-token", token,
             "--state", str(tmp_path / "sim")],
            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 60
            while hub.store.devices.page(status="active", online=True).total < 2:
                assert sim.poll() is None, sim.communicate()
                assert time.monotonic() < deadline, "sim devices did not enrol"
                time.sleep(0.2)
        finally:
            sim.send_signal(signal.SIGTERM)
            out, err = sim.communicate(timeout=30)
    assert sim.returncode == 0, err
    assert "sim-0: http://127.0.0.1:" in out
    assert "Traceback" not in err
