"""Agent costs: how fast the outbox persists, and how fast it drains end to end.

1. Enqueue. :meth:`agent.outbox.Outbox.enqueue` (seq allocation, Ed25519 signing, one
   SQLite transaction with ``synchronous=FULL``) against a bare durable SQLite insert of
   the same bytes, timed interleaved: the ratio is what the outbox adds on top of the
   fsync that durability costs anyway.
2. Persisted and drained. A real :class:`agent.daemon.Agent` against the embedded broker
   (and Mosquitto when installed) and the hub double (``tests/agent/hub_double.py``): one
   thread sends ``MESSAGES`` state reports through :meth:`Agent.send` (each committed
   before it returns) while the pump publishes them, the hub double verifies, commits and
   acknowledges them, and the agent settles them. The rate is messages per second from
   the first send until the outbox is empty again; the median of ``TRIALS`` runs per
   broker, alternating brokers. Reported also as a fraction of the enqueue ceiling.

Predict latency and memory belong here too; their functions (for the model runtime) add
their own keys to the results dict that :func:`main` writes.

Writes ``bench/results/agent.json``; takes about a minute.
"""

from __future__ import annotations

import os
import sqlite3
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from agent.config import AgentConfig
from agent.daemon import Agent
from agent.identity import Identity, load_or_create
from agent.outbox import Outbox
from bench.common import calibrate, interleaved, report, write_result
from hub.transport.broker import EmbeddedBroker
from protocol.messages import ModelRef, StateReport
from protocol.topics import Topics
from tests.agent.hub_double import HubDouble
from tests.brokers import MosquittoBroker, find_mosquitto

MESSAGES = 2000
TRIALS = 3
DRAIN_TIMEOUT_S = 300.0
MESSAGE = StateReport(active=ModelRef("kws", 3, "ab" * 32), flags=("healthy",))


def bench_enqueue(workdir: Path, identity: Identity) -> dict[str, Any]:
    """Outbox.enqueue against a bare durable insert of a frame of the same size."""
    box = Outbox(workdir / "enqueue.db", identity)
    size = len(box.seal(MESSAGE, 0).frame)
    raw = sqlite3.connect(workdir / "raw.db", isolation_level=None)
    raw.execute("PRAGMA journal_mode=WAL")
    raw.execute("PRAGMA synchronous=FULL")
    raw.execute("CREATE TABLE t (seq INTEGER PRIMARY KEY, frame BLOB)")
    payload = os.urandom(size)

    def bare_insert() -> None:
        raw.execute("BEGIN IMMEDIATE")
        raw.execute("INSERT INTO t (frame) VALUES (?)", [payload])
        raw.execute("COMMIT")

    fns: dict[str, Callable[[], object]] = {
        "enqueue": lambda: box.enqueue(MESSAGE, 0),
        "bare_insert": bare_insert,
    }
    number = calibrate(fns["enqueue"], target_s=0.2)
    times = interleaved(fns, repeat=5, number=number)
    box.close()
    raw.close()
    return {
        "frame_bytes": size,
        "enqueue_msgs_per_s": 1 / times["enqueue"],
        "bare_insert_per_s": 1 / times["bare_insert"],
        "enqueue_vs_bare_insert": times["bare_insert"] / times["enqueue"],
    }


@contextmanager
def _broker(kind: str, workdir: Path) -> Iterator[Any]:
    if kind == "mosquitto":
        runner = MosquittoBroker(workdir / f"mosquitto-{uuid.uuid4().hex[:6]}")
        runner.start()
        try:
            yield runner
        finally:
            runner.stop()
    else:
        with EmbeddedBroker(port=0) as embedded:
            yield embedded


def drain_once(kind: str, workdir: Path) -> float:
    """Messages per second, send to settled, for one fresh agent on a fresh broker."""
    run = workdir / uuid.uuid4().hex[:8]
    run.mkdir()
    topics = Topics(f"b{run.name}/ef")
    with _broker(kind, workdir) as broker, HubDouble(broker, topics, run / "hub.db") as hub:
        config = AgentConfig(
            device_id="bench-1",
            state_dir=run / "state",
            broker_url=broker.url,
            topic_prefix=topics.prefix,
            http_port=0,
            telemetry_interval_s=3600,
            stop_grace_s=0,
        )
        agent = Agent(config, rollout_keys=lambda: [hub.public])
        agent.start()
        try:
            _wait(lambda: agent.transport.connected and agent.outbox.stats().depth == 0)
            start = time.perf_counter()
            for _ in range(MESSAGES):
                agent.send(MESSAGE)
            _wait(lambda: agent.outbox.stats().depth == 0)
            elapsed = time.perf_counter() - start
        finally:
            agent.stop()
    return MESSAGES / elapsed


def _wait(done: Callable[[], bool]) -> None:
    deadline = time.monotonic() + DRAIN_TIMEOUT_S
    while not done():
        if time.monotonic() > deadline:
            raise TimeoutError("the outbox did not drain")
        time.sleep(0.01)


def bench_drain(workdir: Path) -> dict[str, Any]:
    kinds = ["amqtt"] + (["mosquitto"] if find_mosquitto() else [])
    rates: dict[str, list[float]] = {kind: [] for kind in kinds}
    for _ in range(TRIALS):
        for kind in kinds:
            rates[kind].append(drain_once(kind, workdir))
    return {
        kind: {"msgs_per_s": statistics.median(values), "trials": values}
        for kind, values in rates.items()
    }


def main() -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-agent-") as tmp:
        workdir = Path(tmp)
        identity = load_or_create(workdir / "identity", "bench-1")
        enqueue = bench_enqueue(workdir, identity)
        drain = bench_drain(workdir)
    print(f"outbox ({enqueue['frame_bytes']}-byte state frames):")
    report("enqueue (sign + durable commit)", f"{enqueue['enqueue_msgs_per_s']:,.0f} msg/s")
    report("bare durable SQLite insert", f"{enqueue['bare_insert_per_s']:,.0f} /s")
    report("enqueue / bare insert throughput", f"{enqueue['enqueue_vs_bare_insert']:.2f}")
    for kind, result in drain.items():
        rate = result["msgs_per_s"]
        result["of_enqueue_ceiling"] = rate / enqueue["enqueue_msgs_per_s"]
        report(f"persisted and drained, {kind}", f"{rate:,.0f} msg/s")
        report(f"  as a fraction of enqueue alone, {kind}", f"{result['of_enqueue_ceiling']:.2f}")
    results = {"outbox": {"enqueue": enqueue, "persisted_and_drained": drain, "messages": MESSAGES}}
    write_result("agent", results)
    return results
