"""The full loop, narrated: v1 serves, one cohort drifts, the hub alerts, a round makes v2,
v2 rolls out 10% -> 50% -> 100% through its gates, accuracy recovers.

Nothing here decides what the hub or the agents do: the story starts a real hub
(:class:`hub.service.HubService` over its embedded broker, SQLite in a temporary data
directory) and real agents (:class:`simulator.fleet.SimulatedFleet`), feeds the agents
traffic (:mod:`simulator.load`), and *watches* over REST what the hub's own jobs do: the
drift job scores closed buckets and opens an alert, the alert opens a federated round
(``retrain_on_alert``), the round closes and releases a candidate when it passes
validation (``auto_release``), and the rollout job walks the stages. The story's only
operator acts are the ones a person would take: register v1, enrol the devices, put them on
v1, refresh the validation set with recent labels, and start the rollout of v2.

What runs (cohorts, data, drift, rollout stages, time scales) is a scenario
(:mod:`simulator.scenario`; ``edgefleet demo`` runs ``full-loop``). Time scales are shrunk so
the loop fits in about two minutes, and each is a real setting: drift buckets of seconds
(default 5 minutes) scored every half second, :data:`simulator.hubs.GRACE_S` after they
close; rounds ticked every half second with a deadline of seconds; rollout stages baked for
seconds; data windows of two seconds; agents' watch window of 200 predicted rows, which the
traffic fills in about five seconds. The other stories (steady, a rollout through faults, a
drift alert) are in :mod:`simulator.plays`.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import numpy as np

from simulator import plays
from simulator.faults import NETWORK, Faults
from simulator.fleet import ResourceMeter, SimulatedFleet
from simulator.hubs import HubLink
from simulator.load import Load
from simulator.relay import Relay
from simulator.report import Facts, collect
from simulator.scenario import Scenario
from simulator.steps import (
    MODEL,
    DemoFailed,
    alerted,
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
from simulator.streams import SensorTask, broken
from simulator.watch import Watch

__all__ = ["DemoFailed", "run"]
BROKEN_ABOVE = 1.0  # bad-model-rollout's v2 fails beyond this (quiet sensors: sd 0.2)


def run(
    workdir: Path, hub: HubLink, *, devices: int, scenario: Scenario, watch: Watch | None = None
) -> Facts:
    """Run the scenario in ``workdir`` against ``hub``; what happened, for the report.

    Raises:
        DemoFailed: a step did not reach its goal in time.
    """
    facts = Facts(devices=devices, model=MODEL, initial_version=1)
    where = "in this process" if hub.broker is not None else "elsewhere"
    step(facts, "hub", f"MQTT broker, SQLite, REST API and the hub's scheduled jobs, {where}")
    say(f"REST {hub.http_url}/api/v1   broker {hub.broker_url}")
    say(f"dashboard {hub.http_url}/ui   sign in with the admin token {hub.token}")
    facts.hub_url, facts.token = hub.http_url, hub.token
    facts.hub_in_process = hub.broker is not None
    return _loop(workdir, hub, facts, scenario, watch)


def _loop(
    workdir: Path, hub: HubLink, facts: Facts, scenario: Scenario, watch: Watch | None
) -> Facts:
    api = hub.api
    data, drift, times = scenario.data, scenario.drift, scenario.hub
    task = SensorTask.build(
        seed=data.seed, n_features=data.features, n_classes=data.classes, quiet=drift.features,
        quiet_sd=drift.quiet_sd, drift_sd=drift.sd, noise=data.noise,
    )  # fmt: skip
    rng = np.random.default_rng(7)
    step(
        facts,
        "register",
        f"model {MODEL!r} v1: {task.n_features} sensors -> {task.n_classes} classes",
    )
    x_ref, y_ref = task.sample(2000, rng)
    version = ok(api.post(
        "/models", data={"name": MODEL},
        files={"model": ("v1.onnx", task.model), "reference": ("ref.npz", npz(X=x_ref)),
               "validation": ("val.npz", npz(X=x_ref[:500], y=y_ref[:500]))},
    ))  # fmt: skip
    say(f"v{version['version']} released, validation accuracy {version['metrics']['accuracy']:.2f}")
    ok(api.put(f"/models/{MODEL}/drift-policy", json={
        "bucket_ms": int(times.bucket_s * 1000),
        "retrain_on_alert": scenario.story == "full-loop",
    }))  # fmt: skip
    counts = scenario.counts(facts.devices)
    n_drifted = counts[drift.cohort]
    ok(api.put(f"/models/{MODEL}/fl-policy", json={
        "auto_release": True, "margin": 0.0, "strategy": times.round_strategy,
        "close": {"min_deltas": max(1, n_drifted // 2), "target_deltas": n_drifted,
                  "duration_ms": int(times.round_deadline_s * 1000)},
    }))  # fmt: skip
    if scenario.story == "full-loop":
        say(f"drift buckets of {times.bucket_s:g} s; an alert opens a federated round; "
            "a candidate that beats its base on validation is released")  # fmt: skip
    else:
        say(f"drift buckets of {times.bucket_s:g} s; alerts open no round")

    relay = None
    if any(f.kind in NETWORK for f in scenario.faults):
        target = urlsplit(hub.broker_url)
        relay = Relay(target.hostname or "127.0.0.1", target.port or 1883)
        relay.start()
        say(f"devices reach the broker through a relay that can cut and damage: {relay.url}")
    tags = {c.value: c.tag for c in scenario.cohorts}
    step(facts, "enrol", ", ".join(f"{n} agents in {tags[c]}={c}" for c, n in counts.items()))
    fleets: dict[str, SimulatedFleet] = {}
    faults: Faults | None = None
    meter = ResourceMeter.now()
    try:
        for cohort, count in counts.items():
            if count == 0:
                continue
            token = ok(api.post("/enrollment-tokens", json={
                "kind": "fleet", "expires_in_s": 3600, "tags": {tags[cohort]: cohort},
            }))  # fmt: skip
            fleets[cohort] = SimulatedFleet.start(
                workdir / "devices" / cohort, count=count,
                broker_url=relay.url if relay else hub.broker_url,
                root_metadata=hub.root_file, enrollment_token=token["token"], prefix=cohort,
                tags={"fleet": "demo"}, http=scenario.story != "steady",
                window_s=scenario.agent.window_s,
                retrain_interval_s=scenario.agent.retrain_interval_s,
                telemetry_interval_s=scenario.agent.telemetry_s,
                drain_interval_s=scenario.agent.drain_interval_s, ack_timeout_s=5.0,
                stop_grace_s=2.0,
            )  # fmt: skip
        everyone = {i: d for f in fleets.values() for i, d in f.devices.items()}
        drifted = frozenset(fleets[drift.cohort].device_ids)
        flipped = round(scenario.attack.label_flip_share * len(drifted))
        poisoned = frozenset(sorted(drifted)[:flipped])
        if poisoned:
            strategy = times.round_strategy
            say(f"poisoned: {', '.join(sorted(poisoned))} will get every label as the next "
                f"class; the round aggregates with the {strategy!r} strategy")  # fmt: skip
        facts.poisoned = sorted(poisoned)
        ids = list(everyone)
        wait("every agent enrolled and online", lambda: devices_where(api, ids, online),
             timeout_s=_scaled(len(ids)), poll_s=_poll(len(ids)))  # fmt: skip
        load = Load(
            task, everyone, drifted, poisoned, concept=drift.kind == "concept",
            live_labels=scenario.story == "drift", rows=data.rows_per_s, tick_s=data.tick_s,
            label_share=data.label_share,
        )  # fmt: skip
        faults = Faults(scenario.faults, fleets, everyone, hub, relay)
        if watch is not None:
            watch.attach(load, ids)
        facts.meter = meter
        try:
            _story(facts, api, task, load, faults, ids, scenario)
            wait("every fault over, every stopped agent running again",
                 lambda: faults.join(0.5) or None, timeout_s=120)  # fmt: skip
        finally:
            load.stop()
        facts.load_errors = load.errors
        wait("every outbox drained", lambda: all(
            d.agent.outbox.stats().depth == 0 for d in everyone.values()) or None,
            timeout_s=_scaled(len(ids)), poll_s=_poll(len(ids)))  # fmt: skip
        facts.retired = [s for f in fleets.values() for s in f.retired]
        facts.faults = faults.summary()
        return collect(facts, api, everyone)
    finally:
        if faults is not None:
            faults.stop()
        for fleet in fleets.values():
            fleet.stop()
        if relay is not None:
            relay.stop()


def _scaled(devices: int) -> float:
    """How long a fleet-wide step may take: 90 s, or more for a large fleet."""
    return max(90.0, devices * 0.3)


def _poll(devices: int) -> float:
    """How often a fleet-wide wait asks: listing a thousand devices four times a second
    would keep the hub busy answering instead of ingesting."""
    return min(2.0, max(0.25, devices / 500))


def _story(
    facts: Facts, api: httpx.Client, task: SensorTask, load: Load, faults: Faults,
    ids: list[str], scenario: Scenario,
) -> None:  # fmt: skip
    drift, times = scenario.drift, scenario.hub
    drifted = load.drifted
    step(facts, "v1", f"desired {MODEL} v1 for every device: signed assignment, chunked download")
    config = {"window_s": scenario.agent.window_s, "retrain": scenario.agent.retrain,
              "retrain_min_samples": 100,
              "telemetry_interval_s": scenario.agent.telemetry_s}  # fmt: skip

    def assign(device_id: str) -> None:
        ok(api.put(f"/devices/{device_id}/desired",
                   json={"model": MODEL, "version": 1, "config": config}))  # fmt: skip

    with ThreadPoolExecutor(max_workers=4) as pool:  # as an operator's script would
        list(pool.map(assign, ids))
    wait("every device serves v1", lambda: devices_where(api, ids, runs(1)),
         timeout_s=_scaled(len(ids)), poll_s=_poll(len(ids)))  # fmt: skip
    load.start()
    faults.start()
    if scenario.story in plays.STORIES:
        plays.STORIES[scenario.story](facts, api, task, load, faults, ids, scenario)
        return
    step(facts, "steady", f"each device classifies {load.rows} readings a second; "
         f"{load.label_share:.0%} get a label later")  # fmt: skip
    time.sleep(drift.after_s)
    say(f"fleet accuracy on labelled rows: {load.accuracy('before_drift'):.3f}")

    tag = next(c.tag for c in scenario.cohorts if c.value == drift.cohort)
    cohort = f"{tag}={drift.cohort}"
    sensors = ", ".join(task.feature_names)
    step(facts, "drift", f"{cohort}: sensors {sensors} start moving (sd {task.quiet_sd} -> "
         f"{task.drift_sd}); v1 was trained when they were quiet")  # fmt: skip
    load.set_phase("after_drift")
    load.start_drift()
    drift_at = time.monotonic()
    if scenario.story == "bad-model-rollout":
        _bad_rollout(facts, api, task, load, ids, scenario)
        return
    alert = wait("the hub's drift job to open an alert", lambda: alerted(api))
    say(
        f"ALERT {alert['severity']}: features {', '.join(alert['features'])} in "
        f"{', '.join(alert['cohorts'])} ({time.monotonic() - drift_at:.1f} s after the drift)"
    )
    say(f"fleet accuracy on labelled rows since the drift: {load.accuracy('after_drift'):.3f}")
    facts.alerts = [alert]

    step(
        facts, "round", f"the alert opened a federated round on v1 for {cohort} (retrain_on_alert)"
    )
    live = wait("the round", lambda: first_round(api))
    say(f"round {live['round_id']}: trigger {live['trigger']}, closes at "
        f"{live['target_deltas']} deltas or in {times.round_deadline_s:g} s")  # fmt: skip
    load.set_phase("round")
    # the round goes to the alert's cohort only: the drifted devices hear of it
    wait(f"the {cohort} devices told of the round", lambda: all(
        load.devices[i].learning.hub_config.round_id == live["round_id"] for i in drifted
    ) or None)  # fmt: skip
    x_val, y_val = _recent(task, len(drifted) / len(ids))
    ok(api.put(f"/models/{MODEL}/validation-set",
               files={"validation": ("val.npz", npz(X=x_val, y=y_val))}))  # fmt: skip
    say("validation set refreshed with recent labelled rows from both cohorts")
    taken = load.deliver_labels()
    say(f"late labels arrive: {taken} labelled rows; agents retrain their heads on-device")
    detail = wait("the round to end", lambda: ended(api, live["round_id"]))
    deltas = detail["deltas"]
    say(
        f"{detail['state']}: {deltas['used']} deltas used, "
        f"{sum(deltas['flagged'].values())} flagged {detail['reason']}".rstrip()
    )
    judgement = detail.get("judgement") or {}
    if detail["state"] != "accepted":
        raise DemoFailed(f"round {live['round_id']} ended {detail['state']}: {judgement}")
    version = detail["candidate_version"]
    say(f"candidate v{version} vs v1 on validation: {_judged(judgement)}; released")
    facts.rounds = [detail]

    wait("devices told the round ended", lambda: all(
        d.learning.hub_config.round_id is None for d in load.devices.values()) or None)  # fmt: skip
    stages = " -> ".join(f"{stage.percent:g}%" for stage in scenario.rollout)
    step(facts, "rollout", f"v{version} to the fleet: {stages}, gated")
    rollout = ok(api.post("/rollouts", json=rollout_spec(version, scenario)))
    facts.rollout_ids = [rollout["id"]]
    final = follow_rollout(facts, api, rollout["id"])
    if final["phase"] != "completed":
        raise DemoFailed(f"rollout {rollout['id']} ended {final['phase']}: {final['reason']}")
    wait(f"every device serves v{version}", lambda: devices_where(api, ids, runs(version)))

    step(facts, "recover", f"everyone on v{version}; traffic continues, drift and all")
    load.set_phase("after_rollout")
    time.sleep(times.recover_s)
    say(
        f"fleet accuracy on labelled rows: {load.accuracy('after_rollout'):.3f} (before the "
        f"drift {load.accuracy('before_drift'):.3f}, after it {load.accuracy('after_drift'):.3f})"
    )
    facts.accuracy = {p: load.accuracy(p) for p in ("before_drift", "after_drift", "after_rollout")}


def _bad_rollout(
    facts: Facts, api: httpx.Client, task: SensorTask, load: Load, ids: list[str],
    scenario: Scenario,
) -> None:  # fmt: skip
    """The operator answers the drift with a v2 that breaks on the drifted readings
    (:func:`simulator.streams.broken`): the gates and the devices' watch windows must stop it."""
    time.sleep(scenario.hub.bucket_s)
    say(f"fleet accuracy on labelled rows since the drift: {load.accuracy('after_drift'):.3f}")
    sensors = " or ".join(f"|{name}|" for name in task.feature_names)
    step(facts, "register", f"v2: v1 whose scores turn NaN when {sensors} > {BROKEN_ABOVE:g}; "
         "fine on the reference and the health check, where those sensors are quiet")  # fmt: skip
    x_ref, _ = task.sample(2000, np.random.default_rng(8))
    v2 = ok(api.post("/models", data={"name": MODEL}, files={
        "model": ("v2.onnx", broken(task.model, task.quiet, BROKEN_ABOVE)),
        "reference": ("ref.npz", npz(X=x_ref)),
    }))  # fmt: skip
    version = v2["version"]
    stages = " -> ".join(f"{stage.percent:g}%" for stage in scenario.rollout)
    step(facts, "rollout", f"v{version} to the fleet: {stages}, gated")
    load.set_phase("rollout")
    tag = next(c.tag for c in scenario.cohorts if c.value == scenario.drift.cohort)
    canaries = {tag: scenario.drift.cohort}  # the cohort that sees the new readings goes first
    say(f"canaries first from {tag}={scenario.drift.cohort}")
    spec = rollout_spec(version, scenario) | {"canary_tags": canaries}
    rollout = ok(api.post("/rollouts", json=spec))
    facts.rollout_ids = [rollout["id"]]
    final = follow_rollout(facts, api, rollout["id"])
    if final["phase"] != "rolled_back":
        raise DemoFailed(f"rollout {rollout['id']} ended {final['phase']}, not rolled back")
    wait("every device serves v1 again", lambda: devices_where(api, ids, runs(1)))

    step(facts, "recover", "everyone back on v1; traffic continues")
    load.set_phase("after_rollout")
    time.sleep(scenario.hub.recover_s)
    say(f"fleet accuracy on labelled rows: {load.accuracy('after_rollout'):.3f}; "
        f"{load.errors} requests failed on the way")  # fmt: skip
    facts.accuracy = {p: load.accuracy(p) for p in ("before_drift", "after_drift", "after_rollout")}


