"""One agent per state directory, performed as an attack: a second ``edgefleet agent run`` on
the live agent's state directory, real processes and a real broker (mosquitto).

Before the lock, the second process ran slot recovery on the directory the first one was
using: it saw a model being watched, took it for a crash, rolled the record back and
deleted the package the first agent was serving. Now it must exit at once (status 1, one
line on stderr) and leave the first agent serving, its slots, packages, trusted state and
outbox exactly as they were.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from protocol.topics import Topics
from simulator.task import ShiftedTask
from tests.agent.model_hub import FleetDouble, ModelHub
from tests.brokers import BrokerRunner
from tests.integration.test_agent_run import (
    DEVICE,
    EXIT_TIMEOUT_S,
    REPO,
    free_port,
    runtime_status,
    wait_for,
    write_config,
)
from tests.packages import build_package
from tests.protocol.trust_sim import TrustSim


def agent_process(config: Path, log: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEFLEET_AGENT_")}
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "edgefleet.cli", "agent", "run", "--config", str(config)],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def snapshot(state: Path) -> dict[str, Any]:
    """What the second agent must not change: slot record, packages, trust, the outbox."""
    models = state / "models"
    uri = f"file:{state / 'agent.db'}?mode=ro"
    with sqlite3.connect(uri, uri=True) as db:
        rows = db.execute("SELECT seq, kind, frame FROM outbox ORDER BY seq").fetchall()
        meta = db.execute("SELECT key, value FROM outbox_meta ORDER BY key").fetchall()
    return {
        "slots": (models / "slots.json").read_bytes(),
        "trusted": (state / "trusted.json").read_bytes(),
        "packages": {
            p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted((models / "packages").iterdir())
        },
        "downloads": sorted(p.name for p in (models / "download").iterdir()),
        "outbox": rows,
        "outbox_meta": meta,
    }


def test_a_second_agent_on_a_live_state_directory_exits_and_changes_nothing(
    mosquitto_broker: BrokerRunner, topics: Topics, tmp_path: Path
) -> None:
    task = ShiftedTask.build(seed=0)
    built = build_package(task.model, name="shifted", version=1)
    fleet = FleetDouble(TrustSim(now=time.time_ns() // 1_000_000, device_id=DEVICE))
    fleet.assign(fleet.release(built))
    root = tmp_path / "root.json"
    root.write_bytes(fleet.sim.root_chain[0].to_bytes())
    config, port = tmp_path / "agent.toml", free_port()
    write_config(config, mosquitto_broker, topics, root, port)
    state = tmp_path / "state"

    with ModelHub(mosquitto_broker, topics, tmp_path / "hub.db", fleet, DEVICE) as hub:
        hub.publish_fleet()
        hub.publish_desired()
        first = agent_process(config, tmp_path / "first.log")
        try:
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:

                def settled() -> bool:
                    status = runtime_status(client)
                    install = status.get("install") or {}
                    return install.get("reason") == "watching" and _outbox_empty(client)

                log = tmp_path / "first.log"
                wait_for(settled, "v1 to serve, watched, its reports acked", first, log)
                before = quiet_snapshot(state)
                assert before["packages"] == {f"{built.sha256}.pkg": built.sha256}

                second = subprocess.run(
                    [
                        sys.executable,
                        "-m",
                        "edgefleet.cli",
                        "agent",
                        "run",
                        "--config",
                        str(config),
                    ],
                    cwd=REPO,
                    capture_output=True,
                    timeout=EXIT_TIMEOUT_S,
                    check=False,
                    env={k: v for k, v in os.environ.items() if not k.startswith("EDGEFLEET_")},
                )

                assert second.returncode == 1
                lines = second.stderr.decode().strip().splitlines()
                assert len(lines) == 1, second.stderr.decode()
                assert f"in use by process {first.pid}" in lines[0]
                assert "Traceback" not in second.stdout.decode() + second.stderr.decode()
                assert snapshot(state) == before
                assert first.poll() is None
                x, _ = task.sample("B", 4, np.random.default_rng(0))
                response = client.post("/predict", json={"inputs": x.tolist()})
                assert response.status_code == 200, response.text
                assert runtime_status(client)["active"]["sha256"] == built.sha256
        finally:
            first.terminate()
            assert first.wait(EXIT_TIMEOUT_S) == 0


def quiet_snapshot(state: Path, quiet_s: float = 2.0) -> dict[str, Any]:
    """A snapshot once the live agent has settled: nothing changed for ``quiet_s``
    (its learning job may still report a status change right after the install)."""
    deadline = time.monotonic() + 30
    last = snapshot(state)
    while time.monotonic() < deadline:
        time.sleep(quiet_s)
        now = snapshot(state)
        if now == last:
            return now
        last = now
    raise AssertionError("the live agent never settled")


def _outbox_empty(client: httpx.Client) -> bool:
    try:
        return bool(client.get("/status").json()["outbox"]["depth"] == 0)
    except (httpx.TransportError, KeyError, ValueError):
        return False
