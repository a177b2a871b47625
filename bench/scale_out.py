"""Hub replicas' ingest throughput: 1, 2 and 3 replicas on one shared store, against one
hub alone on its own SQLite file, in the same run (docs/scale-out.md).

Setup: one Mosquitto (``$share`` needs it: the embedded broker has no shared
subscriptions, so without Mosquitto this benchmark is skipped), ``DEVICES`` enrolled
devices, every frame signed before any timing. Each replica is ``python -m
hub.ingest.pipeline --database LOCATION --replica-group G`` in a process of its own (its own
interpreter and GIL: the ingest path of ``hub serve``, without REST and the scheduler,
which a replica runs beside it). Every configuration listens under its own topic prefix,
all processes start before the first trial, and :func:`bench.common.interleaved` rotates
the configurations through ``TRIALS`` trials each, so a busy patch of the shared machine
hits all of them alike.

Configurations: ``sqlite`` (the baseline: one hub, no replica group, its own file),
``sqlite-shared xN`` (N replicas on one SQLite file: what runs on one machine), and
``postgres xN`` when ``EDGEFLEET_BENCH_POSTGRES`` holds a PostgreSQL URL (an empty
database the benchmark may write; once branch ``pg`` has landed).

A trial publishes ``MESSAGES`` QoS 1 frames from ``DEVICES`` publishers and ends when
the store holds all of them (a count of the telemetry rows). Reported per configuration:
frames committed per second, the ratio to the baseline, and CPU microseconds per frame
of the replicas together, of the broker and of the publishers (this process), medians
over the trials; then the projection for N replicas on N machines (see :func:`project`),
written beside the measurement in ``bench/results/scale_out.json``.
"""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import tempfile
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bench.common import interleaved, report, write_result
from bench.hub import MESSAGES, Stream, _broker_process, _cpu_s, _spawn, _wait
from hub.fleet import enrollment
from hub.store import Store
from hub.store.dialects import open_store
from hub.store.rows import TelemetryRecord
from protocol import keys
from protocol.topics import Topics
from tests.brokers import MosquittoBroker, find_mosquitto

DEVICES = 10  # divides MESSAGES: bench.hub.Stream signs MESSAGES // DEVICES per device
TRIALS = 3
REPLICAS = (1, 2, 3)
POSTGRES_ENV = "EDGEFLEET_BENCH_POSTGRES"


@dataclass
class Config:
    """One configuration: its replicas' processes, its store and its topic prefix."""

    name: str
    replicas: int
    location: str
    topics: Topics
    processes: list[psutil.Process] = field(default_factory=list)
    cpu_us: dict[str, list[float]] = field(default_factory=dict)
    store: Store | None = None  # the bench's own connection, to count what is stored

    def stored(self) -> int:
        if self.store is None:
            self.store = open_store(self.location)
        return self.store.uplink.count(TelemetryRecord)  # trials run one at a time


def _prepare(location: str, device_keys: list[Ed25519PrivateKey]) -> None:
    """Enroll ``dev-<i>`` for each key (a file store's directory is created first)."""
    if "://" not in location:
        Path(location).parent.mkdir(parents=True, exist_ok=True)
    store = open_store(location)
    try:
        for i, key in enumerate(device_keys):
            public = keys.public_hex(key.public_key())
            enrollment.preauthorize(store, f"dev-{i}", public, by="bench", now_ms=0)
    finally:
        store.close()


def _configs(workdir: Path) -> list[Config]:
    configs = [Config("sqlite x1 (alone)", 1, str(workdir / "alone" / "hub.db"), Topics("b/a"))]
    for n in REPLICAS:
        location = str(workdir / f"shared{n}" / "hub.db")
        configs.append(Config(f"sqlite-shared x{n}", n, location, Topics(f"b/s{n}")))
    postgres = os.environ.get(POSTGRES_ENV)
    if postgres:  # one database: the configurations take turns on the same devices
        for n in REPLICAS:
            configs.append(Config(f"postgres x{n}", n, postgres, Topics(f"b/p{n}")))
    return configs


