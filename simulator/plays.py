"""The stories beside the full loop: a steady fleet, a rollout through faults, a drift alert.

Each starts where :mod:`simulator.story` leaves every scenario: the devices enrolled and
serving v1, traffic flowing, the scenario's faults (:mod:`simulator.faults`) on their clock.

- ``steady``: nothing changes for ``duration_s``; the report's ``steady`` section says how
  many devices stayed online and what one device cost (CPU and memory of this process over
  that window, divided by the devices: with the hub elsewhere, that is the agents alone).
- ``rollout``: after ``drift.after_s`` the operator registers a better v2 (fitted with the
  quiet sensors too) and rolls it out through the scenario's stages while ``[offline]``
  devices are stopped and faults hit; it ends when every device, the returning ones too,
  serves v2 (``offline-catchup``, ``flaky-network``).
- ``drift``: after ``drift.after_s`` one cohort drifts (covariate: readings; concept:
  labels) and the story waits for the hub's drift job to alert on it: a ``drift`` alert
  naming the features, or for concept drift a ``performance`` alert, which only labelled
  feedback can raise (the traffic hands labels to the devices as it goes).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import Any

import httpx
import numpy as np

from simulator.faults import Faults
from simulator.fleet import ResourceMeter
from simulator.load import Load
from simulator.report import Facts
from simulator.scenario import Scenario
from simulator.steps import (
    MODEL,
    DemoFailed,
    devices_where,
    follow_rollout,
    npz,
    ok,
    online,
    rollout_spec,
    runs,
    say,
    step,
    wait,
)
from simulator.streams import SensorTask

Story = Callable[[Facts, httpx.Client, SensorTask, Load, Faults, list[str], Scenario], None]


def steady(
    facts: Facts, api: httpx.Client, task: SensorTask, load: Load, faults: Faults,
    ids: list[str], scenario: Scenario,
) -> None:  # fmt: skip
    step(facts, "steady", f"{len(ids)} devices serve v1 for {scenario.duration_s:g} s: "
         f"{load.rows} readings every {load.tick_s:g} s each, nothing else changes")  # fmt: skip
    mark = ResourceMeter.now()
    load.set_phase("steady")
    time.sleep(scenario.duration_s)
    assert facts.meter is not None
    cost = facts.meter.per_device(len(ids), since=mark)
    listing = devices_where(api, ids, lambda d: True) or []
    facts.steady = {
        "online": sum(online(d) for d in listing),
        "connected": sum(d.agent.transport.connected for d in load.devices.values()),
        **cost,
    }
    share, mb = cost["cpu_share_per_device"], cost["rss_mb_per_device"]
    say(f"{facts.steady['online']} of {len(ids)} online; per device {share:.5f} of a core, "
        f"{mb:.3f} MB")  # fmt: skip
    facts.accuracy = {"steady": load.accuracy("steady")}


def rollout(
    facts: Facts, api: httpx.Client, task: SensorTask, load: Load, faults: Faults,
    ids: list[str], scenario: Scenario,
) -> None:  # fmt: skip
    step(facts, "steady", f"each device classifies {load.rows} readings a second; "
         f"{len(scenario.faults)} scripted faults on their clock")  # fmt: skip
    time.sleep(scenario.drift.after_s)
    say(f"fleet accuracy on labelled rows: {_acc(load, 'before_drift')}")
    step(facts, "register", "v2: fitted with sensors f8 and f9 moving too")
    x_ref, y_ref = task.sample(2000, np.random.default_rng(8))
    v2 = ok(api.post("/models", data={"name": MODEL}, files={
        "model": ("v2.onnx", task.informed), "reference": ("ref.npz", npz(X=x_ref)),
        "validation": ("val.npz", npz(X=x_ref[:500], y=y_ref[:500])),
    }))  # fmt: skip
    version = v2["version"]
    away = _offline(facts, api, faults, ids, scenario)
    stages = " -> ".join(f"{stage.percent:g}%" for stage in scenario.rollout)
    step(facts, "rollout", f"v{version} to the fleet: {stages}, gated")
    load.set_phase("rollout")
    started = ok(api.post("/rollouts", json=rollout_spec(version, scenario)))
    facts.rollout_ids = [started["id"]]
    final = follow_rollout(facts, api, started["id"])
    if final["phase"] != "completed":
        raise DemoFailed(f"rollout {started['id']} ended {final['phase']}: {final['reason']}")
    if away:
        say(f"{len(away)} devices were offline; they catch up when they return")
    wait(f"every device serves v{version}", lambda: devices_where(api, ids, runs(version)),
         timeout_s=120)  # fmt: skip
    step(facts, "recover", f"everyone on v{version}; traffic continues")
    load.set_phase("after_rollout")
    time.sleep(scenario.hub.recover_s)
    facts.accuracy = {p: load.accuracy(p) for p in ("before_drift", "after_rollout")}
    say(f"fleet accuracy on labelled rows: {_acc(load, 'after_rollout')}")


def _offline(
    facts: Facts, api: httpx.Client, faults: Faults, ids: list[str], scenario: Scenario
) -> list[str]:
    """Stop the ``[offline]`` share of the devices now; they return ``down_s`` later."""
    share = scenario.offline.share
    if share <= 0:
        return []
    rng = random.Random(scenario.data.seed)
    away = sorted(rng.sample(sorted(ids), max(1, round(share * len(ids)))))
    step(
        facts,
        "offline",
        f"{len(away)} agents stop ({', '.join(away[:5])}{'...' if len(away) > 5 else ''}); "
        f"they return in {scenario.offline.down_s:g} s",
    )
    faults.offline(away, scenario.offline.down_s)
    wait("the hub sees them offline", lambda: devices_where(api, away, lambda d: not d["online"]),
         timeout_s=scenario.offline.down_s)  # fmt: skip
    return away


def drift(
    facts: Facts, api: httpx.Client, task: SensorTask, load: Load, faults: Faults,
    ids: list[str], scenario: Scenario,
) -> None:  # fmt: skip
    spec = scenario.drift
    step(facts, "steady", f"each device classifies {load.rows} readings a second; "
         "labels reach the devices as they come")  # fmt: skip
    time.sleep(spec.after_s)
    say(f"fleet accuracy on labelled rows: {_acc(load, 'before_drift')}")
    tag = next(c.tag for c in scenario.cohorts if c.value == spec.cohort)
    cohort = f"{tag}={spec.cohort}"
    what = (f"sensors {', '.join(task.feature_names)} start moving" if spec.kind == "covariate"
            else "readings stay the same, every label becomes the next class")  # fmt: skip
    step(facts, "drift", f"{spec.kind} drift in {cohort}: {what}")
    load.set_phase("after_drift")
    load.start_drift()
    drift_at = time.monotonic()
    kind = "drift" if spec.kind == "covariate" else "performance"
    alert = wait(f"the hub's drift job to open a {kind} alert on {cohort}",
                 lambda: _alert(api, kind, cohort), timeout_s=120)  # fmt: skip
    named = ", ".join(alert["features"]) or "labelled accuracy"
    say(f"ALERT {alert['severity']} ({kind}): {named} in {', '.join(alert['cohorts'])} "
        f"({time.monotonic() - drift_at:.1f} s after the drift)")  # fmt: skip
    facts.alerts = [alert]
    time.sleep(scenario.hub.recover_s)
    facts.accuracy = {p: load.accuracy(p) for p in ("before_drift", "after_drift")}
    say(f"fleet accuracy on labelled rows since the drift: {_acc(load, 'after_drift')}")


def _alert(api: httpx.Client, kind: str, cohort: str) -> dict[str, Any] | None:
    found = ok(api.get("/drift/alerts"))
    return next(
        (a for a in found if a["kind"] == kind and a["severity"] == "alert"
         and cohort in a["cohorts"]),
        None,
    )  # fmt: skip


def _acc(load: Load, phase: str) -> str:
    value = load.accuracy(phase)
    return "n/a" if value is None else f"{value:.3f}"


STORIES: dict[str, Story] = {"steady": steady, "rollout": rollout, "drift": drift}
