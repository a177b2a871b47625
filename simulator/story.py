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
(default 5 minutes) scored every half second, :data:`GRACE_S` after they close; rounds
ticked every half second with a deadline of seconds; rollout stages baked for seconds; data
windows of two seconds; agents' watch window of 200 predicted rows, which the traffic fills in about
five seconds.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import httpx
import numpy as np

from edgefleet.clock import SystemClock
from hub import keyring
from hub.api import auth
from hub.service import HubService
from hub.settings import HubSettings
from hub.transport.broker import EmbeddedBroker
from simulator.fleet import SimulatedFleet
from simulator.load import Load
from simulator.report import Facts, collect
from simulator.scenario import Scenario
from simulator.streams import SensorTask, broken

MODEL = "sensors"
GRACE_S = 1.0
BROKEN_ABOVE = 1.0  # bad-model-rollout's v2 fails beyond this (quiet sensors: sd 0.2)
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


def run(workdir: Path, *, devices: int, scenario: Scenario) -> Facts:
    """Run the whole loop in ``workdir``; what happened, for the report.

    Raises:
        DemoFailed: a step did not reach its goal in time.
    """
    facts = Facts(devices=devices, model=MODEL, initial_version=1)
    clock = SystemClock()
    settings = HubSettings(
        data_dir=workdir / "hub", http_port=0, reconcile_interval_s=1.0,
        round_tick_interval_s=0.5, drift_score_interval_s=0.5, drift_grace_s=GRACE_S,
        rollout_tick_s=0.5,
    )  # fmt: skip
    ring = keyring.init(settings.keys_dir, now_ms=clock.now_ms())
    root_file = workdir / "root.json"
    root_file.write_bytes(ring.chain[0].to_bytes())
    step(facts, "hub", "embedded MQTT broker, SQLite, REST API and the hub's scheduled jobs")
    with HubService.start(settings, embedded_broker=EmbeddedBroker()) as hub:
        admin = auth.create_token(
            hub.store, role="admin", name="demo", actor="demo", now_ms=clock.now_ms()
        )
        say(f"REST {hub.http_url}/api/v1   broker {hub.broker_url}")
        say(f"dashboard {hub.http_url}/ui   sign in with the admin token {admin.token}")
        with httpx.Client(
            base_url=f"{hub.http_url}/api/v1",
            headers={"Authorization": f"Bearer {admin.token}"},
            timeout=60.0,
        ) as api:
            facts.hub_url, facts.token = hub.http_url, admin.token
            return _loop(workdir, hub, api, root_file, facts, scenario)


def _loop(
    workdir: Path, hub: HubService, api: httpx.Client, root_file: Path, facts: Facts,
    scenario: Scenario,
) -> Facts:  # fmt: skip
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

    tags = {c.value: c.tag for c in scenario.cohorts}
    step(facts, "enrol", ", ".join(f"{n} agents in {tags[c]}={c}" for c, n in counts.items()))
    fleets: dict[str, SimulatedFleet] = {}
    try:
        for cohort, count in counts.items():
            if count == 0:
                continue
            token = ok(api.post("/enrollment-tokens", json={
                "kind": "fleet", "expires_in_s": 3600, "tags": {tags[cohort]: cohort},
            }))  # fmt: skip
            fleets[cohort] = SimulatedFleet.start(
                workdir / "devices" / cohort, count=count, broker_url=hub.broker_url,
                root_metadata=root_file, enrollment_token=token["token"], prefix=cohort,
                tags={"fleet": "demo"},
                window_s=2.0, retrain_interval_s=1.0, telemetry_interval_s=5.0,
                drain_interval_s=0.1, ack_timeout_s=5.0, stop_grace_s=2.0,
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
        wait("every agent enrolled and online", lambda: devices_where(api, ids, online))
        load = Load(
            task, everyone, drifted, poisoned, data.rows_per_s, label_share=data.label_share
        )
        try:
            _story(facts, api, task, load, ids, scenario)
        finally:
            load.stop()
        facts.load_errors = load.errors
        wait("every outbox drained", lambda: all(
            d.agent.outbox.stats().depth == 0 for d in everyone.values()) or None)  # fmt: skip
        return collect(facts, api, everyone)
    finally:
        for fleet in fleets.values():
            fleet.stop()


def _story(
    facts: Facts, api: httpx.Client, task: SensorTask, load: Load, ids: list[str],
    scenario: Scenario,
) -> None:  # fmt: skip
    drift, times = scenario.drift, scenario.hub
    drifted = load.drifted
    step(facts, "v1", f"desired {MODEL} v1 for every device: signed assignment, chunked download")
    config = {"window_s": 2.0, "retrain": True, "retrain_min_samples": 100,
              "telemetry_interval_s": 5.0}  # fmt: skip

    def assign(device_id: str) -> None:
        ok(api.put(f"/devices/{device_id}/desired",
                   json={"model": MODEL, "version": 1, "config": config}))  # fmt: skip

    with ThreadPoolExecutor(max_workers=4) as pool:  # as an operator's script would
        list(pool.map(assign, ids))
    wait("every device serves v1", lambda: devices_where(api, ids, runs(1)))
    load.start()
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

    step(facts, "round", "the alert opened a federated round on v1 (retrain_on_alert)")
    live = wait("the round", lambda: first_round(api))
    say(f"round {live['round_id']}: trigger {live['trigger']}, closes at "
        f"{live['target_deltas']} deltas or in {times.round_deadline_s:g} s")  # fmt: skip
    load.set_phase("round")
    wait("devices told of the round", lambda: all(
        d.learning.hub_config.round_id == live["round_id"] for d in load.devices.values()
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


def alerted(api: httpx.Client) -> dict[str, Any] | None:
    found = ok(api.get("/drift/alerts"))
    return next((a for a in found if a["severity"] == "alert"), None)


def first_round(api: httpx.Client) -> dict[str, Any] | None:
    items = ok(api.get("/rounds", params={"model": MODEL}))["items"]
    return items[0] if items else None


def ended(api: httpx.Client, round_id: str) -> dict[str, Any] | None:
    detail = ok(api.get(f"/rounds/{round_id}"))
    done = detail["state"] in ("accepted", "rejected", "failed", "cancelled")
    return detail if done else None


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


def wait(what: str, probe: Callable[[], T | None], timeout_s: float = STEP_TIMEOUT_S) -> T:
    """Poll ``probe`` until it returns a value; DemoFailed on timeout."""
    started = time.monotonic()
    while (found := probe()) is None:
        if time.monotonic() - started > timeout_s:
            raise DemoFailed(f"waited {timeout_s:.0f} s for {what}")
        time.sleep(0.25)
    say(f"{what} ({time.monotonic() - started:.1f} s)")
    return found


def devices_where(
    api: httpx.Client, ids: list[str], test: Callable[[dict[str, Any]], bool]
) -> list[dict[str, Any]] | None:
    page = ok(api.get("/devices", params={"limit": max(len(ids), 1)}))
    items = [d for d in page["items"] if d["id"] in ids and test(d)]
    return items if len(items) == len(ids) else None


def online(device: dict[str, Any]) -> bool:
    return bool(device["status"] == "active" and device["online"])


def runs(version: int) -> Callable[[dict[str, Any]], bool]:
    def test(device: dict[str, Any]) -> bool:
        active = device["active"]
        return bool(active and active["name"] == MODEL and active["version"] == version)

    return test
