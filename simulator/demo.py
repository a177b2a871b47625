"""``edgefleet demo`` and ``edgefleet sim --scenario``: a scenario's whole loop, nothing faked.

A real hub (embedded broker, SQLite, REST API on a free port, its scheduled jobs) and real
agents (their own keys, outboxes, onnxruntime sessions and local APIs) in one process; the
story (:mod:`simulator.story`) narrates what they do as the scenario
(:mod:`simulator.scenario`, ``full-loop`` for the demo) lays it out: v1 serves, one cohort
drifts, the hub alerts on the drifted features and cohort, the alert opens a federated
round, the round's candidate v2 passes validation and is released, v2 rolls out through its
gated stages, and accuracy on labelled feedback recovers. It ends with a summary
(:mod:`simulator.report`); ``--json-out`` writes the report, and ``--keep DIR`` keeps the
hub's data and the agents' state and says how to look at them.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from simulator.scenario import Scenario, ScenarioError, load

if TYPE_CHECKING:  # the hub, the agents and the story load only once the arguments hold
    from simulator import hubs
    from simulator.watch import Watch


@dataclasses.dataclass(frozen=True)
class Where:
    """Where the scenario's hub is: ``hub_url`` and ``token`` for one elsewhere (its broker
    ``broker_url``, its root ``root_file``); else a hub in this process, over an embedded
    broker or ``broker_url``'s."""

    hub_url: str | None = None
    token: str | None = None
    broker_url: str | None = None
    root_file: Path | None = None


@dataclasses.dataclass(frozen=True)
class Options:
    """What the command line may change in a run (``None``: the scenario's)."""

    devices: int | None = None
    duration_s: float | None = None
    seed: int | None = None
    live: bool = False
    plot: Path | None = None


def main(args: argparse.Namespace) -> int:
    """``edgefleet demo``."""
    return run("demo", args.scenario, devices=args.devices, json_out=args.json_out, keep=args.keep)


def run(
    prog: str, scenario_name: str, *, devices: int | None, json_out: Path | None,
    keep: Path | None, where: Where | None = None, options: Options | None = None,
) -> int:  # fmt: skip
    """Run ``scenario_name`` against the hub ``where`` says (default: one in this process);
    the exit status (0, 1 failed, 2 bad arguments)."""
    logging.basicConfig(level=logging.ERROR, format="%(levelname)s %(name)s: %(message)s")
    where, options = where or Where(), options or Options(devices=devices)
    try:
        scenario = _adjusted(load(scenario_name), options)
    except ScenarioError as e:
        return _refuse(prog, e)
    if options.plot is not None:
        from simulator.watch import PlotUnavailable, check_plot

        try:
            check_plot()
        except PlotUnavailable as e:
            return _refuse(prog, e)
    size = scenario.devices if devices is None else devices
    if size < len(scenario.cohorts):
        return _refuse(
            prog,
            f"--devices must be at least {len(scenario.cohorts)} "
            f"(one per cohort of {scenario.name})",
        )
    from simulator import report, story

    workdir = keep or Path(tempfile.mkdtemp(prefix="edgefleet-demo-"))
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"scenario {scenario.name}: {scenario.description}")
    try:
        with _hub(workdir, where) as hub, _watch(hub, options) as watch:
            facts = story.run(workdir, hub, devices=size, scenario=scenario, watch=watch)
    except story.DemoFailed as e:
        print(f"\nedgefleet {prog}: FAILED: {e}")
        return 1
    finally:
        if keep is None:
            shutil.rmtree(workdir, ignore_errors=True)
    print("\nSummary")
    print(report.summary(facts))
    if json_out is not None:
        report.write_json(facts.report, json_out)
        print(f"report: {json_out}")
    if watch is not None and options.plot is not None:
        for path in watch.plot(options.plot):
            print(f"chart: {path}")
    if where.hub_url is not None:
        print(f"\nthe hub at {where.hub_url} keeps this run: its dashboard is {where.hub_url}/ui")
        if keep is not None:
            print(f"kept {workdir}: agent state in devices/")
    elif keep is not None:
        print(explore(workdir, facts.token))
    else:
        print("\nRun with --keep DIR to keep the hub's data and explore it afterwards.")
    return 0


def _refuse(prog: str, why: object) -> int:
    """Say what is wrong with the arguments in one line; the exit status for it."""
    print(f"edgefleet {prog}: {why}", file=sys.stderr)
    return 2


def explore(workdir: Path, token: str) -> str:
    """How to look at a kept run once the demo's own hub has stopped: serve the kept hub
    again (its broker on a free port, since 1883 is often a local mosquitto's) and sign in
    to its dashboard, or ask its REST API, with the demo's admin token, which is kept in
    the hub's store like any other."""
    hub = "http://127.0.0.1:8080"
    return (
        f"\nkept {workdir}: hub data in hub/, agent state in devices/. To explore:\n"
        f"  edgefleet hub serve --data {workdir / 'hub'} --embedded-broker --broker-port 0 "
        f"--port 8080\n"
        f"  dashboard: {hub}/ui, sign in with the token {token}\n"
        f"  edgefleet rollout list --hub {hub} --token {token}\n"
        f"  edgefleet drift alerts --hub {hub} --token {token}"
    )


def _adjusted(scenario: Scenario, options: Options) -> Scenario:
    """The scenario with the command line's ``--duration`` and ``--seed``."""
    if options.duration_s is not None:
        scenario = dataclasses.replace(scenario, duration_s=options.duration_s)
    if options.seed is not None:
        scenario = dataclasses.replace(
            scenario, data=dataclasses.replace(scenario.data, seed=options.seed)
        )
    return scenario


@contextlib.contextmanager
def _watch(hub: hubs.HubLink, options: Options) -> Iterator[Watch | None]:
    """Sample the run only when someone looks: the live table or the charts."""
    if not (options.live or options.plot):
        yield None
        return
    from simulator.watch import Watch

    with Watch(hub.api, live=options.live) as watch:
        yield watch


@contextlib.contextmanager
def _hub(workdir: Path, where: Where) -> Iterator[hubs.HubLink]:
    from simulator import hubs

    if where.hub_url is None:
        with hubs.in_process(workdir, where.broker_url) as link:
            yield link
        return
    assert where.token is not None
    assert where.broker_url is not None
    assert where.root_file is not None
    with hubs.remote(where.hub_url, where.token, where.broker_url, where.root_file) as link:
        yield link
