"""Model runtime costs: predict latency against bare onnxruntime, and an idle agent's memory.

1. **Predict.** :meth:`agent.runtime.ModelRuntime.predict` (input checks, the scores'
   finiteness, the error counters) against a bare ``InferenceSession.run`` of the same
   model bytes, with the same session options and the same outputs, on a skl2onnx
   ``MLPClassifier`` package as the hub registers it (head input exposed). Calls
   alternate one by one (the runtime first on even rounds, the bare session on odd ones)
   so a slow patch of the shared machine hits both alike; p50 and p99 over every call,
   for 1 row and 32 rows, plus :func:`bench.common.interleaved`'s median ratio as a
   cross-check. Goal: p50 ratio <= 1.3 for 1 row. Both call the public
   ``InferenceSession.run`` (calling its private native binding would save about 1 us
   more, but nothing promises that binding's shape across onnxruntime releases).
2. **Memory.** An idle agent process: the daemon (:class:`agent.daemon.Agent`), its trust
   store and model manager, with a model installed, loaded and run once, the broker out
   of reach (so no traffic), started as a subprocess; its resident set (psutil) after
   it settles. Goal: <= 100 MB.

Writes ``bench/results/agent_runtime.json``; takes about half a minute.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

# Only what the idle agent subprocess needs is imported at the top: it runs this module,
# and the test helpers (onnx, scikit-learn, pytest) would inflate the memory it measures.

CALLS = 20_000  # per candidate and batch size
RATIO_GOAL = 1.3
RSS_GOAL_MB = 100.0
SETTLE_S = 3.0
DEVICE = "bench-1"


def percentile(ordered: list[float], pct: float) -> float:
    return ordered[min(len(ordered) - 1, int(pct / 100 * len(ordered)))]


def bench_predict() -> dict[str, Any]:
    """p50/p99 of the runtime and the bare session, per batch size, and their ratios."""
    import onnxruntime as ort

    from agent.runtime import ModelRuntime
    from bench.common import calibrate, interleaved, report
    from protocol.package import decode_package
    from tests import models
    from tests.packages import build_package

    exported = models.mlp_classifier()
    built = build_package(exported.model)
    runtime = ModelRuntime.from_package(decode_package(built.data), built.ref)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    session = ort.InferenceSession(built.model, options, providers=["CPUExecutionProvider"])
    head = built.manifest.head
    outputs = [built.manifest.scores, *([head.feature] if head else [])]
    name = built.manifest.inputs[0].name
    results: dict[str, Any] = {}
    for rows in (1, 32):
        x = np.ascontiguousarray(np.resize(exported.x, (rows, exported.x.shape[1])))
        feeds = {name: x}

        def bare(feeds: dict[str, np.ndarray] = feeds) -> object:
            return session.run(outputs, feeds)

        def ours(x: np.ndarray = x) -> object:
            return runtime.predict(x)

        samples: dict[str, list[float]] = {"runtime": [], "bare": []}
        pair = (("runtime", ours), ("bare", bare))
        for _ in range(1000):
            bare()
            ours()
        for i in range(CALLS):
            for label, fn in pair if i % 2 == 0 else pair[::-1]:
                start = time.perf_counter_ns()
                fn()
                samples[label].append((time.perf_counter_ns() - start) / 1000)
        stats = {}
        for label, values in samples.items():
            ordered = sorted(values)
            stats[label] = {"p50_us": percentile(ordered, 50), "p99_us": percentile(ordered, 99)}
        means = interleaved({"runtime": ours, "bare": bare}, number=calibrate(bare), repeat=9)
        p50_ratio = stats["runtime"]["p50_us"] / stats["bare"]["p50_us"]
        p99_ratio = stats["runtime"]["p99_us"] / stats["bare"]["p99_us"]
        results[f"rows_{rows}"] = {
            **stats,
            "p50_ratio": p50_ratio,
            "p99_ratio": p99_ratio,
            "interleaved_mean_ratio": means["runtime"] / means["bare"],
        }
        for label in ("runtime", "bare"):
            report(
                f"predict {rows:>2} row(s), {label} p50 / p99",
                f"{stats[label]['p50_us']:.1f} / {stats[label]['p99_us']:.1f} us",
            )
        label = f"predict {rows:>2} row(s), runtime / bare p50"
        if rows == 1:
            report(label, f"{p50_ratio:.2f}x", goal=f"<= {RATIO_GOAL}", met=p50_ratio <= RATIO_GOAL)
        else:
            report(label, f"{p50_ratio:.2f}x")
        report(f"predict {rows:>2} row(s), runtime / bare p99", f"{p99_ratio:.2f}x")
    return results


def prepare_state(state_dir: Path) -> Path:
    """A state dir as an agent leaves it after installing the MLP package; the root file."""
    from agent.slot_table import SlotState
    from agent.slots import SLOTS_FILE, Slots
    from agent.trust_store import TrustStore
    from edgefleet.files import write_atomic
    from tests import models
    from tests.packages import build_package
    from tests.protocol.trust_sim import TrustSim

    sim = TrustSim(device_id=DEVICE)
    root = state_dir.parent / "root.json"
    root.write_bytes(sim.root_chain[0].to_bytes())
    TrustStore(state_dir, root.read_bytes())
    built = build_package(models.mlp_classifier().model)
    slots = Slots(state_dir / "models")
    incoming = slots.root / "incoming"
    incoming.write_bytes(built.data)
    slots.store(built.sha256, incoming)
    write_atomic(slots.root / SLOTS_FILE, SlotState(state="committed", active=built.ref).to_bytes())
    return root


def run_idle_agent(state_dir: Path, root: Path) -> None:
    """The subprocess: a daemon with its model manager, idle; prints ``ready`` and waits."""
    from agent.config import AgentConfig
    from agent.daemon import Agent
    from agent.trust_store import TrustStore
    from agent.updater import ModelManager

    config = AgentConfig(
        device_id=DEVICE,
        state_dir=state_dir,
        broker_url="mqtt://127.0.0.1:9",  # the discard port: nothing answers, nothing flows
        root_metadata=root,
        http_port=0,
        reconnect_min_s=5.0,
    )
    trust = TrustStore.open(config.state_dir, config.root_metadata)
    agent = Agent(config, rollout_keys=trust.rollout_keys)
    manager = ModelManager(
        config.state_dir, trust, device_id=DEVICE, clock=agent.clock, send=agent.send
    )
    manager.attach(agent)
    agent.start()
    runtime = manager.runtime
    assert runtime is not None, "the installed model did not load"
    manager.predict(np.zeros((1, runtime.manifest.inputs[0].shape[1] or 1), np.float32))
    print("ready", flush=True)
    sys.stdin.read()  # until the parent closes it
    agent.stop()


def bench_idle_memory(workdir: Path) -> dict[str, Any]:
    """Start the idle agent as a subprocess and read its resident set once it settled."""
    import psutil

    from bench.common import report

    state_dir = workdir / "state"
    root = prepare_state(state_dir)
    log = workdir / "idle-agent.log"
    with log.open("w") as stderr:
        child = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bench.agent_runtime",
                "--idle-agent",
                str(state_dir),
                str(root),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
        )
    try:
        assert child.stdout is not None
        assert child.stdin is not None
        if child.stdout.readline().strip() != "ready":
            raise RuntimeError(f"the idle agent did not start: {log.read_text()[-2000:]}")
        time.sleep(SETTLE_S)
        memory = psutil.Process(child.pid).memory_info()
        child.stdin.close()
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
    rss_mb = memory.rss / 2**20
    report(
        "idle agent with a model loaded, RSS",
        f"{rss_mb:.1f} MB",
        goal=f"<= {RSS_GOAL_MB:.0f} MB",
        met=rss_mb <= RSS_GOAL_MB,
    )
    return {"rss_mb": rss_mb}


def main() -> dict[str, Any]:
    from bench.common import write_result

    results: dict[str, Any] = {"predict": bench_predict()}
    with tempfile.TemporaryDirectory() as tmp:
        results["idle_memory"] = bench_idle_memory(Path(tmp))
    path = write_result("agent_runtime", results)
    print(f"  results in {path}")
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m bench.agent_runtime")
    parser.add_argument("--idle-agent", nargs=2, metavar=("STATE_DIR", "ROOT"))
    args = parser.parse_args()
    if args.idle_agent:
        run_idle_agent(Path(args.idle_agent[0]), Path(args.idle_agent[1]))
    else:
        main()
