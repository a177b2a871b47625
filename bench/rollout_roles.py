"""The two child processes of ``bench/rollout.py``: the simulated fleet and the bare floor.

Each runs in its own process (``python -m bench.rollout_roles fleet|floor ...``), as the
agents would on their own machines, and talks to the parent over its standard streams:
it prints one JSON line ``{"ready": ...}`` when set up, waits for a line on its standard
input, then prints one JSON line of results. Times are ``time.monotonic()`` readings,
which every process on the machine shares (``CLOCK_MONOTONIC``), so the parent can
subtract its own start from a child's end.

- **fleet**: N real agents in one :class:`simulator.fleet.SimulatedFleet` (one MQTT loop,
  the shared job pool, no local HTTP), enrolled and serving v1 (assigned over REST). On
  ``go`` it creates the rollout over REST (``POST /api/v1/rollouts``) and records when
  every agent *serves* v2 (its runtime swapped) and when the hub *holds* every device's
  report of v2 active (``GET /api/v1/devices``).
- **floor**: N bare sessions on one :class:`agent.shared_loop.SharedLoop` (the agents' own
  MQTT stack, nothing above it), each subscribed to its device's downlink under the prefix
  ``floor``; it records when every session has received every frame the parent publishes
  to it (``--expect``: a JSON object of frames per device id).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

READY_TIMEOUT_S = 900.0
CONVERGE_TIMEOUT_S = 600.0
SETTLE_S = 5.0
SAMPLE_S = 0.05
HUB_POLL_S = 0.5
FLOOR_PREFIX = "floor"


def until(check: Callable[[], bool], what: str, timeout_s: float = READY_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.2)


def _say(record: dict[str, Any]) -> None:
    print(json.dumps(record), flush=True)


# ---------------------------------------------------------------------- the fleet


def fleet_role(args: argparse.Namespace) -> dict[str, Any]:
    from simulator.fleet import SimulatedFleet

    api = httpx.Client(
        base_url=f"{args.hub}/api/v1",
        headers={"Authorization": f"Bearer {args.token}"},
        timeout=60,
    )
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
        until(lambda: fleet.enrolled() == args.devices, "every device enrolled")
        for device_id in fleet.device_ids:
            api.put(f"/devices/{device_id}/desired", json={"model": args.model, "version": 1})
        until(lambda: _serving(fleet, 1) == args.devices, "every device serving v1")
        until(lambda: _reported(api, args.model, 1) == args.devices, "the hub holding v1")
        time.sleep(SETTLE_S)
        _say({"ready": round(time.monotonic() - started, 1)})
        sys.stdin.readline()
        return _roll(fleet, api, args)


def _roll(fleet: Any, api: httpx.Client, args: argparse.Namespace) -> dict[str, Any]:
    """Create the rollout, then sample until every agent serves v2 and the hub holds it."""
    n = args.devices
    spec = {
        "model": args.model,
        "version": 2,
        "stages": [{"percent": 100, "bake_ms": 0, "gates": [{"metric": "update_success"}]}],
        "max_updating": n,
        "device_timeout_ms": int(CONVERGE_TIMEOUT_S * 1000),
    }
    cpu_start = _cpu_s()
    start = time.monotonic()
    created = api.post("/rollouts", json=spec)
    created.raise_for_status()
    created_at = time.monotonic()  # the API ticks a new rollout at once: assigned, published
    rollout_id = created.json()["id"]
    serving_at: float | None = None
    cpu_serving: float | None = None
    reported_at: float | None = None
    curve: list[tuple[float, int]] = []
    next_poll = start
    deadline = start + CONVERGE_TIMEOUT_S
    while (serving_at is None or reported_at is None) and time.monotonic() < deadline:
        now = time.monotonic()
        serving = _serving(fleet, 2)
        if not curve or curve[-1][1] != serving:
            curve.append((round(now - start, 2), serving))
        if serving_at is None and serving == n:
            serving_at = now
            cpu_serving = _cpu_s() - cpu_start
        if reported_at is None and now >= next_poll:
            next_poll = now + HUB_POLL_S
            if _reported(api, args.model, 2) == n:
                reported_at = time.monotonic()
        time.sleep(SAMPLE_S)
    view = api.get(f"/rollouts/{rollout_id}").json()
    return {
        "start": start,
        "created_at": created_at,
        "serving_at": serving_at,
        "reported_at": reported_at,
        "serving": _serving(fleet, 2),
        "reported": _reported(api, args.model, 2),
        "curve": curve,
        "phase": view["phase"],
        "timeline": [t["line"] for t in view["timeline"]][:20],
        "messages": fleet.messages(),
        "cpu_s_until_serving": None if cpu_serving is None else round(cpu_serving, 2),
    }


def _cpu_s() -> float:
    """CPU seconds (user and system, every thread) this process has used: the agents' own
    work, which on real devices runs on N machines in parallel, and here on this one's cores."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _serving(fleet: Any, version: int) -> int:
    return sum(
        1
        for d in fleet.devices.values()
        if (rt := d.manager.runtime) is not None and rt.ref.version == version
    )


