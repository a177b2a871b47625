"""``edgefleet hub serve`` as a real process: it serves, it stops cleanly, it explains itself.

Runs ``python -m edgefleet.cli hub serve`` (what the ``edgefleet`` script runs) with the
embedded broker, and against a real Mosquitto (``--broker``) with its other settings
given as ``EDGEFLEET_HUB_*`` variables; SIGTERM and SIGINT both end it with status 0.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest

from edgefleet.clock import SystemClock
from hub import keyring
from tests.brokers import BrokerRunner, free_port, mqtt_ping

REPO = Path(__file__).resolve().parents[2]
COMMAND = [sys.executable, "-m", "edgefleet.cli", "hub", "serve"]
START_S = 20.0  # the interpreter imports FastAPI, onnx... on a busy 2-core machine
STOP_S = 10.0


def keyed_data(tmp_path: Path) -> Path:
    data = tmp_path / "hub"
    keyring.init(data / "keys", now_ms=SystemClock().now_ms())
    return data


def spawn(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    with (tmp_path / "stderr.log").open("w") as stderr:  # the child keeps its own copy
        return subprocess.Popen(
            [*COMMAND, *args],
            cwd=REPO,
            env={**os.environ, **(env or {})},
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            text=True,
        )


def log(tmp_path: Path) -> str:
    return (tmp_path / "stderr.log").read_text()


def wait_healthy(process: subprocess.Popen[str], port: int, tmp_path: Path) -> None:
    deadline = time.monotonic() + START_S
    while True:
        assert process.poll() is None, f"hub serve exited {process.returncode}:\n{log(tmp_path)}"
        assert time.monotonic() < deadline, f"no /healthz in {START_S} s:\n{log(tmp_path)}"
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)


def stop(process: subprocess.Popen[str], signum: int, tmp_path: Path) -> None:
    """Send ``signum``; the hub must exit 0 within ``STOP_S``."""
    process.send_signal(signum)
    try:
        code = process.wait(STOP_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        pytest.fail(f"hub serve ignored {signal.Signals(signum).name}:\n{log(tmp_path)}")
    assert code == 0, log(tmp_path)
    assert "Traceback" not in log(tmp_path)


def test_hub_serve_with_embedded_broker_serves_and_exits_0_on_sigterm(tmp_path: Path) -> None:
    http_port, broker_port = free_port(), free_port()
    process = spawn(
        tmp_path,
        *("--data", str(keyed_data(tmp_path)), "--embedded-broker"),
        *("--broker-port", str(broker_port), "--port", str(http_port)),
    )
    try:
        wait_healthy(process, http_port, tmp_path)
        assert mqtt_ping("127.0.0.1", broker_port)
    finally:
        stop(process, signal.SIGTERM, tmp_path)
    url = f"http://127.0.0.1:{http_port}"
    assert f"hub serving {url} (dashboard {url}/ui, broker mqtt://127.0.0.1:{broker_port})" in (
        log(tmp_path)
    )


def test_hub_serve_on_mosquitto_takes_settings_from_the_environment_and_exits_0_on_sigint(
    tmp_path: Path, mosquitto_broker: BrokerRunner
) -> None:
    http_port = free_port()
    env = {
        "EDGEFLEET_HUB_DATA": str(keyed_data(tmp_path)),
        "EDGEFLEET_HUB_PORT": str(http_port),
        "EDGEFLEET_HUB_CLIENT_ID": f"hub-{uuid.uuid4().hex[:8]}",
        "EDGEFLEET_HUB_EMBEDDED_BROKER": "1",  # --broker, a flag, wins over a variable
    }
    process = spawn(tmp_path, "--broker", mosquitto_broker.url, env=env)
    try:
        wait_healthy(process, http_port, tmp_path)
    finally:
        stop(process, signal.SIGINT, tmp_path)
    assert f", broker {mosquitto_broker.url})" in log(tmp_path)


@pytest.mark.parametrize(
    ("env", "says"),
    [
        pytest.param({}, "`edgefleet keys init --dir ", id="no-keys"),
        pytest.param({"EDGEFLEET_HUB_PORT": "http"}, "EDGEFLEET_HUB_PORT", id="bad-env"),
    ],
)
def test_hub_serve_refuses_bad_settings_in_one_line_with_status_2(
    tmp_path: Path, env: dict[str, str], says: str
) -> None:
    result = subprocess.run(
        [*COMMAND, "--data", str(tmp_path / "empty"), "--broker", "mqtt://127.0.0.1:9"],
        cwd=REPO,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=START_S,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("edgefleet hub serve: error: ")
    assert says in result.stderr
    assert result.stderr.count("\n") == 1, result.stderr


def test_hub_serve_on_postgres_takes_the_database_from_the_environment_and_hides_its_password(
    tmp_path: Path, postgres_url: str
) -> None:
    """The test server trusts its users, so the password in the URL is any word: it must
    not reach the log."""
    http_port, broker_port = free_port(), free_port()
    url = postgres_url.replace("edgefleet@", "edgefleet:s3cret@")
    env = {"EDGEFLEET_HUB_DATABASE": url}
    process = spawn(
        tmp_path,
        *("--data", str(keyed_data(tmp_path)), "--embedded-broker"),
        *("--broker-port", str(broker_port), "--port", str(http_port)),
        env=env,
    )
    try:
        wait_healthy(process, http_port, tmp_path)
        assert httpx.get(f"http://127.0.0.1:{http_port}/healthz").json()["store"] is True
    finally:
        stop(process, signal.SIGTERM, tmp_path)
    assert f"hub store: {url.replace(':s3cret@', ':***@')}" in log(tmp_path)
    assert "s3cret" not in log(tmp_path)
    assert not (tmp_path / "hub" / "hub.db").exists()  # the store is the database


def test_hub_serve_with_an_unreachable_database_exits_1_in_one_line_without_its_password(
    tmp_path: Path,
) -> None:
    url = f"postgresql://hub:s3cret@127.0.0.1:{free_port()}/hub"
    result = subprocess.run(
        [*COMMAND, "--data", str(keyed_data(tmp_path)), "--database", url],
        cwd=REPO,
        env={**os.environ, "EDGEFLEET_HUB_BROKER_URL": "mqtt://127.0.0.1:9"},  # the store first
        capture_output=True,
        text=True,
        timeout=START_S,
        check=False,
    )
    assert result.returncode == 1, result.stderr
    assert result.stderr.startswith("edgefleet hub serve: error: cannot open the store at ")
    assert "hub:***@127.0.0.1" in result.stderr
    assert "s3cret" not in result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
