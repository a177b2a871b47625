"""Hub replicas as real ``edgefleet hub serve`` subprocesses on one store, one key ring and
one artifacts directory, sharing the uplink through ``$share`` on a real Mosquitto
(docs/scale-out.md). Each replica has a data directory of its own; a test can kill -9 one.

    shared = Shared.create(tmp_path)
    with Replica.start(shared, "r1", broker, topics) as r1, ...:
        r1.role()  # "leader" or "follower", from its /healthz
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Self

import httpx

from hub import keyring
from hub.keyring import Keyring
from protocol.topics import Topics
from tests.brokers import BrokerRunner

READY_S = 60.0  # a replica starts in a few seconds; a loaded 2-core machine took 30
GROUP = "edgefleet-hubs"
_SERVING = re.compile(r"hub serving (http://\S+)")


@dataclass(frozen=True)
class Shared:
    """What every replica shares: the store, the key ring, the artifacts under ``root``.
    ``database`` "" is one SQLite file in ``root`` (replicas on one machine); else a
    PostgreSQL URL (the ``database`` fixture's)."""

    root: Path
    ring: Keyring
    database_url: str = ""

    @classmethod
    def create(cls, root: Path, database: str = "", *, now_ms: int | None = None) -> Shared:
        now = time.time_ns() // 1_000_000 if now_ms is None else now_ms
        return cls(root, keyring.init(root / "keys", now_ms=now), database)

    @property
    def database(self) -> str:
        """The store's location, as ``--database`` takes it."""
        return self.database_url or f"sqlite:///{self.root / 'hub.db'}"

    @property
    def artifacts(self) -> Path:
        return self.root / "artifacts"


@dataclass
class Replica:
    """One ``hub serve`` replica process; its stderr is kept in ``log``."""

    name: str
    process: subprocess.Popen[str]
    url: str
    log: list[str] = field(default_factory=list)

    @classmethod
    def start(
        cls,
        shared: Shared,
        name: str,
        broker: BrokerRunner,
        topics: Topics,
        *extra: str,
    ) -> Replica:
        """Start replica ``name`` and wait until it serves REST (its uplink is subscribed)."""
        command = [
            *(sys.executable, "-m", "edgefleet", "hub", "serve"),
            *("--data", str(shared.root / name), "--broker", broker.url),
            *("--topic-prefix", topics.prefix, "--port", "0"),
            *("--database", shared.database, "--keys", str(shared.root / "keys")),
            *("--artifacts", str(shared.artifacts), "--replica-group", GROUP),
            *("--replica-id", name),
            *extra,
        ]
        process = subprocess.Popen(
            command,
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            text=True,
            cwd=Path(__file__).resolve().parents[2],
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        assert process.stderr is not None
        log: list[str] = []
        found: list[str] = []
        ready = threading.Event()
        threading.Thread(
            target=_follow, args=(process.stderr, log, found, ready), daemon=True
        ).start()
        if not ready.wait(READY_S) or not found:
            process.kill()
            process.wait()
            raise AssertionError(f"replica {name} did not serve:\n" + "".join(log[-30:]))
        return cls(name, process, found[0], log)

    def health(self) -> dict[str, object]:
        answer: dict[str, object] = httpx.get(f"{self.url}/healthz", timeout=5).json()
        return answer

    def role(self) -> str:
        return str(self.health()["role"])

    def counter(self, name: str, token: str) -> float:
        """The sum of every sample of counter ``name`` on this replica's ``/metrics``."""
        text = httpx.get(
            f"{self.url}/metrics", headers={"authorization": f"Bearer {token}"}, timeout=5
        ).text
        return sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith(f"{name}_total")
        )

    def kill(self) -> None:
        """kill -9: no lease released, no batch finished, no ack sent."""
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _follow(stream: IO[str], log: list[str], found: list[str], ready: threading.Event) -> None:
    for line in stream:
        log.append(line)
        if not found and (match := _SERVING.search(line)):
            found.append(match.group(1))
            ready.set()
    ready.set()  # the process ended
