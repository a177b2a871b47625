"""Fixtures shared by every test: real brokers, a unique topic prefix, a fake clock.

Brokers are real (docs/architecture.md, "Brokers"): ``broker`` runs each test once against
Mosquitto and once against the embedded amqtt broker, a fresh one per test, so a test may
stop and restart it at will. Without a mosquitto executable its cases are skipped with a reason;
CI sets ``EDGEFLEET_REQUIRE_MOSQUITTO=1`` (see .ci/run) to make that a failure instead.

Two session guards keep CI honest: the ``slow`` marker must stay declared in pyproject
(``--strict-markers`` refuses undeclared ones, so a dropped declaration would break only
the slow runs), and a run in which no test passed (empty selection, or everything
skipped) fails even though pytest itself would call it a success.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from protocol.topics import Topics
from tests.brokers import BrokerRunner, EmbeddedTestBroker, MosquittoBroker, find_mosquitto
from tests.clock import FakeClock

pytest_plugins = ["tests.postgres"]  # store_url, postgres_url, postgres_server

BROKERS = ["mosquitto", "amqtt"]
REQUIRE_MOSQUITTO = "EDGEFLEET_REQUIRE_MOSQUITTO"
REQUIRED_MARKERS = ("slow",)


def pytest_configure(config: pytest.Config) -> None:
    declared = {line.split(":", 1)[0].strip() for line in config.getini("markers")}
    missing = [name for name in REQUIRED_MARKERS if name not in declared]
    if missing:
        raise pytest.UsageError(f"markers {missing} must be declared in pyproject.toml")
    config.pluginmanager.register(_PassGuard(), "edgefleet-pass-guard")


class _PassGuard:
    """Fails a session in which not a single test passed."""

    def __init__(self) -> None:
        self.passed = 0

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.when == "call" and report.passed:
            self.passed += 1

    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        if self.passed or exitstatus != pytest.ExitCode.OK or session.config.option.collectonly:
            return
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.ensure_newline()
            reporter.write_line("no test passed (none ran, or all were skipped)", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def _mosquitto(workdir: Path) -> MosquittoBroker:
    executable = find_mosquitto()
    if executable is None:
        reason = "mosquitto not found on PATH or at /usr/sbin/mosquitto"
        if os.environ.get(REQUIRE_MOSQUITTO) == "1":
            pytest.fail(f"{reason}, and {REQUIRE_MOSQUITTO}=1 requires it")
        pytest.skip(f"{reason} (apt-get install mosquitto)")
    return MosquittoBroker(workdir, executable=executable)


def _run(kind: str, tmp_path: Path) -> Iterator[BrokerRunner]:
    runner = _mosquitto(tmp_path / "mosquitto") if kind == "mosquitto" else EmbeddedTestBroker()
    with runner:
        yield runner


@pytest.fixture(params=BROKERS, ids=BROKERS)
def broker(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[BrokerRunner]:
    """A fresh running broker: once Mosquitto, once the embedded amqtt broker."""
    yield from _run(request.param, tmp_path)


@pytest.fixture
def mosquitto_broker(tmp_path: Path) -> Iterator[BrokerRunner]:
    """A fresh running Mosquitto (skipped, or failed in CI, when it is not installed)."""
    yield from _run("mosquitto", tmp_path)


@pytest.fixture
def embedded_broker(tmp_path: Path) -> Iterator[BrokerRunner]:
    """A fresh running embedded amqtt broker, in this process."""
    yield from _run("amqtt", tmp_path)


@pytest.fixture
def topics() -> Topics:
    """Topics under a prefix of their own, so no test sees another's retained messages."""
    return Topics(prefix=f"t{uuid.uuid4().hex[:12]}/ef")


@pytest.fixture
def clock() -> FakeClock:
    """A clock at 2026-11-23T00:00:00Z that moves only on ``advance``/``set``."""
    return FakeClock()
