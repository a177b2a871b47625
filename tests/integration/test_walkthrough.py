"""docs/cli.md's walkthrough, run as it is written, in separate OS processes.

The shell blocks between ``<!-- walkthrough -->`` and ``<!-- /walkthrough -->`` are joined
into one bash script; the only change is what the page itself names as replaceable: the
ports (1883 the broker, 8080 the hub, 8471-8473 the agents) become free ones, and the
broker is a real Mosquitto started here, as the page asks the reader to start one. bash
starts ``hub serve`` and three ``agent run`` in the background and runs the operator's
commands in ``--hub`` mode from another working directory, five ``rollout set`` among
them while the hub runs. Then every device must come to run the version set last for it.

Issue 8: before, the CLI published downlink frames itself, reserving sequence numbers of
its own; five such runs beside a hub stranded a device's downlink replay window.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.brokers import BrokerRunner, free_port

DOCS = Path(__file__).resolve().parents[2] / "docs" / "cli.md"
BIN = Path(sys.executable).parent
SCRIPT_TIMEOUT_S = 60.0
CONVERGE_TIMEOUT_S = 45.0
EXPECTED = {"pump-1": 2, "pump-2": 1, "pump-3": 2}
"""The last ``rollout set`` of each device in the walkthrough."""


def walkthrough_script() -> str:
    """The fenced ``sh`` blocks of the marked section, in order."""
    text = DOCS.read_text()
    section = text.split("<!-- walkthrough -->", 1)[1].split("<!-- /walkthrough -->", 1)[0]
    blocks = re.findall(r"^```sh\n(.*?)^```$", section, re.M | re.S)
    assert len(blocks) >= 3, "the walkthrough lost its shell blocks"
    return "\n".join(blocks)


def substitute(script: str, ports: dict[int, int]) -> str:
    """The page's ports replaced by ``ports`` (whole numbers only)."""
    for old, new in ports.items():
        script = re.sub(rf"\b{old}\b", str(new), script)
    return script


@pytest.fixture
def running(mosquitto_broker: BrokerRunner, tmp_path: Path) -> Iterator[dict[str, Any]]:
    """The walkthrough's script started in ``tmp_path``; everything it started is
    stopped (SIGTERM to its process group) at the end."""
    hub_port = free_port()
    ports = {1883: mosquitto_broker.port, 8080: hub_port}
    ports |= {8470 + n: free_port() for n in (1, 2, 3)}
    script = "set -euo pipefail\n" + substitute(walkthrough_script(), ports)
    (tmp_path / "walkthrough.sh").write_text(script)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("EDGEFLEET_")},
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "TMPDIR": str(tmp_path),  # where `cd "$(mktemp -d)"` takes the operator
    }
    log = (tmp_path / "walkthrough.log").open("w")
    process = subprocess.Popen(
        ["bash", "walkthrough.sh"],
        cwd=tmp_path,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: the background jobs too
    )
    try:
        yield {
            "process": process,
            "hub": f"http://127.0.0.1:{hub_port}",
            "agent": f"http://127.0.0.1:{ports[8471]}",
            "root": tmp_path,
        }
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        time.sleep(1.0)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
        log.close()


def _log(root: Path) -> str:
    return (root / "walkthrough.log").read_text()[-4000:]


def test_walkthrough_runs_verbatim_and_every_device_runs_the_version_set_last(
    running: dict[str, Any],
) -> None:
    process, root = running["process"], running["root"]
    deadline = time.monotonic() + SCRIPT_TIMEOUT_S
    while process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    # the background jobs keep the group alive; the script itself has ended
    assert process.returncode == 0, f"the walkthrough failed:\n{_log(root)}"
    assert "pump-1" in _log(root), "`hub device list` printed no device"

    reported: dict[str, Any] = {}
    with httpx.Client(base_url=running["hub"], timeout=5) as http:
        headers = {"Authorization": f"Bearer {viewer_token(root)}"}
        deadline = time.monotonic() + CONVERGE_TIMEOUT_S
        while time.monotonic() < deadline:
            devices = http.get("/api/v1/devices", headers=headers).json()["items"]
            reported = {d["id"]: (d["active"] or {}).get("version") for d in devices}
            if reported == EXPECTED:
                break
            time.sleep(0.5)
        twins = {d: http.get(f"/api/v1/devices/{d}/twin", headers=headers).json() for d in EXPECTED}
    assert reported == EXPECTED, f"{json.dumps(twins, indent=1)[:3000]}\n{_log(root)}"
    assert all(t["in_sync"] for t in twins.values())
    check_local_api_as_documented(running["agent"])


def check_local_api_as_documented(agent: str) -> None:
    """The page's ``/predict`` and ``/feedback`` bodies, sent to pump-1: the answers have
    the fields the page shows."""
    text = DOCS.read_text()
    shown = [json.loads(line[2:]) for line in text.splitlines() if line.startswith("# {")]
    predict_shown, feedback_shown = shown[0], shown[1]
    inputs = json.loads(re.search(r"/predict -d '(.*)'", text).group(1))  # type: ignore[union-attr]
    with httpx.Client(base_url=agent, timeout=10) as http:
        predicted = http.post("/predict", json=inputs).json()
        assert set(predicted) == set(predict_shown), predicted
        assert len(predicted["ids"]) == len(predicted["outputs"]) == len(inputs["inputs"])
        assert len(predicted["outputs"][0]) == len(predict_shown["outputs"][0])
        labels = {"labels": {predicted["ids"][0]: 0, predicted["ids"][1]: 2}}
        answered = http.post("/feedback", json=labels).json()
        assert set(answered) == set(feedback_shown), answered
        assert sorted(answered["accepted"]) == sorted(predicted["ids"])


def viewer_token(root: Path) -> str:
    """A viewer token for the test's own reads, made as the walkthrough made its own."""
    result = subprocess.run(
        [str(BIN / "edgefleet"), "hub", "token", "create", "--data", "hub/", "--role", "viewer"],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return result.stdout.strip()