def _recent(task: SensorTask, drifted_share: float) -> tuple[np.ndarray, np.ndarray]:
    """Labelled rows as the fleet sees them now: the drifted cohort in its share."""
    rng = np.random.default_rng(99)
    n = 1000
    k = round(n * drifted_share)
    x1, y1 = task.sample(k, rng, drifted=True)
    x2, y2 = task.sample(n - k, rng)
    return np.vstack([x1, x2]), np.concatenate([y1, y2])


def _judged(judgement: dict[str, Any]) -> str:
    numbers = judgement.get("validation") or {}
    base, candidate = numbers.get("parent_accuracy"), numbers.get("candidate_accuracy")
    if isinstance(base, int | float) and isinstance(candidate, int | float):
        return f"accuracy {base:.3f} -> {candidate:.3f} ({judgement.get('reason', '')})"
    return str(judgement)


def first_round(api: httpx.Client) -> dict[str, Any] | None:
    items = ok(api.get("/rounds", params={"model": MODEL}))["items"]
    return items[0] if items else None


def ended(api: httpx.Client, round_id: str) -> dict[str, Any] | None:
    detail = ok(api.get(f"/rounds/{round_id}"))
    done = detail["state"] in ("accepted", "rejected", "failed", "cancelled")
    return detail if done else None
