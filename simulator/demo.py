"""``edgefleet demo``: the whole loop on one machine, with nothing faked.

A real hub (embedded broker, SQLite, REST API on a free port, its scheduled jobs) and real
agents (their own keys, outboxes, onnxruntime sessions and local APIs) in one process; the
story (:mod:`simulator.story`) narrates what they do: v1 serves, one cohort drifts, the
hub alerts on the drifted features and cohort, the alert opens a federated round, the
round's candidate v2 passes validation and is released, v2 rolls out 10% -> 50% -> 100%
through its gates, and accuracy on labelled feedback recovers. It ends with a summary
(:mod:`simulator.report`), ``--json-out`` writes the report, and ``--keep DIR`` keeps the
hub's data and the agents' state and says how to look at them.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import tempfile
from pathlib import Path

from simulator import report, story


def main(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.ERROR, format="%(levelname)s %(name)s: %(message)s")
    if args.devices < 2:
        print("edgefleet demo: --devices must be at least 2 (a drifted cohort and the rest)")
        return 2
    workdir = args.keep or Path(tempfile.mkdtemp(prefix="edgefleet-demo-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        facts = story.run(workdir, devices=args.devices)
    except story.DemoFailed as e:
        print(f"\nedgefleet demo: FAILED: {e}")
        return 1
    finally:
        if args.keep is None:
            shutil.rmtree(workdir, ignore_errors=True)
    print("\nSummary")
    print(report.summary(facts))
    if args.json_out is not None:
        report.write_json(facts.report, args.json_out)
        print(f"report: {args.json_out}")
    if args.keep is not None:
        print(
            f"\nkept {workdir}: hub data in hub/, agent state in devices/. To explore:\n"
            f"  edgefleet hub serve --data {workdir / 'hub'} --embedded-broker --http-port 8080\n"
            f"  edgefleet rollout list --hub http://127.0.0.1:8080 --token {facts.token}\n"
            f"  edgefleet drift alerts --hub http://127.0.0.1:8080 --token {facts.token}"
        )
    else:
        print("\nRun with --keep DIR to keep the hub's data and explore it afterwards.")
    return 0
