"""The store on PostgreSQL against the store on SQLite, in the same run: ingest-shaped
writes, and a read while a write transaction is open.

Setup: a SQLite store (a file, WAL, ``synchronous=FULL``, as the hub opens it) and a
PostgreSQL store in a throwaway server started here on a free port (tests/postgres.py:
``fsync=off``, so the comparison is of CPU and round trips, not of disks). Both stores run
the same statements: PostgreSQL's translated once each (hub/store/postgres/translate.py).

- ``rows_per_s``: telemetry rows committed per second, ``BATCH`` rows per transaction (one
  ``executemany`` of ``INSERT OR IGNORE``, as ingest writes them), ``BATCHES`` batches;
  trials interleaved (:func:`bench.common.interleaved`) so a busy patch of the shared
  machine hits both alike; ``ratio`` is PostgreSQL's over SQLite's;
- ``read_ms_during_write``: ``store.devices.page()`` in one thread while another holds a
  transaction open for ``HOLD_S``: SQLite's one connection makes the read wait for the
  transaction, PostgreSQL's pool runs it beside it (the reason for the pool).

Writes ``bench/results/store_dialects.json``; takes about half a minute.
"""

from __future__ import annotations

import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench.common import interleaved, report, write_result
from hub.store import Store
from hub.store.dialects import open_store
from hub.store.rows import Device, TelemetryRecord
from tests.postgres import TEMPLATE, PostgresServer, find_bin_dir

BATCH = 500
BATCHES = 10
TRIALS = 5
HOLD_S = 0.5
BODY = '{"inference_count":1204331,"model":{"name":"m","version":3},"uptime_s":86400.5}'


def _writer(store: Store) -> Any:
    seq = 0

    def trial() -> None:
        nonlocal seq
        for _ in range(BATCHES):
            records = []
            for _ in range(BATCH):
                seq += 1
                records.append(TelemetryRecord("dev-0", seq, 0, 0, BODY))
            with store.atomic():
                store.uplink.add(records)

    return trial


def _read_during_write(store: Store) -> float:
    """Milliseconds a device listing takes while another thread holds a transaction."""
    inside, release = threading.Event(), threading.Event()

    def hold() -> None:
        with store.atomic():
            store.devices.set_tags("dev-0", {"held": "yes"})
            inside.set()
            release.wait(10)

    holder = threading.Thread(target=hold)
    holder.start()
    inside.wait(10)
    threading.Timer(HOLD_S, release.set).start()
    start = time.perf_counter()
    store.devices.page()
    took = time.perf_counter() - start
    holder.join()
    return round(took * 1000, 1)


def main() -> dict[str, Any]:
    bin_dir = find_bin_dir()
    if bin_dir is None:
        raise RuntimeError("PostgreSQL is not installed (initdb not found)")
    with tempfile.TemporaryDirectory(prefix="bench-store-") as tmp:
        server = PostgresServer(Path(tempfile.mkdtemp(prefix="bench-pg-")), bin_dir)
        server.start()
        try:
            server.make_template()
            stores = {
                "sqlite": open_store(Path(tmp) / "hub.db"),
                "postgresql": open_store(server.create_database(template=TEMPLATE)),
            }
            for store in stores.values():
                store.devices.add(Device("dev-0", "0" * 64, "active", first_seen=1))
            writers = {k: _writer(s) for k, s in stores.items()}
            timed = interleaved(writers, repeat=TRIALS, number=1)
            rows = BATCH * BATCHES
            results: dict[str, Any] = {
                k: {"rows_per_s": round(rows / seconds)} for k, seconds in timed.items()
            }
            for name, store in stores.items():
                results[name]["read_ms_during_write"] = _read_during_write(store)
                store.close()
        finally:
            server.stop()
    results["ratio"] = round(
        results["postgresql"]["rows_per_s"] / results["sqlite"]["rows_per_s"], 2
    )
    results["setup"] = {"batch": BATCH, "batches": BATCHES, "trials": TRIALS, "hold_s": HOLD_S}
    for name in stores:
        report(f"{name} rows/s ({BATCH} per transaction)", str(results[name]["rows_per_s"]))
        report(f"{name} read during a write (ms)", str(results[name]["read_ms_during_write"]))
    report("postgresql / sqlite rows/s", str(results["ratio"]))
    write_result("store_dialects", results)
    return results
