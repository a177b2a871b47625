"""Running ``edgefleet sim --scenario`` in a subprocess, as a user would, and reading its report.

Shared by the scenario, fault and remote-hub tests so each states only what it runs and
what the JSON report must show. :func:`once` runs a scenario once per test session even
when pytest-xdist spreads the tests that read it over several workers.
"""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
EDGEFLEET = [sys.executable, "-m", "edgefleet.cli"]


def sim(
    tmp_path: Path, *argv: str, timeout_s: float = 240, expect: int = 0
) -> tuple[str, dict[str, Any]]:
    """``edgefleet sim ARGV --json-out ...``: its stdout and report (``{}`` when it wrote
    none); fails the test, with the run's output, unless it exits ``expect``."""
    report = tmp_path / "report.json"
    result = subprocess.run(
        [*EDGEFLEET, "sim", *argv, "--json-out", str(report)],
        cwd=REPO, capture_output=True, text=True, timeout=timeout_s, check=False,
    )  # fmt: skip
    assert result.returncode == expect, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    return result.stdout, json.loads(report.read_text()) if report.exists() else {}


def scenario(
    tmp_path: Path, name: str, devices: int, *argv: str, timeout_s: float = 240
) -> tuple[str, dict[str, Any]]:
    """Run scenario ``name`` (a built-in or a file) with a hub in the test's process tree."""
    return sim(
        tmp_path, "--scenario", name, "--with-hub", "--devices", str(devices), *argv,
        timeout_s=timeout_s,
    )  # fmt: skip


def write(tmp_path: Path, text: str, name: str = "scenario.toml") -> str:
    """A user's scenario file; its path, as ``--scenario`` takes it."""
    path = tmp_path / name
    path.write_text(text)
    return str(path)


Run = tuple[str, dict[str, Any]]


def once(factory: pytest.TempPathFactory, name: str, run: Callable[[Path], Run]) -> Run:
    """``run`` once per session (the first worker to ask runs it under a file lock; the
    others wait and read its output and report)."""
    base = factory.getbasetemp()
    root = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    folder = root / f"sim-{name}"
    folder.mkdir(exist_ok=True)
    with (root / f"sim-{name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        out = folder / "stdout.txt"
        if not out.exists():
            text, report = run(folder)
            (folder / "result.json").write_text(json.dumps(report))
            out.write_text(text)
        found: dict[str, Any] = json.loads((folder / "result.json").read_text())
        return out.read_text(), found
