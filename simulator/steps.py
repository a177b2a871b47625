"""The steps every scenario's story is made of: narration, REST calls, waiting on the hub.

A story (:mod:`simulator.story`, :mod:`simulator.plays`) is a sequence of operator acts and
waits on what the hub's own jobs do, seen over REST; these are its verbs. ``wait`` polls
a probe until it returns a value, and a step that does not reach its goal in time raises
:class:`DemoFailed` naming it and what was seen.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from typing import Any, TypeVar

import httpx
import numpy as np

from simulator import hubs
from simulator.report import Facts
from simulator.scenario import Scenario

MODEL = "sensors"
STEP_TIMEOUT_S = 90.0
T = TypeVar("T")


class DemoFailed(Exception):
    """A step did not reach its goal in time; the message says which and what was seen."""


def step(facts: Facts, name: str, what: str) -> None:
    """A step's header, with the seconds since the run began."""
    print(f"\n{time.monotonic() - facts.started:5.1f} s  [{name}] {what}", flush=True)


def event(facts: Facts, at_ms: int, line: str) -> None:
    """A hub event (wall-clock ``at_ms``), with the seconds since the run began."""
    print(f"{at_ms / 1000 - facts.started_wall:5.1f} s    {line}", flush=True)


def say(line: str) -> None:
    print(f"    {line}", flush=True)


def rollout_spec(version: int, scenario: Scenario) -> dict[str, Any]:
    stages = [
        {"percent": stage.percent, "bake_ms": int(stage.bake_s * 1000), "extend_ms": 0,
         "gates": [{"metric": gate} for gate in stage.gates]}
        for stage in scenario.rollout
    ]  # fmt: skip
    return {"model": MODEL, "version": version, "device_timeout_ms": 60_000, "seed": 3,
            "stages": stages}  # fmt: skip


def follow_rollout(facts: Facts, api: httpx.Client, rollout_id: str) -> dict[str, Any]:
    """Narrate the rollout's timeline as it grows; its final view."""
    shown = 0
    deadline = time.monotonic() + STEP_TIMEOUT_S
    while True:
        view: dict[str, Any] = ok(api.get(f"/rollouts/{rollout_id}"))
        for line in view["timeline"][shown:]:
            event(facts, line["at_ms"], line["line"])
        shown = len(view["timeline"])
        if view["phase"] in ("completed", "rolled_back", "aborted", "paused"):
            return view
        if time.monotonic() > deadline:
            counts = [{k: v for k, v in c.items() if v} for c in view["counts"]]
            raise DemoFailed(f"rollout {rollout_id} still {view['phase']} after "
                             f"{STEP_TIMEOUT_S:.0f} s: devices per stage {counts}")  # fmt: skip
        time.sleep(0.25)


def alerted(api: httpx.Client) -> dict[str, Any] | None:
    found = ok(api.get("/drift/alerts"))
    return next((a for a in found if a["severity"] == "alert"), None)


def npz(**arrays: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)  # type: ignore[arg-type]
    return buffer.getvalue()


def ok(response: httpx.Response) -> Any:
    if response.is_error:
        raise DemoFailed(
            f"{response.request.method} {response.request.url.path}: "
            f"{response.status_code} {response.text[:300]}"
        )
    return response.json()


def wait(
    what: str, probe: Callable[[], T | None], timeout_s: float = STEP_TIMEOUT_S,
    poll_s: float = 0.25,
) -> T:  # fmt: skip
    """Poll ``probe`` every ``poll_s`` until it returns a value; DemoFailed on timeout."""
    started = time.monotonic()
    while (found := probe()) is None:
        if time.monotonic() - started > timeout_s:
            raise DemoFailed(f"waited {timeout_s:.0f} s for {what}")
        time.sleep(poll_s)
    say(f"{what} ({time.monotonic() - started:.1f} s)")
    return found


def devices_where(
    api: httpx.Client, ids: list[str], test: Callable[[dict[str, Any]], bool]
) -> list[dict[str, Any]] | None:
    wanted = set(ids)
    items = [d for d in hubs.listing(api) if d["id"] in wanted and test(d)]
    return items if len(items) == len(ids) else None


def online(device: dict[str, Any]) -> bool:
    return bool(device["status"] == "active" and device["online"])


def runs(version: int) -> Callable[[dict[str, Any]], bool]:
    def test(device: dict[str, Any]) -> bool:
        active = device["active"]
        return bool(active and active["name"] == MODEL and active["version"] == version)

    return test
