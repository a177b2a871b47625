"""Drift core cost: merging and scoring 10,000 device windows, and a window's wire bytes.

Setup (seeded, before any timing): a scope of 32 features over 22 bins each plus four
prediction classes (a reference of 5,000 rows), and ``DEVICES`` devices with one window
each of 30-100 rows, tagged with a region (3 values) and a hardware kind (2), as real
:class:`~protocol.messages.DataDelta` messages. Timed, interleaved with the baseline
(:func:`bench.common.interleaved`, median of ``TRIALS``):

- ``decode``: the windows' sketches into aggregates (:func:`hub.drift.aggregate.from_window`),
  what ingest adds to each device's bucket;
- ``merge``: all aggregates merged into one (:func:`hub.drift.aggregate.merge_all`,
  replay check included);
- ``assess``: the whole bucket scored (:func:`hub.drift.assess.assess`): every device's
  own test of every row, cells, 7 cohorts' scores, drifting-device fractions and findings;
- ``store_ingest``: the hub's ingest path for the same windows (:class:`hub.monitor.ingest.
  DriftMerger` in batches of 500 frames, one transaction each, into a fresh SQLite file
  in WAL mode with ``synchronous=FULL``): decode, read the device bucket, merge, write;
- ``store_score``: the scoring job's step for that bucket (:func:`hub.monitor.jobs.
  score_bucket`): read the 10,000 device buckets back, assess, sum the cohorts, write;
- ``baseline``: a plain ``numpy.sum`` over the same stacked count arrays, the least any
  merge can cost; the report gives each stage as a multiple of it.

Goal: decode + merge + assess of one bucket of 10,000 devices within 10 s of one core, 3% of
the 5-minute bucket it covers.

Wire cost: one signed ``data`` frame (:func:`protocol.frame.encode`) with 32 feature
sketches against the same frame with none; the difference over 32 is what one feature
costs per window.

Writes ``bench/results/drift.json``; takes 15-60 s depending on the machine's load.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bench.common import interleaved, report, write_result
from hub.drift.aggregate import Aggregate, from_window, merge_all
from hub.drift.assess import DeviceBucket, assess
from hub.drift.policy import DriftPolicy
from hub.drift.reference import Reference
from hub.ingest.rules import Admitted
from hub.monitor.ingest import DriftMerger
from hub.monitor.jobs import score_bucket
from hub.monitor.references import Baseline
from hub.store.drift_rows import DriftScope
from hub.store.rows import Device
from hub.store.sqlite import SqliteStore
from protocol import frame
from protocol.manifest import FeatureProfile, PredictionProfile, Profile
from protocol.messages import DataDelta, ModelRef
from protocol.sketches import FeatureSketch, PredictionSketch

STAGES = ("baseline", "decode", "merge", "assess", "store_ingest", "store_score")
DEVICES = 10_000
FEATURES = 32
BINS = 22
CLASSES = 4
TRIALS = 5
START_MS = 1_795_392_000_000
KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
MODEL = ModelRef("kws", 3, "ab" * 32)
REGIONS = ("eu", "us", "asia")
HARDWARE = ("a", "b")


def make_reference() -> Reference:
    edges = tuple(float(e) for e in np.linspace(-3.0, 3.0, BINS + 1))
    shares = (1.0 / BINS,) * BINS
    profile = Profile(
        tuple(FeatureProfile(f"f{j:02d}", edges, shares) for j in range(FEATURES)),
        PredictionProfile("classes", (0.4, 0.3, 0.2, 0.1)),
        rows=5000,
    )
    return Reference.from_profile(profile)


def make_window(rng: np.random.Generator, features: int = FEATURES) -> DataDelta:
    n = int(rng.integers(30, 101))
    counts = rng.multinomial(n, np.full(BINS, 1.0 / BINS), size=features)
    sketches = tuple(
        FeatureSketch(
            name=f"f{j:02d}",
            counts=tuple(int(c) for c in counts[j]),
            underflow=int(rng.integers(0, 2)),
            n=n,
            mean=float(rng.normal(0.0, 0.1)),
            m2=float(n * rng.uniform(0.8, 1.2)),
            min=-2.9,
            max=2.9,
        )
        for j in range(features)
    )
    classes = rng.multinomial(n, (0.4, 0.3, 0.2, 0.1))
    return DataDelta(
        window_start=START_MS,
        window_end=START_MS + 60_000,
        features=sketches,
        predictions=PredictionSketch("classes", tuple(int(c) for c in classes)),
        model=MODEL,
        inference_count=n,
        latency_p50_ms=3.2,
        latency_p95_ms=7.9,
    )


def wire_bytes(rng: np.random.Generator) -> dict[str, float]:
    def size(delta: DataDelta) -> int:
        frame_bytes = frame.encode(
            delta, device_id="dev-0001", seq=42, sent_at=START_MS, nonce=bytes(16), key=KEY
        )
        return len(frame_bytes)

    full = make_window(rng)
    bare = DataDelta(
        full.window_start,
        full.window_end,
        features=(),
        predictions=full.predictions,
        model=full.model,
        inference_count=full.inference_count,
        latency_p50_ms=full.latency_p50_ms,
        latency_p95_ms=full.latency_p95_ms,
    )
    with_features, without = size(full), size(bare)
    return {
        "frame_bytes_32_features": with_features,
        "frame_bytes_no_features": without,
        "bytes_per_feature": (with_features - without) / FEATURES,
    }


BATCH = 500  # frames per ingest transaction (HubSettings.ingest_batch_max)


def store_ingest(
    workdir: Path, reference: Reference, deltas: list[DataDelta], tags: list[dict[str, str]]
) -> SqliteStore:
    """A fresh store with the devices, every window merged as ingest merges it."""
    path = workdir / f"hub-{next(_RUNS)}.db"
    store = SqliteStore.open(path)
    with store.atomic():
        for i, t in enumerate(tags):
            store.devices.add(Device(f"dev-{i:05d}", "00" * 32, "active", START_MS, tags=t))
    merger = DriftMerger(store)
    merger.references.put(MODEL.name, MODEL.version, Baseline(reference, None))
    frames = [
        Admitted(f"dev-{i:05d}", "data", 1, START_MS, d, {}, b"") for i, d in enumerate(deltas)
    ]
    for at in range(0, len(frames), BATCH):
        with store.atomic():
            merger.merge(frames[at : at + BATCH], START_MS + 61_000)
    return store


_RUNS = iter(range(1_000_000))


def main() -> dict[str, Any]:
    rng = np.random.default_rng(11)
    reference = make_reference()
    policy = DriftPolicy()
    deltas = [make_window(rng) for _ in range(DEVICES)]
    tags = [{"region": REGIONS[i % 3], "hw": HARDWARE[(i // 3) % 2]} for i in range(DEVICES)]

    def decode() -> list[Aggregate]:
        return [
            from_window(d, reference, device_id=f"dev-{i:05d}", seq=1) for i, d in enumerate(deltas)
        ]

    aggregates = decode()
    devices = [DeviceBucket.of(f"dev-{i:05d}", 3, tags[i], a) for i, a in enumerate(aggregates)]
    stacked = np.stack([a.counts for a in aggregates])

    def run_assess() -> object:
        return assess(devices, reference, policy, start_ms=START_MS, width_ms=policy.bucket_ms)

    workdir = Path(tempfile.mkdtemp(prefix="bench-drift-"))
    filled = store_ingest(workdir, reference, deltas, tags)
    scope = DriftScope(reference.digest, MODEL.name, MODEL.version, None, START_MS)

    def ingest_into_store() -> None:
        store_ingest(workdir, reference, deltas, tags).close()

    def score_from_store() -> object:
        return score_bucket(filled, scope, reference, policy, START_MS, START_MS + 500_000)

    times = interleaved(
        {
            "baseline": lambda: stacked.sum(axis=0),
            "decode": decode,
            "merge": lambda: merge_all(aggregates, reference),
            "assess": run_assess,
            "store_ingest": ingest_into_store,
            "store_score": score_from_store,
        },
        repeat=TRIALS,
        number={name: 20 if name == "baseline" else 1 for name in STAGES},
    )
    filled.close()
    shutil.rmtree(workdir)
    base = times["baseline"]
    total = times["decode"] + times["merge"] + times["assess"]
    results: dict[str, Any] = {
        "devices": DEVICES,
        "features": FEATURES,
        "bins": BINS,
        "seconds": {name: round(t, 6) for name, t in times.items()},
        "vs_baseline": {name: round(times[name] / base, 1) for name in times},
        "windows_per_s": {
            "decode": round(DEVICES / times["decode"]),
            "merge": round(DEVICES / times["merge"]),
            "assess": round(DEVICES / times["assess"]),
            "end_to_end": round(DEVICES / total),
            "store_ingest": round(DEVICES / times["store_ingest"]),
            "store_score": round(DEVICES / times["store_score"]),
        },
        "store_overhead": {
            "ingest_vs_decode_and_merge": round(
                times["store_ingest"] / (times["decode"] + times["merge"]), 2
            ),
            "score_vs_assess": round(times["store_score"] / times["assess"], 2),
        },
        "wire": wire_bytes(rng),
    }
    print(f"  {DEVICES} device windows x {FEATURES} features x {BINS} bins (+ predictions)")
    report("baseline: numpy sum of the counts", f"{base * 1e3:.1f} ms")
    for name in ("decode", "merge", "assess"):
        report(
            f"{name} ({DEVICES / times[name]:,.0f} windows/s)",
            f"{times[name]:.3f} s  x{times[name] / base:,.0f}",
        )
    report("decode + merge + assess", f"{total:.2f} s", goal="<= 10 s", met=total <= 10)
    report("end to end", f"{DEVICES / total:,.0f} windows/s")
    for name, what in (
        ("store_ingest", "ingest into SQLite"),
        ("store_score", "score from SQLite"),
    ):
        report(
            f"{what} ({DEVICES / times[name]:,.0f} windows/s)",
            f"{times[name]:.3f} s  x{times[name] / base:,.0f}",
        )
    stored = times["store_ingest"] + times["store_score"]
    report("store path, ingest + score", f"{stored:.2f} s", goal="<= 10 s", met=stored <= 10)
    wire = results["wire"]
    report("data frame, 32 features", f"{wire['frame_bytes_32_features']:,} B")
    report("data frame, no features", f"{wire['frame_bytes_no_features']:,} B")
    report("one feature on the wire, per window", f"{wire['bytes_per_feature']:.0f} B")
    path = write_result("drift", results)
    print(f"  wrote {path}")
    return results
