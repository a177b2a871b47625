"""A real PostgreSQL server for the tests: one per xdist worker, in a temporary directory.

Fixtures (registered for every test by ``pytest_plugins`` in tests/conftest.py):

- ``store_url``: parametrized ``sqlite`` / ``postgresql``, a fresh store location of each
  dialect (a SQLite file path, or the URL of a new migrated database): for behaviour tests
  that must pass on both stores, as ``broker`` runs them on both brokers;
- ``database``: the same as ``HubSettings.database``: "" (SQLite in the data directory)
  or a PostgreSQL URL, for tests that run the whole hub (``HubService``, the pipeline);
- ``postgres_url``: a new migrated database's URL alone (PostgreSQL-only tests);
- ``postgres_server``: the worker's server (its ``url(name)``, ``create_database()``).

Without PostgreSQL's programs the PostgreSQL cases are skipped with a reason; CI sets
``EDGEFLEET_REQUIRE_POSTGRES=1`` (see .ci/run) to make that a failure instead.

``initdb`` refuses to run as root, so as root the server's files belong to the ``postgres``
user and its programs run through ``runuser -u postgres --``. It listens on a free TCP port
on 127.0.0.1 (trust authentication: the tests' own throwaway cluster) and keeps its unix
socket in its own directory, never in /var/run/postgresql. ``fsync=off``: a test cluster
need not survive a power cut.

Each test gets a database of its own, made by ``CREATE DATABASE ... TEMPLATE`` from one
migrated template: a copy costs a few milliseconds, migrating costs more.
"""

from __future__ import annotations

import glob
import itertools
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tests.brokers import free_port

SUPERUSER = "edgefleet"
TEMPLATE = "edgefleet_template"
REQUIRE_POSTGRES = "EDGEFLEET_REQUIRE_POSTGRES"
DIALECTS = ["sqlite", "postgresql"]


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One server per xdist worker, with a migrated template database."""
    bin_dir = find_bin_dir()
    if bin_dir is None:
        reason = "PostgreSQL's initdb is not installed"
        if os.environ.get(REQUIRE_POSTGRES) == "1":
            pytest.fail(f"{reason}, and {REQUIRE_POSTGRES}=1 requires it")
        pytest.skip(reason)
    server = PostgresServer(Path(tempfile.mkdtemp(prefix="edgefleet-pg-")), bin_dir)
    try:
        server.start()
        server.make_template()
        yield server
    finally:
        server.stop()


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> Iterator[str]:
    """A new database, migrated (a copy of the template), dropped after the test."""
    url = postgres_server.create_database(template=TEMPLATE)
    yield url
    postgres_server.drop_database(url)


@pytest.fixture(params=DIALECTS)
def database(request: pytest.FixtureRequest) -> str:
    """``HubSettings.database`` of each dialect: "" (SQLite in the data directory, the
    default) or the URL of a new migrated PostgreSQL database; for whole-hub tests."""
    if request.param == "sqlite":
        return ""
    url: str = request.getfixturevalue("postgres_url")
    return url


@pytest.fixture(params=DIALECTS)
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh store location of each dialect, for :func:`hub.store.dialects.open_store`."""
    if request.param == "sqlite":
        return str(tmp_path / "hub.db")
    url: str = request.getfixturevalue("postgres_url")
    return url


def find_bin_dir() -> Path | None:
    """The newest PostgreSQL server's bin directory, or None when none is installed."""
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=_major, reverse=True)
    for found in candidates:
        if (Path(found) / "initdb").exists():
            return Path(found)
    initdb = shutil.which("initdb")
    return Path(initdb).resolve().parent if initdb else None


def _major(path: str) -> int:
    version = Path(path).parent.name
    return int(version) if version.isdigit() else 0


class PostgresServer:
    """``initdb`` + ``postgres`` in ``workdir``, stopped by :meth:`stop`."""

    def __init__(self, workdir: Path, bin_dir: Path) -> None:
        self.workdir = workdir
        self.bin_dir = bin_dir
        self.data = workdir / "data"
        self.sockets = workdir / "sockets"
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self._names = itertools.count(1)

    def _as_owner(self, *argv: str) -> list[str]:
        if os.geteuid() == 0:
            return ["runuser", "-u", "postgres", "--", *argv]
        return list(argv)

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.sockets.mkdir(exist_ok=True)
        if os.geteuid() == 0:  # a directory in /tmp, which postgres can reach
            shutil.chown(self.workdir, "postgres")
            shutil.chown(self.sockets, "postgres")
            self.workdir.chmod(0o755)
        subprocess.run(
            self._as_owner(
                str(self.bin_dir / "initdb"),
                "-D",
                str(self.data),
                "-U",
                SUPERUSER,
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",
            ),
            check=True,
            capture_output=True,
        )
        log = (self.workdir / "postgres.log").open("wb")
        self.process = subprocess.Popen(
            self._as_owner(
                str(self.bin_dir / "postgres"),
                "-D",
                str(self.data),
                "-p",
                str(self.port),
                "-h",
                "127.0.0.1",
                "-k",
                str(self.sockets),
                "-c",
                "fsync=off",
                "-c",
                "synchronous_commit=off",
                "-c",
                "full_page_writes=off",
                "-c",
                "max_connections=200",
            ),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                with psycopg.connect(self.url("postgres"), connect_timeout=2):
                    return
            except psycopg.OperationalError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        "postgres did not start: "
                        + (self.workdir / "postgres.log").read_text(errors="replace")[-2000:]
                    ) from None
                time.sleep(0.1)

    def url(self, database: str) -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def create_database(self, template: str | None = None) -> str:
        """A new empty database (or a copy of ``template``); its URL."""
        name = f"t{os.getpid()}_{next(self._names)}"
        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            source = f" TEMPLATE {template}" if template else ""
            conn.execute(f"CREATE DATABASE {name}{source}")  # names made here, never input
        return self.url(name)

    def make_template(self) -> None:
        """The template every test's database copies: migrated once, then closed."""
        from hub.store.postgres.store import PostgresStore

        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {TEMPLATE}")
        PostgresStore.open(self.url(TEMPLATE)).close()

    def drop_database(self, url: str) -> None:
        name = url.rsplit("/", 1)[1]
        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            # pg_ctl signals the postmaster itself (runuser in between may not pass it on)
            subprocess.run(
                self._as_owner(
                    str(self.bin_dir / "pg_ctl"), "stop", "-D", str(self.data), "-m", "immediate"
                ),
                check=False,
                capture_output=True,
            )
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.workdir, ignore_errors=True)
