"""``edgefleet agent run --config FILE`` as a real process: the whole device agent against
the model hub double over a real broker (both brokers).

Only public surfaces are used: the agent.toml, the local HTTP API (httpx) and what the
hub double commits. The fleet documents and the desired state are published, retained,
before the agent starts, so it meets them in whatever order the broker delivers them.
The model installs; 200 predict calls of 2 rows end the install's watch window; the labels go
back through ``/feedback``; the retrain job's delta and the data windows reach the hub;
``/status`` shows the version and how retraining stands; SIGTERM exits 0 after
reporting the device offline.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from protocol.messages import DataDelta, DeltaUpload
from protocol.topics import Topics
from simulator.task import ShiftedTask
from tests.agent.model_hub import FleetDouble, ModelHub
from tests.brokers import BrokerRunner
from tests.packages import build_package
from tests.protocol.trust_sim import TrustSim

DEVICE = "dev-1"
CALLS, ROWS = 200, 2  # 400 rows: past the default watch window (200 rows)
EXIT_TIMEOUT_S = 20
REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def write_config(path: Path, broker: BrokerRunner, topics: Topics, root: Path, port: int) -> None:
    values: dict[str, Any] = {
        "device_id": DEVICE,
        "state_dir": str(path.parent / "state"),
        "broker_url": broker.url,
        "topic_prefix": topics.prefix,
        "root_metadata": str(root),
        "http_port": port,
        "telemetry_interval_s": 3600.0,
        "drain_interval_s": 0.1,
        "stop_grace_s": 1.0,
        "retrain_interval_s": 0.5,
        "window_s": 1.0,
    }
    path.write_text("".join(f"{k} = {_toml(v)}\n" for k, v in values.items()), encoding="utf-8")


def _toml(value: Any) -> str:
    return f'"{value}"' if isinstance(value, str) else repr(value)


def wait_for(
    condition: Callable[[], bool], what: str, process: subprocess.Popen[bytes], log: Path
) -> None:
    """Wait up to 30 s; a failure shows the end of the agent's log."""
    deadline = time.monotonic() + 30
    while not condition():
        tail = log.read_text(encoding="utf-8", errors="replace")[-3000:]
        assert process.poll() is None, f"the agent exited with {process.returncode}:\n{tail}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}:\n{tail}"
        time.sleep(0.1)


def runtime_status(client: httpx.Client) -> dict[str, Any]:
    """The ``runtime`` part of ``GET /status``; empty while the agent is not listening."""
    try:
        response = client.get("/status")
    except httpx.TransportError:
        return {}
    assert response.status_code == 200
    runtime: dict[str, Any] = response.json().get("runtime", {})
    return runtime


def test_edgefleet_agent_run_installs_serves_learns_and_exits_cleanly_on_sigterm(
    broker: BrokerRunner, topics: Topics, tmp_path: Path
) -> None:
    task = ShiftedTask.build(seed=0)
    built = build_package(task.model, name="shifted", version=1)
    fleet = FleetDouble(TrustSim(now=time.time_ns() // 1_000_000, device_id=DEVICE))
    fleet.assign(fleet.release(built))
    root = tmp_path / "root.json"
    root.write_bytes(fleet.sim.root_chain[0].to_bytes())
    config, port = tmp_path / "agent.toml", free_port()
    write_config(config, broker, topics, root, port)
    log = tmp_path / "agent.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEFLEET_AGENT_")}

    with ModelHub(broker, topics, tmp_path / "hub.db", fleet, DEVICE) as hub:
        hub.publish_fleet()
        hub.publish_desired()
        with log.open("wb") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", "edgefleet.cli", "agent", "run", "--config", str(config)],
                cwd=REPO,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        try:
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
                wait_for(
                    lambda: (runtime_status(client).get("active") or {}).get("version") == 1,
                    "version 1 to serve",
                    process,
                    log,
                )
                x, y = task.sample("B", CALLS * ROWS, np.random.default_rng(1))
                ids: list[str] = []
                for batch in np.split(x, CALLS):
                    response = client.post("/predict", json={"inputs": batch.tolist()})
                    assert response.status_code == 200, response.text
                    body = response.json()
                    assert np.asarray(body["outputs"]).shape == (ROWS, task.n_classes)
                    ids.extend(body["ids"])
                labels = dict(zip(ids, y.tolist(), strict=True))
                response = client.post("/feedback", json={"labels": labels})
                assert response.status_code == 200, response.text
                assert response.json() == {"accepted": ids, "unknown": []}

                hub.double.wait_until(lambda h: bool(h.messages(DEVICE, "delta")))
                wait_for(
                    lambda: runtime_status(client)["retrain"].startswith("retrained: "),
                    "the retrained head to serve",
                    process,
                    log,
                )
                status = runtime_status(client)
                assert status["active"] == {"name": "shifted", "version": 1, "sha256": built.sha256}
                assert status["labelled"] == CALLS * ROWS

            def windowed(h: Any) -> int:
                windows = [e.message for e in h.messages(DEVICE, "data")]
                return sum(w.inference_count for w in windows if isinstance(w, DataDelta))

            hub.double.wait_until(lambda h: windowed(h) == CALLS * ROWS)  # rows, not calls
            (delta,) = [e.message for e in hub.double.messages(DEVICE, "delta")]
            assert isinstance(delta, DeltaUpload)
            assert (delta.base, delta.num_samples) == (built.ref, 300)

            process.send_signal(signal.SIGTERM)
            assert process.wait(EXIT_TIMEOUT_S) == 0
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
        last = hub.states()[-1]
    output = log.read_text(encoding="utf-8", errors="replace")
    assert "Traceback" not in output, output
    assert last.active == built.ref
    assert "offline" in last.flags
    assert last.retrain.startswith("retrained: ")
