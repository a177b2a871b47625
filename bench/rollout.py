"""Staged rollout with real agents: seconds for N devices (the issue's 1,000) to converge on
a new version with zero bake, against a bare-MQTT floor measured in the same run.

Setup: Mosquitto on a free port; a hub (``edgefleet hub serve --rollout-tick 0.5``) in its
own process with two compatible versions of one model (``edgefleet model example``, seeds 1
and 2); N real agents in a child process (:mod:`bench.rollout_roles`, ``fleet``: one
:class:`simulator.fleet.SimulatedFleet` on the shared MQTT loop, the agents' default
install policy), enrolled and serving v1.

- **rollout**: the fleet process creates a rollout of v2 to every device over REST, one
  stage of 100 % with zero bake, ``max_updating`` N, gated on update success. Timed from
  just before ``POST /api/v1/rollouts`` until the hub holds every device's state report of
  v2 active (``converged``; also reported: until every agent *serves* v2). In between, the
  hub's tick plans and signs N assignments, publishes N desired states, each agent
  verifies its own, fetches the package chunk by chunk (``up/fetch`` → ``down/chunk``),
  checks it (hash, ONNX safety, health check), swaps and reports.
- **floor**: while the rollout runs, this process records every frame the hub publishes
  on the devices' ``down/desired`` and ``down/chunk`` topics (a wildcard subscriber; live
  frames only, not the retained v1 desired states). Then N bare sessions (``floor``: the
  agents' MQTT stack, :class:`agent.shared_loop.SharedLoop`, nothing above it) subscribe
  to the same device ids' downlinks under another prefix, and one bare paho client
  publishes exactly those frames (same bytes, same QoS 1, desired states retained), in the
  order the hub sent them. Timed from its first publish until every session has received
  every frame addressed to it: the cost of moving the same signed desired states and model
  bytes through the same broker to the same number of sessions, with no planning,
  signing, verifying, installing or reporting.

Reported: both times, the ratio (goal <= 1.5), the rollout's phase, how many frames the
floor replayed and how the agents' convergence went over time. ``python -m bench rollout``
uses ``EDGEFLEET_BENCH_ROLLOUT_DEVICES`` (default 1,000). Writes
``bench/results/rollout.json``. Heavy: run it alone on the machine.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from bench.common import report, write_result
from bench.hub_process import enroll_secret, served_hub
from bench.rollout_roles import FLOOR_PREFIX

RATIO_GOAL = 1.5
MODEL = "demo"
HUB_PREFIX = "ef"
ROLLOUT_TICK_S = 0.5
ROLES = [sys.executable, "-m", "bench.rollout_roles"]


def run(devices: int) -> dict[str, Any]:
    from tests.brokers import MosquittoBroker, free_port

    with tempfile.TemporaryDirectory(prefix="edgefleet-bench-rollout-") as tmp:
        work = Path(tmp)
        broker = MosquittoBroker(work / "mosquitto", max_queued_messages=100_000)
        broker.start()
        try:
            with served_hub(
                work,
                broker.url,
                free_port(),
                model=MODEL,
                versions=2,
                serve_args=["--rollout-tick", str(ROLLOUT_TICK_S)],
            ) as (hub_url, token):
                frames, fleet_result = _fleet(work, broker.url, hub_url, token, devices)
            floor = _floor(work, broker.url, frames)
        finally:
            broker.stop()
    return {"devices": devices, "fleet": fleet_result, "floor": floor}


# ---------------------------------------------------------------------- the rollout


def _fleet(
    work: Path, broker_url: str, hub_url: str, token: str, devices: int
) -> tuple[list[tuple[str, bytes]], dict[str, Any]]:
    """Run the fleet process; record the hub's downlink frames while the rollout runs."""
    child = subprocess.Popen(
        [
            *ROLES, "fleet", "--broker", broker_url, "--devices", str(devices),
            "--hub", hub_url, "--token", token, "--secret", enroll_secret(hub_url, token),
            "--model", MODEL, "--root", str(work / "hub" / "keys" / "root" / "1.root.json"),
            "--state", str(work / "devices"),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        ready = _line(child, "fleet")
        with _recorder(broker_url) as frames:
            _go(child)
            result = _line(child, "fleet")
        child.wait(300)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    result["ready_s"] = ready["ready"]
    return frames, result


@contextmanager
def _recorder(broker_url: str) -> Iterator[list[tuple[str, bytes]]]:
    """Every live frame on the devices' ``down/desired`` and ``down/chunk``, in order."""
    from edgefleet.brokers import BrokerUrl

    url = BrokerUrl.parse(broker_url)
    frames: list[tuple[str, bytes]] = []
    subscribed = threading.Event()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-rollout-recorder")

    def on_message(_c: Any, _u: Any, message: mqtt.MQTTMessage) -> None:
        kind = message.topic.rsplit("/", 1)[-1]
        if not message.retain and kind in ("desired", "chunk"):
            frames.append((message.topic, bytes(message.payload)))

    client.on_message = on_message
    client.on_subscribe = lambda *_: subscribed.set()
    client.on_connect = lambda c, *_: c.subscribe(f"{HUB_PREFIX}/v1/d/+/down/#", qos=1)
    client.connect(url.host, url.port)
    client.loop_start()
    try:
        if not subscribed.wait(30):
            raise RuntimeError("the recorder could not subscribe")
        yield frames
    finally:
        client.disconnect()
        client.loop_stop()


# ---------------------------------------------------------------------- the floor


def _floor(work: Path, broker_url: str, frames: list[tuple[str, bytes]]) -> dict[str, Any]:
    """Replay ``frames`` to bare sessions of the same device ids (module docstring)."""
    from edgefleet.brokers import BrokerUrl

    expect = Counter(_device(topic) for topic, _ in frames)
    (work / "expect.json").write_text(json.dumps(expect))
    url = BrokerUrl.parse(broker_url)
    publisher = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-rollout-floor")
    publisher.max_inflight_messages_set(1000)
    publisher.max_queued_messages_set(0)
    connected = threading.Event()
    publisher.on_connect = lambda *_: connected.set()
    publisher.connect(url.host, url.port)
    publisher.loop_start()
    child = subprocess.Popen(
        [*ROLES, "floor", "--broker", broker_url, "--expect", str(work / "expect.json")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        if not connected.wait(30):
            raise RuntimeError("the floor's publisher could not connect")
        _line(child, "floor")
        start = time.monotonic()
        for topic, payload in frames:
            floor_topic = FLOOR_PREFIX + topic[len(HUB_PREFIX) :]
            retain = topic.endswith("/desired")
            publisher.publish(floor_topic, payload, qos=1, retain=retain)
        published = time.monotonic()
        result = _line(child, "floor")
        child.wait(120)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        publisher.disconnect()
        publisher.loop_stop()
    kinds = Counter(topic.rsplit("/", 1)[-1] for topic, _ in frames)
    return {
        **result,
        "start": start,
        "published_s": round(published - start, 3),
        "frames": dict(kinds),
        "bytes": sum(len(p) for _, p in frames),
    }


def _device(topic: str) -> str:
    return topic.split("/")[3]  # {prefix}/v1/d/{device}/down/{kind}


# ---------------------------------------------------------------------- processes


def _line(child: subprocess.Popen[str], role: str) -> dict[str, Any]:
    """The child's next JSON line (its other output goes to stderr)."""
    stream: IO[str] | None = child.stdout
    assert stream is not None
    line = stream.readline()
    if not line:
        child.wait(30)
        raise RuntimeError(f"bench.rollout_roles {role} ended (status {child.returncode})")
    record: dict[str, Any] = json.loads(line)
    return record


def _go(child: subprocess.Popen[str]) -> None:
    assert child.stdin is not None
    child.stdin.write("go\n")
    child.stdin.flush()


# ---------------------------------------------------------------------- entry points


def summarize(results: dict[str, Any]) -> None:
    """Seconds and ratios (rows of the summary table); None when something never converged."""
    n, fleet, floor = results["devices"], results["fleet"], results["floor"]
    start = fleet["start"]
    converged = None if fleet["reported_at"] is None else fleet["reported_at"] - start
    serving = None if fleet["serving_at"] is None else fleet["serving_at"] - start
    floor_s = None if floor["done_at"] is None else floor["done_at"] - floor["start"]
    results["converged_s"] = None if converged is None else round(converged, 2)
    results["serving_s"] = None if serving is None else round(serving, 2)
    results["floor_s"] = None if floor_s is None else round(floor_s, 3)
    ratio = None if converged is None or not floor_s else converged / floor_s
    results["ratio"] = None if ratio is None else round(ratio, 1)
    results["ratio_goal"] = RATIO_GOAL
    print(f"staged rollout with {n:,} real agents, zero bake, one 100 % stage:")
    report("devices serving v2 / held at the hub",
           f"{fleet['serving']}/{fleet['reported']}", goal=f"{n}/{n}",
           met=fleet["serving"] == fleet["reported"] == n)  # fmt: skip
    report("rollout phase at the end", fleet["phase"])
    report("floor: frames replayed (desired, chunk)",
           f"{floor['frames'].get('desired', 0)}, {floor['frames'].get('chunk', 0)}")  # fmt: skip
    report("floor: frames received", f"{floor['received']}/{floor['expected']}")
    floor_text = "never" if floor_s is None else f"{floor_s:.2f} s"
    serving_ratio = None if serving is None or not floor_s else f"{serving / floor_s:.1f}"
    report("every agent serving v2", "never" if serving is None else f"{serving:.2f} s",
           baseline=floor_text, ratio=serving_ratio)  # fmt: skip
    report(f"converged ({n:,} reports of v2 at the hub)",
           "never" if converged is None else f"{converged:.2f} s", baseline=floor_text,
           ratio=None if ratio is None else f"{ratio:.1f}", goal=f"<= {RATIO_GOAL:g}x floor",
           met=ratio is not None and ratio <= RATIO_GOAL)  # fmt: skip
    _cpu_bound(results)
    results["created_s"] = round(fleet["created_at"] - start, 2)
    report("POST /rollouts answered (its first tick done)", f"{results['created_s']:.2f} s")
    curve = fleet["curve"]
    print(f"  agents serving v2 over time (s, devices): {curve[:4]} ... {curve[-4:]}")


def _cpu_bound(results: dict[str, Any]) -> None:
    """What the agents' own work costs on this machine: their CPU seconds until every one
    serves v2, spread over every core, is a time no hub or protocol could beat here, since
    all N simulated devices share these cores (and one disk); on a real fleet each device
    does its part on its own. Set beside the floor, it says how much of the goal is
    reachable on this machine at all."""
    cpu_s, floor_s = results["fleet"].get("cpu_s_until_serving"), results["floor_s"]
    if cpu_s is None:
        return
    cores = os.cpu_count() or 1
    bound_s = cpu_s / cores
    results["agents_cpu_s"] = cpu_s
    results["agents_cpu_ms_per_device"] = round(1000 * cpu_s / results["devices"], 2)
    results["agents_cpu_bound_s"] = round(bound_s, 2)
    results["cpu_bound_ratio"] = None if not floor_s else round(bound_s / floor_s, 1)
    report("agents' CPU until every one serves v2",
           f"{cpu_s:.1f} s ({results['agents_cpu_ms_per_device']:.1f} ms per device)")  # fmt: skip
    bound_ratio = results["cpu_bound_ratio"]
    report(f"  spread over {cores} cores: no rollout here can be faster",
           f"{bound_s:.2f} s", baseline=None if not floor_s else f"{floor_s:.2f} s",
           ratio=None if bound_ratio is None else f"{bound_ratio:.1f}")  # fmt: skip


def main() -> dict[str, Any]:
    devices = int(os.environ.get("EDGEFLEET_BENCH_ROLLOUT_DEVICES", "1000"))
    results = run(devices)
    summarize(results)
    write_result("rollout", results)
    return results


if __name__ == "__main__":
    main()
