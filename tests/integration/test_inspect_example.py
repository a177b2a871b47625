"""``edgefleet inspect --help``'s example, run as written against a real Mosquitto.

It used to capture with ``mosquitto_sub ... -C 1 > delta.bin``: mosquitto_sub ends each
payload with a newline, so the captured frame never verified (issue 8).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from contextlib import closing
from pathlib import Path

import paho.mqtt.publish as publish
import pytest

from hub.cli.inspect import EPILOG
from hub.store.dialects import open_store
from hub.store.rows import Device
from tests.brokers import BrokerRunner

VECTORS = Path(__file__).resolve().parents[1] / "vectors"
BIN = Path(sys.executable).parent


def example_lines() -> list[str]:
    """The epilog's first two commands (capture, then verify with the hub's data), without
    their trailing explanations."""
    lines = [line.strip() for line in EPILOG.splitlines() if line.startswith("  ")]
    return [re.split(r"\s{3,}", line)[0] for line in lines[:2]]


@pytest.mark.skipif(shutil.which("mosquitto_sub") is None, reason="needs mosquitto-clients")
def test_inspect_help_example_captures_and_verifies_a_frame(
    mosquitto_broker: BrokerRunner, tmp_path: Path
) -> None:
    [vector] = [
        v for v in json.loads((VECTORS / "index.json").read_text()) if v["kind"] == "up.delta"
    ]
    payload = (VECTORS / vector["file"]).read_bytes()
    found = re.search(rb'"device_id":"([^"]+)"', payload)
    assert found is not None
    device_id = found.group(1).decode()
    with closing(open_store(tmp_path / "hub" / "hub.db")) as store:
        store.devices.add(Device(device_id, vector["public_key"], "active", first_seen=0))
    topic = f"ef/v1/d/{device_id}/up/delta"
    publish.single(
        topic, payload, qos=1, retain=True, hostname="127.0.0.1", port=mosquitto_broker.port
    )
    capture, verify = example_lines()
    assert capture.startswith("mosquitto_sub")
    assert verify.startswith("edgefleet inspect")
    script = re.sub(r"\b1883\b", str(mosquitto_broker.port), f"{capture}\n{verify}\n")
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run(
        ["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60,
        check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"verdict: valid", result.stdout), result.stdout
    assert (tmp_path / "delta.bin").read_bytes() == payload
