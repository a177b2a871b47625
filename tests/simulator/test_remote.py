"""``edgefleet sim --scenario`` against a hub in another process, the live table and the charts.

The hub is ``edgefleet hub serve`` with its own embedded broker, started as an operator
would (``keys init``, ``hub token create``); the simulator knows only its URLs, an admin
token and the root metadata, so the same run works against any hub, replicas included.
"""

from __future__ import annotations

import io
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image
from rich.console import Console

from simulator import hubs
from simulator.watch import PlotUnavailable, Watch, check_plot
from tests.simulator.runs import EDGEFLEET, REPO, sim, write

STEADY_WITH_A_RESTART = """
name = "steady-restart"
story = "steady"
devices = 3
duration_s = 4.0

[[faults]]
at = 1.0
kind = "broker-restart"
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture
def remote_hub(tmp_path: Path) -> Iterator[tuple[str, str, str, Path]]:
    """A hub in its own process: its URL, an admin token, its broker, its root metadata."""
    data = tmp_path / "hub"
    subprocess.run([*EDGEFLEET, "keys", "init", "--dir", str(data / "keys")], check=True,
                   capture_output=True, cwd=REPO)  # fmt: skip
    created = subprocess.run(
        [*EDGEFLEET, "hub", "token", "create", "--data", str(data), "--role", "admin",
         "--name", "sim"], check=True, capture_output=True, text=True, cwd=REPO,
    )  # fmt: skip
    token = created.stdout.split()[0]
    http, mqtt = free_port(), free_port()
    hub = subprocess.Popen(
        [*EDGEFLEET, "hub", "serve", "--data", str(data), "--embedded-broker",
         "--broker-port", str(mqtt), "--port", str(http), "--reconcile-interval", "1",
         "--rollout-tick", "0.5"],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{http}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert hub.poll() is None, hub.communicate()[1]
            try:
                if httpx.get(f"{url}/healthz").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the hub did not come up"
            time.sleep(0.2)
        yield url, token, f"mqtt://127.0.0.1:{mqtt}", data / "keys" / "root" / "1.root.json"
    finally:
        hub.terminate()
        hub.communicate(timeout=30)


def test_a_scenario_runs_against_a_hub_in_another_process_and_plots_it(
    tmp_path: Path, remote_hub: tuple[str, str, str, Path]
) -> None:
    url, token, broker, root = remote_hub
    charts = tmp_path / "charts"
    out, report = sim(
        tmp_path, "--scenario", write(tmp_path, STEADY_WITH_A_RESTART), "--hub", url,
        "--token", token, "--broker", broker, "--root-metadata", str(root), "--seed", "3",
        "--plot", str(charts), timeout_s=180,
    )  # fmt: skip
    assert report["hub"]["in_process"] is False
    assert report["online"] == report["steady"]["online"] == 3
    assert report["messages"]["lost"] == 0
    assert report["versions"]["final_distribution"] == {"1": 3}
    [skipped] = report["faults"]["events"]
    assert skipped["skipped"] == "the broker is not this process's to restart"
    assert report["resources"]["agents"]["rss_mb_per_device"] > 0
    for name in ("accuracy", "drift", "versions"):
        png = charts / f"{name}.png"
        assert f"chart: {png}" in out
        with Image.open(png) as image:
            shades = image.convert("L").histogram()
            assert sum(1 for n in shades if n) > 2  # not blank: lines and text were drawn
    assert "\x1b[" not in out  # no live table when stdout is not a terminal
    assert f"the hub at {url} keeps this run" in out
    assert "--keep" not in out  # keeping this process's files would not keep the hub's data


def test_the_live_table_shows_the_fleet_s_state_as_it_runs(tmp_path: Path) -> None:
    screen = io.StringIO()
    console = Console(file=screen, force_terminal=True, width=100)
    with hubs.in_process(tmp_path) as hub, Watch(hub.api, live=True, console=console) as watch:
        deadline = time.monotonic() + 30
        while len(watch.samples) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
    shown = screen.getvalue()
    assert len(watch.samples) >= 2
    for row in ("devices online", "versions", "messages", "rollout", "drift alerts", "round"):
        assert row in shown


def test_plot_without_matplotlib_names_the_extra_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # what an install without it sees
    with pytest.raises(PlotUnavailable, match=re.escape("pip install 'edgefleet[plot]'")):
        check_plot()
