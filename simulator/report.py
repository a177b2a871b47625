"""What a run of the demo (or a scenario) really did: the JSON report and the human summary.

Every number is read, not assumed: message counts from each agent's outbox (frames
enqueued, committed by the hub's acks, refused, dropped) and the hub's Prometheus counters
(``GET /metrics``: frames ingested, duplicates re-acknowledged, frames rejected),
versions from ``GET /devices``, rollouts from ``GET /rollouts/{id}``, rounds from
``GET /rounds/{id}``, alerts from ``GET /drift/alerts``, accuracy from the scored predictions
(:mod:`simulator.load`), resources from ``getrusage`` of this process.

``messages.sent`` counts the durable frames the agents queued (state, data windows, deltas,
telemetry...; not transient fetches nor last wills); ``delivered`` those whose commit the
hub acknowledged; ``pending`` those still in an outbox when the report is read (the
agents keep running after the drain the story waits for, so a telemetry frame queued in
between is pending, not lost); ``lost`` those neither committed, refused nor pending:
``sent - delivered - refused - pending``, so a frame an outbox dropped is lost.
``duplicates_dropped`` and ``rejected`` are the hub's counts (a redelivered frame is
acknowledged again and not stored twice; ``hub_ingested`` also counts transient frames).

``resources`` are this whole process (hub, broker and agents together) divided by the
device count: an upper bound on one agent's share, not a per-agent measurement.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from agent.device import Device
from simulator import hubs
from simulator.fleet import ResourceMeter


@dataclass
class Facts:
    """What the story saw, filled in as it goes; :func:`collect` reads the rest."""

    devices: int
    model: str
    initial_version: int
    alerts: list[dict[str, Any]] = field(default_factory=list)  # as they opened
    rounds: list[dict[str, Any]] = field(default_factory=list)
    rollout_ids: list[str] = field(default_factory=list)
    accuracy: dict[str, float | None] = field(default_factory=dict)
    load_errors: int = 0
    poisoned: list[str] = field(default_factory=list)
    hub_url: str = ""
    token: str = ""
    hub_in_process: bool = True
    meter: ResourceMeter | None = None  # marked before the agents started
    retired: list[tuple[int, int]] = field(default_factory=list)  # agents a fault stopped
    faults: dict[str, Any] = field(default_factory=dict)
    steady: dict[str, Any] = field(default_factory=dict)
    report: dict[str, Any] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)
    started_wall: float = field(default_factory=time.time)


def collect(facts: Facts, api: httpx.Client, devices: dict[str, Device]) -> Facts:
    """Read the counters, versions, rollouts and alerts into ``facts.report``."""
    boxes = [d.agent.outbox.stats() for d in devices.values()]
    hub = hub_counters(api)
    sent = sum(b.enqueued for b in boxes) + sum(r[0] for r in facts.retired)
    delivered = sum(b.committed for b in boxes) + sum(r[1] for r in facts.retired)
    refused = sum(b.refused for b in boxes)
    pending = sum(b.depth for b in boxes)
    listing = hubs.listing(api)
    versions = Counter(
        str(d["active"]["version"]) if d["active"] else "none"
        for d in listing
        if d["id"] in devices
    )
    alerts = api.get("/drift/alerts").json()
    facts.report = {
        "devices": facts.devices,
        "duration_s": round(time.monotonic() - facts.started, 1),
        "messages": {
            "sent": sent,
            "delivered": delivered,
            "lost": sent - delivered - refused - pending,
            "pending": pending,
            "duplicates_dropped": hub["duplicates"],
            "rejected": hub["rejected"],
            "refused_to_agents": refused,
            "outbox_dropped": sum(b.dropped for b in boxes),
            "hub_ingested": hub["ingested"],
        },
        "versions": {"initial": facts.initial_version, "final_distribution": dict(versions)},
        "rollouts": [_rollout(api.get(f"/rollouts/{r}").json()) for r in facts.rollout_ids],
        "drift": {
            "alerts": [_alert(a) for a in facts.alerts],
            "alerts_at_end": [_alert(a) for a in alerts],
        },
        "rounds": [_round(r, _lineage(api, facts.model, r), facts.poisoned) for r in facts.rounds],
        "accuracy": {k: None if v is None else round(v, 4) for k, v in facts.accuracy.items()},
        "resources": _resources(facts.devices),
        "online": sum(1 for d in listing if d["id"] in devices and d["online"]),
        "downlink": _downlink(devices),
        "hub": {"in_process": facts.hub_in_process, "frames_a_minute_ahead": hub["skew_ahead"]},
    }
    if facts.meter is not None:
        facts.report["resources"]["agents"] = facts.meter.per_device(facts.devices)
    if facts.faults:
        facts.report["faults"] = facts.faults
    if facts.steady:
        facts.report["steady"] = facts.steady
    return facts


def _downlink(devices: dict[str, Device]) -> dict[str, int]:
    """Frames the devices received, by outcome (accepted, duplicate, refused...), and the
    model chunks they fetched again after a bad one."""
    found: Counter[str] = Counter()
    for device in devices.values():
        found.update(device.agent.downlink.counters())
    return dict(sorted(found.items()))


def hub_counters(api: httpx.Client) -> dict[str, int]:
    text = api.get(f"{api.base_url.scheme}://{api.base_url.netloc.decode()}/metrics").text
    totals = {"ingested": 0.0, "duplicates": 0.0, "rejected": 0.0, "skew_ahead": 0.0}
    names = {
        "edgefleet_hub_ingested_total": "ingested",
        "edgefleet_hub_duplicates_total": "duplicates",
        "edgefleet_hub_rejected_total": "rejected",
    }
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in names:
                totals[names[sample.name]] += sample.value
            elif sample.labels.get("direction") == "ahead":  # frames a minute or more ahead
                if sample.name == "edgefleet_hub_clock_skew_seconds_count":
                    totals["skew_ahead"] += sample.value
                elif sample.name.endswith("_bucket") and sample.labels.get("le") == "60.0":
                    totals["skew_ahead"] -= sample.value
    return {k: int(v) for k, v in totals.items()}


def _rollout(view: dict[str, Any]) -> dict[str, Any]:
    outcome = {"completed": "completed", "rolled_back": "rolled_back"}.get(view["phase"], "aborted")
    stages = []
    for index, stage in enumerate(view["spec"]["stages"]):
        gates = [
            {"metric": g["metric"], "outcome": g["outcome"], "canaries": g["canaries"]}
            for g in view["gates"]
            if g["stage"] == index
        ]
        reached = index < view["stage"] or (index == view["stage"] and outcome == "completed")
        stages.append(
            {
                "percent": stage["percent"],
                "outcome": "passed"
                if reached
                else ("halted" if index == view["stage"] else "not_run"),
                "gates": gates,
            }
        )
    return {"id": view["id"], "version": view["version"], "outcome": outcome, "stages": stages}


def _stage_outcome(reached: bool, running: bool) -> str:
    return "passed" if reached else ("halted" if running else "not_run")


def _alert(alert: dict[str, Any]) -> dict[str, Any]:
    """An alert as the report shows it: ``score`` is the largest PSI among its features."""
    detail = alert["detail"]
    psi = {
        f["name"]: f["score"]["psi"] for f in detail["features"] if f["name"] in alert["features"]
    }
    found = [v for v in psi.values() if v is not None]
    return {
        "id": alert["id"],
        "kind": alert["kind"],
        "severity": alert["severity"],
        "features": alert["features"],
        "cohort": ", ".join(alert["cohorts"]),
        "opened_bucket": detail["first_bucket_ms"],
        "score": round(max(found), 4) if found else None,
        "psi": psi,
        "round_requested": alert["round_requested"],
    }


def _lineage(api: httpx.Client, model: str, detail: dict[str, Any]) -> list[dict[str, Any]]:
    """The candidate version's contributions (every delta of the round, with its weight)."""
    if detail["candidate_version"] is None:
        return []
    info = api.get(f"/models/{model}/versions/{detail['candidate_version']}").json()
    found: list[dict[str, Any]] = info["lineage"].get("contributions", [])
    return found


