"""``edgefleet demo``: the whole loop runs to the end, and ``edgefleet sim`` runs real agents.

The demo is what ``make demo`` runs on a fresh machine; this runs the same command in a
subprocess, so a regression anywhere in the loop (enrollment, rollout, install,
inference, retraining, deltas, sketches, REST) fails here with the demo's own output.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from edgefleet.clock import SystemClock
from hub import keyring
from hub.api import auth
from hub.service import HubService
from hub.settings import HubSettings
from hub.transport.broker import EmbeddedBroker

REPO = Path(__file__).resolve().parents[2]
EDGEFLEET = [sys.executable, "-m", "edgefleet.cli"]


def test_demo_runs_the_whole_loop_and_reports_each_step(tmp_path: Path) -> None:
    result = subprocess.run(
        [*EDGEFLEET, "demo", "--devices", "2", "--keep", str(tmp_path / "run")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    for step in ("[keys]", "[hub]", "[register]", "[enrol]", "[roll out]", "[infer]"):
        assert step in out
    assert out.count("holdout accuracy") == 2
    assert out.count("runs shifted v1, health ok") == 2
    assert "Not built yet" in out  # it says what is missing rather than pretending
    assert "/ui   sign in with the viewer token efh_" in out
    assert (tmp_path / "run" / "hub" / "hub.db").exists()


def test_demo_refuses_a_fleet_of_zero_in_one_line() -> None:
    result = subprocess.run(
        [*EDGEFLEET, "demo", "--devices", "0"], capture_output=True, text=True, timeout=60
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
