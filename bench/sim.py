"""A steady simulated fleet's cost per device, against bare MQTT sessions doing the same
publishes, measured in the same run.

Setup: Mosquitto on a free port, a hub (``edgefleet hub serve``) in its own process with
one registered model (``edgefleet model example``), a fleet enrollment token. Then two
processes, one after the other, each measuring itself from before its first session:

- **fleet** (``python -m bench.sim --role fleet``): N real agents in one
  :class:`simulator.fleet.SimulatedFleet` (one MQTT loop thread, the shared job pool, one
  onnxruntime session per model, no local HTTP). They enrol (paced), every device is
  assigned v1 over REST and installs it (signed assignment, chunked download, health
  check), then the steady window: default telemetry (every 30 s), data windows and
  retraining off, and each device predicts one row every ``PREDICT_EVERY_S`` seconds
  (:meth:`agent.device.Device.predict`, a sensor loop's call).
- **bare** (``--role bare``): the same number of paho sessions on one
  :class:`agent.shared_loop.SharedLoop`, each subscribed to its downlink, publishing
  signed-telemetry-sized frames at the fleet's measured per-device rate: what MQTT
  alone costs for the same traffic, the floor any agent sits on.

Reported per device, over the steady window: CPU seconds, share of one core (goal
<= 0.001, i.e. 0.1 %), resident memory grown since the process started its first session
(goal <= 2 MB), and the fleet / bare ratios. Also: devices online at the hub, messages
sent / acknowledged / pending / dropped (lost), threads, and how long enrolment and the
install took.

``python -m bench sim`` uses ``EDGEFLEET_BENCH_SIM_DEVICES`` (default 300) and
``EDGEFLEET_BENCH_SIM_SECONDS`` (default 60); ``python -m bench.sim --devices 1000
--duration 120`` runs the issue's size. Writes ``bench/results/sim.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from bench.common import report, write_result
from bench.hub_process import enroll_secret, served_hub

PREDICT_EVERY_S = 5.0
SETTLE_S = 10.0
READY_TIMEOUT_S = 900.0
GOAL_CPU_SHARE = 0.001
GOAL_RSS_MB = 2.0
MODEL = "demo"


# ---------------------------------------------------------------------- orchestration


def run(devices: int, seconds: float) -> dict[str, Any]:
    from tests.brokers import MosquittoBroker, free_port

    with tempfile.TemporaryDirectory(prefix="edgefleet-bench-sim-") as tmp:
        work = Path(tmp)
        broker = MosquittoBroker(work / "mosquitto", max_queued_messages=100_000)
        broker.start()
        try:
            with served_hub(work, broker.url, free_port(), model=MODEL, versions=1) as (
                hub_url,
                token,
            ):
                secret = enroll_secret(hub_url, token)
                common = ["--broker", broker.url, "--devices", str(devices)]
                common += ["--duration", str(seconds)]
                fleet = _child(
                    "fleet",
                    *common,
                    "--hub",
                    hub_url,
                    "--token",
                    token,
                    "--secret",
                    secret,
                    "--root",
                    str(work / "hub" / "keys" / "root" / "1.root.json"),
                    "--state",
                    str(work / "devices"),
                )
                rate = fleet["messages_per_device_per_s"]
                size = fleet["mean_frame_bytes"]
                bare = _child("bare", *common, "--rate", str(rate), "--size", str(size))
        finally:
            broker.stop()
    return {"devices": devices, "seconds": seconds, "fleet": fleet, "bare": bare}


def _child(role: str, *args: str) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-m", "bench.sim", "--role", role, *args],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"bench.sim --role {role} failed:\n{done.stdout}\n{done.stderr[-4000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


# ---------------------------------------------------------------------- the fleet


def fleet_role(args: argparse.Namespace) -> dict[str, Any]:
    import numpy as np

    from simulator.fleet import ResourceMeter, SimulatedFleet

    api = httpx.Client(
        base_url=f"{args.hub}/api/v1",
        headers={"Authorization": f"Bearer {args.token}"},
        timeout=60,
    )
    job_cpu = _time_jobs()
    before = ResourceMeter.now()
    started = time.monotonic()
    fleet = SimulatedFleet.start(
        args.state,
        count=args.devices,
        broker_url=args.broker,
        root_metadata=args.root,
        enrollment_token=args.secret,
        prefix="sim",
        http=False,
        retrain_interval_s=24 * 3600.0,
    )
    with fleet:
        _until(lambda: fleet.enrolled() == args.devices, "every device enrolled")
        enrolled_s = time.monotonic() - started
        for device_id in fleet.device_ids:
            api.put(f"/devices/{device_id}/desired", json={"model": MODEL, "version": 1})
        _until(lambda: _serving(fleet) == args.devices, "every device serving v1")
        installed_s = time.monotonic() - started - enrolled_s
        time.sleep(SETTLE_S)
        sent_before = fleet.messages()["sent"]
        steady = ResourceMeter.now()
        threads_before = _thread_cpu()
        jobs_before = dict(job_cpu)
        stop = threading.Event()
        driver = threading.Thread(target=_predict_loop, args=(fleet, stop, np), daemon=True)
        driver.start()
        stop.wait(args.duration)
        stop.set()
        driver.join()
        resources = before.per_device(args.devices, since=steady)
        by_thread = {k: round(v - threads_before.get(k, 0.0), 2) for k, v in _thread_cpu().items()}
        by_job = {k: round(v - jobs_before.get(k, 0.0), 2) for k, v in job_cpu.items()}
        messages = fleet.messages()
        sent = messages["sent"] - sent_before
        online = _online(api, fleet.device_ids)
        threads = threading.active_count()
    return {
        "resources": resources,
        "messages": messages,
        "online_at_hub": online,
        "threads": threads,
        "cpu_s_by_thread": by_thread,
        "cpu_s_by_job": by_job,
        "enrol_s": round(enrolled_s, 1),
        "install_s": round(installed_s, 1),
        "messages_per_device_per_s": round(sent / args.devices / resources["seconds"], 5),
        "mean_frame_bytes": _telemetry_frame_bytes(args.state / "sizer"),
    }


def _predict_loop(fleet: Any, stop: threading.Event, np: Any) -> None:
    """Each device predicts one row every PREDICT_EVERY_S, spread evenly over time."""
    devices = list(fleet.devices.values())
    shape = devices[0].manager.runtime.manifest.inputs[0].shape
    row = np.zeros((1, *[d or 1 for d in shape[1:]]), np.float32)
    gap = PREDICT_EVERY_S / len(devices)
    due = time.monotonic()
    while not stop.is_set():
        for device in devices:
            due += gap
            if (delay := due - time.monotonic()) > 0 and stop.wait(delay):
                return
            device.predict(row)


def _time_jobs() -> dict[str, float]:
    """Make every job of the fleet's scheduler add its thread CPU time to the returned
    dict, by job name (a microsecond per run): which jobs a steady fleet's CPU goes to."""
    from agent import scheduler

    spent: dict[str, float] = {}
    every = scheduler.HeapScheduler.every

    def timed(self: Any, interval_s: float, fn: Any, *, name: str) -> Any:
        def run() -> None:
            started = time.thread_time()
            try:
                fn()
            finally:
                spent[name] = spent.get(name, 0.0) + time.thread_time() - started

        return every(self, interval_s, run, name=name)

    scheduler.HeapScheduler.every = timed  # type: ignore[method-assign]
    return spent