@contextmanager
def _replicas(
    config: Config, url: str, workdir: Path, hub_key: Path
) -> Iterator[list[subprocess.Popen[str]]]:
    children = []
    try:
        for k in range(config.replicas):
            args = [
                *("hub.ingest.pipeline", "--data", str(workdir / f"{config.topics.prefix}-{k}")),
                *("--broker", url, "--prefix", config.topics.prefix, "--key", str(hub_key)),
                *("--client-id", f"hub-{uuid.uuid4().hex[:6]}", "--database", config.location),
            ]
            if not config.name.endswith("(alone)"):
                args += ["--replica-group", f"g{config.topics.prefix.replace('/', '')}"]
            children.append(_spawn(args))
        config.processes = [psutil.Process(c.pid) for c in children]
        yield children
    finally:
        for child in children:
            child.send_signal(signal.SIGTERM)
            child.wait(30)


def bench_scale_out(workdir: Path) -> dict[str, Any]:
    """Interleaved trials of every configuration over one Mosquitto."""
    hub_key = workdir / "rollout.pem"
    hub_key.write_bytes(keys.private_to_pem(Ed25519PrivateKey.generate()))
    configs = _configs(workdir)
    with ExitStack() as stack:
        broker = stack.enter_context(
            MosquittoBroker(workdir / "mosquitto", max_queued_messages=10 * MESSAGES)
        )
        streams: dict[str, Stream] = {}
        frames: dict[str, list[Any]] = {}
        shared: Stream | None = None  # the postgres configurations' devices, enrolled once
        for config in configs:
            if config.name.startswith("postgres") and shared is not None:
                stream = shared
            else:
                device_keys = [Ed25519PrivateKey.generate() for _ in range(DEVICES)]
                _prepare(config.location, device_keys)
                stream = Stream(broker.url, device_keys)
                stack.callback(stream.close)
                if config.name.startswith("postgres"):
                    shared = stream
            stack.enter_context(_replicas(config, broker.url, workdir, hub_key))
            streams[config.name] = stream
        # every trial's frames signed before any timing, in the order the trials run, so
        # configurations sharing devices (postgres) see each device's seqs rise
        for k in range(TRIALS):
            shift = k % len(configs)
            for config in configs[shift:] + configs[:shift]:
                frames.setdefault(config.name, []).append(streams[config.name].sign(config.topics))
        stack.callback(_close_stores, configs)
        mosquitto = _broker_process()
        me = psutil.Process()

        def trial(config: Config) -> Callable[[], None]:
            def run() -> None:
                target = config.stored() + MESSAGES
                before = _usage(config, mosquitto, me)
                streams[config.name].publish(frames[config.name].pop(0))
                _wait(lambda: config.stored() >= target)
                after = _usage(config, mosquitto, me)
                for part, spent in after.items():
                    config.cpu_us.setdefault(part, []).append(
                        (spent - before[part]) / MESSAGES * 1e6
                    )

            return run

        seconds = interleaved(
            {c.name: trial(c) for c in configs}, repeat=TRIALS, number=1, statistic="median"
        )
    baseline = MESSAGES / seconds[configs[0].name]
    measured = {}
    for config in configs:
        rate = MESSAGES / seconds[config.name]
        measured[config.name] = {
            "replicas": config.replicas,
            "msgs_per_s": round(rate),
            "ratio_to_sqlite_alone": round(rate / baseline, 3),
            "cpu_us_per_msg": {
                part: round(statistics.median(v), 1) for part, v in config.cpu_us.items()
            },
        }
    return {
        "broker": "mosquitto",
        "messages_per_trial": MESSAGES,
        "publishers": DEVICES,
        "trials": TRIALS,
        "cpus": os.cpu_count(),
        "measured": measured,
    }


def _close_stores(configs: list[Config]) -> None:
    for config in configs:
        if config.store is not None:
            config.store.close()