def _round(
    detail: dict[str, Any], contributions: list[dict[str, Any]], poisoned: list[str]
) -> dict[str, Any]:
    """A round; with ``poisoned`` devices, how much of the aggregate their deltas make up."""
    deltas = detail["deltas"]
    bad = [c for c in contributions if c["device_id"] in poisoned]
    good = [c for c in contributions if c["device_id"] not in poisoned]
    return {
        "id": detail["round_id"],
        "base": detail["base_version"],
        "candidate": detail["candidate_version"],
        "state": detail["state"],
        "deltas": deltas["used"],
        "flagged": sum(deltas["flagged"].values()),
        "refused": deltas["refused"],
        "poisoned": {
            "devices": len(poisoned),
            "deltas_used": sum(c["status"] == "used" for c in bad),
            "weight": round(sum(c["weight"] for c in bad), 4),
            "honest_deltas_used": sum(c["status"] == "used" for c in good),
        },
        "judgement": detail.get("judgement"),
    }


def _resources(devices: int) -> dict[str, float]:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    rss_kb = usage.ru_maxrss / (1024 if sys.platform == "darwin" else 1)
    return {
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 1),
        "cpu_s_per_device": round((usage.ru_utime + usage.ru_stime) / devices, 3),
        "rss_mb_per_device": round(rss_kb / 1024 / devices, 2),
    }