def _thread_cpu() -> dict[str, float]:
    """CPU seconds this process's threads used, summed by kind (the name without its
    number): where a steady fleet's CPU goes."""
    names = {t.native_id: t.name for t in threading.enumerate()}
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[str, float] = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:  # the thread ended
            continue
        name = names.get(int(tid), "native (onnxruntime, sqlite...)")
        kind = name.rstrip("0123456789").rstrip("_-")
        out[kind] = out.get(kind, 0.0) + (int(fields[11]) + int(fields[12])) / tick
    return out


def _serving(fleet: Any) -> int:
    return sum(
        1
        for d in fleet.devices.values()
        if (rt := d.manager.runtime) is not None and rt.ref.version == 1
    )


def _telemetry_frame_bytes(workdir: Path) -> int:
    """The size of a signed telemetry frame, most of what a steady device sends: the
    baseline publishes frames of this size."""
    from agent.identity import load_or_create
    from agent.outbox import Outbox
    from protocol.messages import ModelRef, Telemetry

    outbox = Outbox(workdir / "outbox.db", load_or_create(workdir, "sim-sizer"))
    try:
        message = Telemetry(
            uptime_s=120.0,
            inference_count=24,
            error_count=0,
            latency_p50_ms=0.05,
            latency_p95_ms=0.09,
            outbox_depth=0,
            outbox_dropped=0,
            model=ModelRef(MODEL, 1, "ab" * 32),
        )
        return len(outbox.seal(message, int(time.time() * 1000)).frame)
    finally:
        outbox.close()


def _online(api: httpx.Client, ids: list[str]) -> int:
    online, offset = 0, 0
    while offset < len(ids):
        page = api.get("/devices", params={"limit": 1000, "offset": offset}).json()["items"]
        online += sum(1 for d in page if d["online"] and d["status"] == "active")
        offset += 1000
        if not page:
            break
    return online


def _until(check: Any, what: str) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.5)