def _usage(config: Config, broker: psutil.Process | None, me: psutil.Process) -> dict[str, float]:
    parts = {"replicas": sum(_cpu_s(p) for p in config.processes), "publishers": _cpu_s(me)}
    if broker is not None:
        parts["broker"] = _cpu_s(broker)
    return parts


def project(measured: dict[str, Any], cpus: int) -> dict[str, Any]:
    """What N replicas on N machines would carry, from this run's CPU per frame.

    A replica on a machine of its own commits ``1e6 / replica_us`` frames per second of
    its CPU (the per-replica cost measured with one replica on the shared store), so N of
    them ``N * 1e6 / replica_us``, until something they share saturates: one Mosquitto
    process (``1e6 / broker_us``, a single-threaded broker; a clustered broker lifts it,
    docs/scale-out.md) or the store's writer (SQLite: one writer at a time on one machine;
    PostgreSQL: row locks per device, so its bound is the server's, not measured here).
    On this machine every process shares ``cpus`` cores, so the measured curve cannot pass
    ``cpus * 1e6 / (replicas + broker + publishers)`` per frame: that is what bounds it.
    """
    projection: dict[str, Any] = {}
    for family in ("sqlite-shared", "postgres"):
        one = measured.get(f"{family} x1")
        if one is None:
            continue
        cpu = one["cpu_us_per_msg"]
        replica_us, broker_us = cpu["replicas"], cpu.get("broker", 0.0)
        total_us = replica_us + broker_us + cpu["publishers"]
        broker_bound = 1e6 / broker_us if broker_us else None
        projection[family] = {
            "basis": f"{family} x1: CPU per frame of one replica, of the broker, of the publishers"
            + (
                ""
                if family == "postgres"
                else "; a SQLite file spans one machine only, so on N "
                "machines the store is PostgreSQL, whose cost per frame this does not include"
            ),
            "per_replica_msgs_per_s": round(1e6 / replica_us),
            "broker_bound_msgs_per_s": round(broker_bound) if broker_bound else None,
            "this_machine_bound_msgs_per_s": round(cpus * 1e6 / total_us),
            "n_machines": {
                str(n): round(min(n * 1e6 / replica_us, broker_bound or float("inf")))
                for n in (1, 2, 3, 4, 8, 16)
            },
        }
    return projection


def main() -> dict[str, Any] | None:
    if find_mosquitto() is None:
        print("  skipped: Mosquitto is not installed (the embedded broker has no $share)")
        return None
    with tempfile.TemporaryDirectory(prefix="edgefleet-bench-scale-") as tmp:
        results = bench_scale_out(Path(tmp))
    measured = results["measured"]
    baseline_name = next(iter(measured))
    base = measured[baseline_name]
    print(f"  mosquitto, {DEVICES} publishers, {MESSAGES} frames per trial, {TRIALS} trials")
    for name, m in measured.items():
        cpu = m["cpu_us_per_msg"]
        line = f"{m['msgs_per_s']:,}/s"
        report(
            f"{name}, msgs/s",
            line,
            baseline=f"{base['msgs_per_s']:,}/s ({baseline_name})",
            ratio=f"{m['ratio_to_sqlite_alone']:.2f}",
        )
        report(
            f"{name}, CPU us/msg replicas|broker|pubs",
            f"{cpu['replicas']:.0f}|{cpu.get('broker', 0):.0f}|{cpu['publishers']:.0f}",
        )
    results["projection"] = project(measured, results["cpus"])
    for family, p in results["projection"].items():
        report(f"{family}: one replica per machine, msgs/s", f"{p['per_replica_msgs_per_s']:,}")
        report(
            f"{family}: this machine's CPU bound, msgs/s", f"{p['this_machine_bound_msgs_per_s']:,}"
        )
        report(
            f"{family}: projected for 3 / 8 machines",
            f"{p['n_machines']['3']:,} / {p['n_machines']['8']:,}",
        )
    results["loadavg"] = [round(x, 2) for x in os.getloadavg()]
    write_result("scale_out", results)
    return results


if __name__ == "__main__":
    main()