def _reported(api: httpx.Client, model: str, version: int) -> int:
    """Devices whose report of ``model`` ``version`` active the hub holds."""
    count, offset = 0, 0
    while True:
        page = api.get("/devices", params={"limit": 1000, "offset": offset}).json()["items"]
        count += sum(
            1
            for d in page
            if (a := d.get("active")) and a["name"] == model and a["version"] == version
        )
        if len(page) < 1000:
            return count
        offset += 1000


# ---------------------------------------------------------------------- the floor


def floor_role(args: argparse.Namespace) -> dict[str, Any]:
    from agent.link import LinkSettings
    from agent.shared_loop import SharedLoop
    from agent.transport import Inbound, LinkEvent
    from edgefleet.brokers import BrokerUrl
    from protocol.topics import Topics

    expect: dict[str, int] = json.loads(args.expect.read_text())
    broker = BrokerUrl.parse(args.broker)
    topics = Topics(prefix=FLOOR_PREFIX)
    lock = threading.Lock()
    missing = dict(expect)
    done = threading.Event()
    done_at: list[float] = []
    received = [0]

    def sink_for(device_id: str) -> Callable[[LinkEvent], None]:
        def sink(event: LinkEvent) -> None:
            if not isinstance(event, Inbound) or event.retained:
                return
            with lock:
                received[0] += 1
                left = missing.get(device_id, 0) - 1
                missing[device_id] = left
                if left == 0:
                    del missing[device_id]
                    if not missing:
                        done_at.append(time.monotonic())
                        done.set()

        return sink

    loop = SharedLoop()
    loop.start()
    links = []
    for device_id in expect:
        link = loop.link(LinkSettings(broker=broker, client_id=f"{FLOOR_PREFIX}-{device_id}"))
        link.subscribe(topics.device_down(device_id))
        link.on_event(sink_for(device_id))
        link.connect()
        links.append(link)
    until(lambda: loop.sessions == len(expect), "every bare session up")
    until(lambda: all(link.connected for link in links), "every bare session subscribed")
    time.sleep(SETTLE_S)
    _say({"ready": len(links)})
    done.wait(CONVERGE_TIMEOUT_S)
    for link in links:
        link.disconnect()
    loop.stop()
    return {
        "done_at": done_at[0] if done_at else None,
        "received": received[0],
        "expected": sum(expect.values()),
        "devices_missing": len(missing),
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.rollout_roles", description=__doc__)
    parser.add_argument("role", choices=["fleet", "floor"])
    parser.add_argument("--broker", required=True)
    parser.add_argument("--devices", type=int, default=0)
    parser.add_argument("--hub")
    parser.add_argument("--token")
    parser.add_argument("--secret")
    parser.add_argument("--model", default="demo")
    parser.add_argument("--root", type=Path)
    parser.add_argument("--state", type=Path)
    parser.add_argument("--expect", type=Path)
    args = parser.parse_args()
    _say(fleet_role(args) if args.role == "fleet" else floor_role(args))


if __name__ == "__main__":
    main()
