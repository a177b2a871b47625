"""REST latency: ``GET /api/v1/devices`` p50/p95 with 10,000 devices, against ``/healthz``.

Setup: a hub store (SQLite file, WAL) holding ``DEVICES`` devices with tags, statuses,
reported models and online flags spread over them, and the real app
(:func:`hub.api.create_app`) served by uvicorn in a thread on 127.0.0.1. One httpx
client with keep-alive sends the requests one at a time, as an operator's dashboard or
script would: the latency is the whole round trip (HTTP parsing, bearer token check
against the store, the count and page queries, pydantic serialisation).

Candidates, sampled round-robin one request each (``SAMPLES`` per candidate, the starting
candidate rotating every round) so a busy patch of the shared machine hits all alike;
:func:`bench.common.interleaved` times means, and percentiles need every sample:

- ``healthz``: ``GET /healthz``, the baseline: the same server, client and HTTP path, no
  token, one trivial query;
- ``devices``: ``GET /api/v1/devices`` (first page of 100, the default);
- ``devices_filtered``: ``?status=active&tag=site:site-3&online=true`` (a full scan);
- ``devices_deep``: ``?limit=1000&offset=9000``;
- ``store_list``: ``store.devices.page()`` in this process: the query alone, no HTTP.

Reported: p50 and p95 in milliseconds for each, and ``devices`` p50 and p95 as ratios of
``healthz``'s (the cost of listing over a bare round trip), with the goal p95 < 50 ms.
Writes ``bench/results/hub_api.json``; takes about half a minute.
"""

from __future__ import annotations

import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from prometheus_client import CollectorRegistry

from bench.common import report, write_result
from edgefleet.clock import SystemClock
from hub import keyring
from hub.api import HubServices, auth, create_app
from hub.context import HubContext
from hub.health import Health
from hub.registry.artifacts import ArtifactStore
from hub.registry.registry import Registry
from hub.settings import HubSettings
from hub.store import Store
from hub.store.dialects import open_store
from hub.store.rows import Device, DeviceStatus

DEVICES = 10_000
SAMPLES = 300
WARMUP = 20
GOAL_P95_MS = 50.0


def populate(store: Store, now: int) -> None:
    """``DEVICES`` devices: a third pending or revoked, ten sites, two model versions."""
    statuses: tuple[DeviceStatus, ...] = ("active", "active", "pending", "revoked")
    with store.atomic():
        for i in range(DEVICES):
            store.devices.add(
                Device(
                    id=f"dev-{i:05d}",
                    public_key=f"{i:064x}",
                    status=statuses[i % 4],
                    first_seen=now,
                    tags={"site": f"site-{i % 10}", "rack": f"r{i % 40}"},
                    agent_version="0.1.0",
                    enrolled_at=now,
                    last_seen=now,
                    online=i % 3 != 0,
                    active_name="kws",
                    active_version=1 + i % 2,
                    active_sha256=f"{i % 2:064x}",
                    health=Health.OK,
                )
            )


@contextmanager
def serve(app: Any) -> Iterator[str]:
    """Run ``app`` with uvicorn on a free port of 127.0.0.1 in a thread; yield its URL."""
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", access_log=False)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="bench-uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def sample(fns: dict[str, Callable[[], object]], rounds: int) -> dict[str, list[float]]:
    """Seconds of each call, one call per candidate per round, rotating who goes first."""
    names = list(fns)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for i in range(rounds):
        shift = i % len(names)
        for name in names[shift:] + names[:shift]:
            start = time.perf_counter()
            fns[name]()
            samples[name].append(time.perf_counter() - start)
    return samples


def percentiles(values: list[float]) -> dict[str, float]:
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    return {"p50_ms": cuts[49] * 1000, "p95_ms": cuts[94] * 1000}


def main() -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-hub-api-") as tmp:
        root = Path(tmp)
        clock = SystemClock()
        settings = HubSettings(data_dir=root)
        store = open_store(settings.db_path)
        populate(store, clock.now_ms())
        ring = keyring.init(settings.keys_dir, now_ms=clock.now_ms())
        artifacts = ArtifactStore(settings.artifacts_dir)
        ctx = HubContext(store, ring, clock, settings)
        services = HubServices(
            registry=Registry(ctx, artifacts), artifacts=artifacts, metrics=CollectorRegistry()
        )
        token = auth.create_token(store, role="viewer", name="bench", actor="cli", now_ms=0).token
        app = create_app(ctx, services)
        with serve(app) as url, httpx.Client(base_url=url) as client:
            client.headers["Authorization"] = f"Bearer {token}"

            def get(path: str) -> Callable[[], object]:
                def call() -> object:
                    response = client.get(path)
                    response.raise_for_status()
                    return response

                return call

            fns: dict[str, Callable[[], object]] = {
                "healthz": get("/healthz"),
                "devices": get("/api/v1/devices"),
                "devices_filtered": get(
                    "/api/v1/devices?status=active&tag=site:site-3&online=true"
                ),
                "devices_deep": get("/api/v1/devices?limit=1000&offset=9000"),
                "store_list": store.devices.page,
            }
            total = client.get("/api/v1/devices").json()["total"]
            if total != DEVICES:
                raise RuntimeError(f"the API lists {total} devices, not {DEVICES}")
            sample(fns, WARMUP)
            samples = sample(fns, SAMPLES)
        store.close()

    results: dict[str, Any] = {
        "devices_in_store": DEVICES,
        "samples": SAMPLES,
        "server": "uvicorn in a thread on 127.0.0.1, one httpx keep-alive client",
    }
    for name, values in samples.items():
        results[name] = percentiles(values)
        report(
            f"{name} p50 / p95",
            f"{results[name]['p50_ms']:.2f} / {results[name]['p95_ms']:.2f} ms",
        )
    devices, healthz = results["devices"], results["healthz"]
    results["devices_p50_over_healthz"] = devices["p50_ms"] / healthz["p50_ms"]
    results["devices_p95_over_healthz"] = devices["p95_ms"] / healthz["p95_ms"]
    results["goal_p95_ms"] = GOAL_P95_MS
    results["goal_met"] = devices["p95_ms"] < GOAL_P95_MS
    report("devices p50 / healthz p50", f"{results['devices_p50_over_healthz']:.1f}x")
    report("devices p95 / healthz p95", f"{results['devices_p95_over_healthz']:.1f}x")
    report(
        "devices p95 (page of 100 of 10,000)",
        f"{devices['p95_ms']:.2f} ms",
        goal=f"< {GOAL_P95_MS:.0f} ms",
        met=results["goal_met"],
    )
    write_result("hub_api", results)
    return results