# ---------------------------------------------------------------------- the baseline


def bare_role(args: argparse.Namespace) -> dict[str, Any]:
    from agent.link import LinkSettings
    from agent.shared_loop import SharedLoop
    from edgefleet.brokers import BrokerUrl
    from protocol.topics import Topics
    from simulator.fleet import ResourceMeter

    broker = BrokerUrl.parse(args.broker)
    topics = Topics(prefix="bare")
    before = ResourceMeter.now()
    loop = SharedLoop()
    loop.start()
    links = []
    for i in range(args.devices):
        link = loop.link(LinkSettings(broker=broker, client_id=f"bare-{i}"))
        link.subscribe(topics.device_down(f"bare-{i}"))
        link.on_event(lambda event: None)
        link.connect()
        links.append(link)
    _until(lambda: loop.sessions == args.devices, "every bare session up")
    time.sleep(SETTLE_S)
    steady = ResourceMeter.now()
    payload = os.urandom(args.size)
    gap = 1.0 / max(args.rate * args.devices, 1e-6)
    published = 0
    end = time.monotonic() + args.duration
    due = time.monotonic()
    while (now := time.monotonic()) < end:
        link = links[published % len(links)]
        link.publish(topics.up(f"bare-{published % len(links)}", "telemetry"), payload)
        published += 1
        due += gap
        if due > now:
            time.sleep(min(due - now, end - now))
    resources = before.per_device(args.devices, since=steady)
    for link in links:
        link.disconnect()
    loop.stop()
    return {"resources": resources, "published": published, "threads": threading.active_count()}


# ---------------------------------------------------------------------- entry points


def summarize(results: dict[str, Any]) -> None:
    """Print the figures (the goals' and baselines' rows go into the summary table)."""
    fleet, bare = results["fleet"]["resources"], results["bare"]["resources"]
    share, rss = fleet["cpu_share_per_device"], fleet["rss_mb_per_device"]
    results["cpu_ratio"] = round(share / max(bare["cpu_share_per_device"], 1e-9), 1)
    results["rss_ratio"] = round(rss / max(bare["rss_mb_per_device"], 1e-9), 1)
    n, run = results["devices"], results["fleet"]
    messages = run["messages"]
    report("devices online at the hub", f"{run['online_at_hub']}/{n}", goal=f"{n}/{n}",
           met=run["online_at_hub"] == n)  # fmt: skip
    report("enrol / install (s)", f"{run['enrol_s']} / {run['install_s']}")
    report("messages sent / pending", f"{messages['sent']} / {messages['pending']}")
    report("messages dropped (lost)", str(messages["dropped"]), goal="0",
           met=messages["dropped"] == 0)  # fmt: skip
    report(f"CPU share of a core per steady device ({n})", f"{share:.5f}",
           baseline=f"{bare['cpu_share_per_device']:.5f}", ratio=str(results["cpu_ratio"]),
           goal=f"<= {GOAL_CPU_SHARE}", met=share <= GOAL_CPU_SHARE)  # fmt: skip
    report(f"RSS MB per steady device ({n})", f"{rss:.3f}",
           baseline=f"{bare['rss_mb_per_device']:.3f}", ratio=str(results["rss_ratio"]),
           goal=f"<= {GOAL_RSS_MB}", met=rss <= GOAL_RSS_MB)  # fmt: skip
    report("threads (fleet / bare)", f"{run['threads']} / {results['bare']['threads']}")
    print(f"  CPU seconds by thread: {run['cpu_s_by_thread']}")
    print(f"  CPU seconds by job:    {run['cpu_s_by_job']}")


def main() -> dict[str, Any]:
    devices = int(os.environ.get("EDGEFLEET_BENCH_SIM_DEVICES", "300"))
    seconds = float(os.environ.get("EDGEFLEET_BENCH_SIM_SECONDS", "60"))
    results = run(devices, seconds)
    summarize(results)
    write_result("sim", results)
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m bench.sim", description=__doc__)
    parser.add_argument("--role", choices=["fleet", "bare"])
    parser.add_argument("--devices", type=int, default=300)
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--broker")
    parser.add_argument("--hub")
    parser.add_argument("--token")
    parser.add_argument("--secret")
    parser.add_argument("--root", type=Path)
    parser.add_argument("--state", type=Path)
    parser.add_argument("--rate", type=float)
    parser.add_argument("--size", type=int)
    cli = parser.parse_args()
    if cli.role == "fleet":
        print(json.dumps(fleet_role(cli)))
    elif cli.role == "bare":
        print(json.dumps(bare_role(cli)))
    else:
        outcome = run(cli.devices, cli.duration)
        summarize(outcome)
        write_result("sim", outcome)