def write_json(report: dict[str, Any], path: Path) -> None:
    path.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")


def summary(facts: Facts) -> str:
    """A few lines a person reads first: what happened, and whether nothing was lost."""
    r = facts.report
    m, acc = r["messages"], r["accuracy"]
    lines = [
        f"{r['devices']} devices, {r['duration_s']:.0f} s, "
        f"{r['resources']['cpu_s']:.0f} CPU s for the whole process",
        f"messages: {m['sent']} sent, {m['delivered']} delivered, {m['lost']} lost, "
        f"{m['duplicates_dropped']} duplicates dropped, {m['rejected']} rejected",
    ]
    for alert in r["drift"]["alerts"]:
        named = ", ".join(alert["features"]) or "accuracy"
        lines.append(f"drift: {alert['kind']} {alert['severity']} on {named} "
                     f"in {alert['cohort']}")  # fmt: skip
    for rnd in r["rounds"]:
        bad = rnd["poisoned"]
        poisoned = (
            f"; {bad['deltas_used']} from poisoned devices, {bad['weight']:.0%} of the weight"
            if bad["devices"]
            else ""
        )
        lines.append(f"round {rnd['id']}: v{rnd['base']} -> v{rnd['candidate']} from "
                     f"{rnd['deltas']} deltas ({rnd['flagged']} flagged{poisoned})")  # fmt: skip
    for rollout in r["rollouts"]:
        stages = " -> ".join(f"{s['percent']:g}%" for s in rollout["stages"])
        lines.append(f"rollout {rollout['id']}: v{rollout['version']} {stages}, "
                     f"{rollout['outcome']}")  # fmt: skip
    if steady := r.get("steady"):
        share, mb = steady["cpu_share_per_device"], steady["rss_mb_per_device"]
        lines.append(
            f"steady: {steady['online']} of {r['devices']} online; per device "
            f"{share:.5f} of a core, {mb:.3f} MB over {steady['seconds']:.0f} s"
        )
    for fault in r.get("faults", {}).get("events", []):
        what = ", ".join(f"{k} {v}" for k, v in fault.items() if k not in ("at_s", "kind"))
        lines.append(f"fault at {fault['at_s']:g} s: {fault['kind']} ({what})")
    final = ", ".join(f"v{v}: {n}" for v, n in sorted(r["versions"]["final_distribution"].items()))
    lines.append(f"versions now: {final}")
    lines.append(
        "accuracy on labelled feedback: "
        + ", ".join(f"{k.replace('_', ' ')} {_fmt(v)}" for k, v in acc.items())
    )
    return "\n".join(lines)


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"
