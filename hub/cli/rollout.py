"""``edgefleet rollout start|list|show|watch|approve|pause|resume|abort|rollback``: staged
rollouts through the hub's REST API (``--hub``/``--token``, or ``--data`` in process).

``rollout set`` (one device, no stages) stays in :mod:`hub.cli.model`.
"""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path
from typing import Any

from hub.cli.client import CliFailure, add_target_options, connect, segment
from hub.cli.common import Subcommands, add_command, json_option, positive, print_json

START_EPILOG = """\
Starts a staged rollout of a released version: each stage takes a share of the target
(cumulative, in a stable order by a keyed hash of the device id), bakes, and passes its
gates before the next begins; a failing gate halts and sends every touched device back to
the version it ran before (docs/rollouts.md). Prints the rollout's id.

examples:
  edgefleet rollout start --model churn --version 4 --tag region=eu --stages 10,50,100
  edgefleet rollout start --model churn --version 4 --bake 10m --approve-before 2 --dry-run
  edgefleet rollout start --model churn --version 4 --shadow 10 --stages 10,50,100
  edgefleet rollout start --spec rollout.json
"""
SHOW_EPILOG = """\
Shows the phase and stage, the devices per stage and state, each gate's estimate, interval,
thresholds and verdict, and the timeline. `watch` redraws it every 2 s until the rollout
ends: exit 0 completed, 1 rolled back or aborted, 2 paused or waiting for approval.
`list` lists rollouts, newest first.
"""
EXAMPLES = {
    "list": "edgefleet rollout list --model churn",
    "show": "edgefleet rollout show r-7",
    "watch": "edgefleet rollout watch r-7 --hub https://hub:8080",
    "approve": "edgefleet rollout approve r-7",
    "pause": "edgefleet rollout pause r-7 --reason 'support ticket 4411'",
    "resume": "edgefleet rollout resume r-7 --accept-inconclusive",
    "abort": "edgefleet rollout abort r-7 --reason 'wrong version'",
    "rollback": "edgefleet rollout rollback r-7 --reason 'accuracy complaints'",
}


def epilog(text: str, name: str) -> str:
    return f"{text}\nexample:\n  {EXAMPLES[name]}\n"


ACT_EPILOG = """\
approve: start the stage that waits for approval. pause: take no new devices (a failing
gate still halts). resume [--accept-inconclusive]: restart the stage's bake (accepting its
inconclusive gates as they stand). abort: stop where it is, devices keep what they have.
rollback: send every touched device back to the version it ran before.
"""
DURATION = re.compile(r"^(\d+)(ms|s|m|h)?$")
UNITS_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, None: 1000}


def duration_ms(text: str) -> int:
    """``90``, ``90s``, ``10m``, ``2h``, ``500ms`` (plain numbers are seconds)."""
    found = DURATION.match(text.strip())
    if found is None:
        raise argparse.ArgumentTypeError(f"not a duration (like 30s, 10m, 2h): {text!r}")
    return int(found.group(1)) * UNITS_MS[found.group(2)]


def pair(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"not KEY=VALUE: {text!r}")
    return key, value


def add_commands(commands: Subcommands) -> None:
    """Add the staged-rollout subcommands beside ``rollout set``."""
    start = add_command(commands, "rollout start", "start a staged rollout", START_EPILOG, _start)
    start.add_argument("--model", help="model name")
    start.add_argument("--version", type=positive, help="a released version")
    start.add_argument("--tag", type=pair, action="append", default=[], metavar="K=V",
                       help="target devices with this tag (repeat: all must match)")  # fmt: skip
    start.add_argument("--device", action="append", default=[], metavar="ID",
                       help="target exactly these devices (repeat)")  # fmt: skip
    start.add_argument("--stages", default="1,10,50,100", metavar="P,P,...",
                       help="cumulative percentages of the target, ending at 100")  # fmt: skip
    start.add_argument("--bake", type=duration_ms, metavar="T", help="bake per stage (10m)")
    start.add_argument("--extend", type=duration_ms, metavar="T",
                       help="longer bake while a gate is inconclusive (20m)")  # fmt: skip
    start.add_argument("--approve-before", type=positive, action="append", default=[],
                       metavar="N", help="a human approves before stage N starts")  # fmt: skip
    start.add_argument("--max-updating", type=positive, metavar="N", help="at once (50)")
    start.add_argument("--timeout", type=duration_ms, metavar="T", help="per device (30m)")
    start.add_argument("--retries", type=int, metavar="N", help="per device (2)")
    start.add_argument("--seed", type=int, metavar="N", help="of the device order (0)")
    start.add_argument("--canary-tag", type=pair, action="append", default=[], metavar="K=V",
                       help="devices with this tag go first")  # fmt: skip
    start.add_argument("--stratify-by", action="append", default=[], metavar="KEY",
                       help="compare canaries with control of the same tag value")  # fmt: skip
    start.add_argument(
        "--shadow",
        type=float,
        metavar="P",
        help="first a shadow stage on P%% of the target: devices run the version "
        "beside the served one, judged by shadow_agreement, before any serves it",
    )
    start.add_argument("--spec", type=Path, metavar="FILE.json", help="the whole spec as JSON")
    start.add_argument("--dry-run", action="store_true", help="show each stage's devices only")
    add_target_options(start)
    json_option(start)

    listing = add_command(
        commands, "rollout list", "list rollouts", epilog(SHOW_EPILOG, "list"), _list
    )
    listing.add_argument("--model", help="only this model's")
    add_target_options(listing)
    json_option(listing)

    for name, handler in (("show", _show), ("watch", _watch)):
        shown = add_command(commands, f"rollout {name}", f"{name} one rollout",
                            epilog(SHOW_EPILOG, name), handler)  # fmt: skip
        shown.add_argument("id", help="the rollout's id (r-<n>)")
        add_target_options(shown)
        if name == "show":
            json_option(shown)

    for action in ("approve", "pause", "resume", "abort", "rollback"):
        acted = add_command(commands, f"rollout {action}", f"{action} a rollout",
                            epilog(ACT_EPILOG, action), _act)  # fmt: skip
        acted.set_defaults(action=action)
        acted.add_argument("id", help="the rollout's id (r-<n>)")
        acted.add_argument("--reason", default="", help="why (kept in the timeline and audit)")
        if action == "resume":
            acted.add_argument("--accept-inconclusive", action="store_true",
                               help="accept the stage's inconclusive gates")  # fmt: skip
        add_target_options(acted)


def spec_of(args: argparse.Namespace) -> dict[str, Any]:
    """The spec JSON from ``--spec`` or the flags."""
    if args.spec is not None:
        try:
            loaded: dict[str, Any] = json.loads(args.spec.read_bytes())
        except ValueError as e:
            raise CliFailure(f"{args.spec}: not a JSON rollout spec: {e}", 2) from None
        return loaded
    if args.model is None or args.version is None:
        raise CliFailure("give --model and --version (or --spec FILE.json)", 2)
    try:
        percents = [float(p) for p in args.stages.split(",")]
    except ValueError:
        raise CliFailure(f"--stages: not percentages: {args.stages!r}", 2) from None
    stages: list[dict[str, Any]] = []
    for k, percent in enumerate(percents, start=1):
        stage: dict[str, Any] = {"percent": percent}
        if args.bake is not None:
            stage["bake_ms"] = args.bake
        if args.extend is not None:
            stage["extend_ms"] = args.extend
        if k in args.approve_before:
            stage["approval"] = True
        if percent == 100:
            stage["gates"] = [{"metric": "update_success"}]
        stages.append(stage)
    spec: dict[str, Any] = {"model": args.model, "version": args.version, "stages": stages}
    spec["target"] = {"tags": dict(args.tag), "device_ids": list(args.device)}
    options = {"max_updating": args.max_updating, "device_timeout_ms": args.timeout,
               "retries": args.retries, "seed": args.seed}  # fmt: skip
    spec |= {k: v for k, v in options.items() if v is not None}
    if args.canary_tag:
        spec["canary_tags"] = dict(args.canary_tag)
    if args.stratify_by:
        spec["stratify_by"] = list(args.stratify_by)
    if args.shadow is not None:
        shadow: dict[str, Any] = {"percent": args.shadow}
        if args.bake is not None:
            shadow["bake_ms"] = args.bake
        if args.extend is not None:
            shadow["extend_ms"] = args.extend
        spec["shadow"] = shadow
    return spec


def _start(args: argparse.Namespace) -> int:
    spec = spec_of(args)
    with connect(args) as hub:
        if args.dry_run:
            found = hub.send("POST", "/api/v1/rollouts/dry-run", json=spec)
        else:
            view = hub.send("POST", "/api/v1/rollouts", json=spec)
    if args.dry_run:
        if args.json:
            print_json(found)
            return 0
        print(f"target: {found['target_size']} devices ({found['pinned']} pinned canaries)")
        if found["shadow"]:
            ids = found["shadow"]
            shown = ", ".join(ids[:8]) + (", ..." if len(ids) > 8 else "")
            print(f"  shadow: {len(ids)}  {shown}")
        for k, ids in enumerate(found["stages"], start=1):
            shown = ", ".join(ids[:8]) + (", ..." if len(ids) > 8 else "")
            print(f"  stage {k}: +{len(ids)}  {shown}")
        for warning in found["warnings"]:
            print(f"warning: {warning}")
        return 0
    if args.json:
        print_json(view)
        return 0
    print(view["id"])
    return 0


def _list(args: argparse.Namespace) -> int:
    with connect(args) as hub:
        found = hub.get("/api/v1/rollouts", model=args.model)
    if args.json:
        print_json(found)
        return 0
    if not found:
        print("no rollouts")
    for r in found:
        stage = "shadow" if r["stage"] < 0 else f"stage {r['stage'] + 1}"
        print(f"{r['id']:<8} {r['model']} v{r['version']:<5} {r['phase']:<18} {stage}")
    return 0


def _show(args: argparse.Namespace) -> int:
    with connect(args) as hub:
        view = hub.get(f"/api/v1/rollouts/{segment(args.id)}")
    if args.json:
        print_json(view)
        return 0
    print_view(view)
    return 0


def print_view(view: dict[str, Any]) -> None:
    stage = "shadow stage" if view["stage"] < 0 else f"stage {view['stage'] + 1}"
    print(f"{view['id']}: {view['model']} v{view['version']}, {view['phase']} ({stage})")
    if view["reason"]:
        print(f"  reason: {view['reason']}")
    states = ("pending", "updating", "succeeded", "failed", "timed_out", "reverting",
              "rolled_back")  # fmt: skip
    print("  stage  percent  " + "  ".join(states))
    for c in view["counts"]:
        cells = "  ".join(f"{c[s]:>{len(s)}}" for s in states)
        print(f"  {c['stage'] + 1:>5}  {c['percent']:>7g}  {cells}")
    watching = sum(c.get("watching", 0) for c in view["counts"])
    if watching:
        print(
            f"  {watching} updating device(s) already run v{view['version']} and watch it: a "
            "watch ends after 200 predicted rows or 5 minutes (the agent's WatchPolicy)"
        )
    for g in view["gates"]:
        interval = (
            f"[{g['lower']:.4g}, {g['upper']:.4g}]" if g["lower"] is not None else "[no data]"
        )
        print(
            f"  gate {g['metric']} (stage {g['stage'] + 1}): {g['outcome']}, harm {interval} "
            f"vs tolerance {g['tolerance']:g} / effect {g['effect']:g}, {g['test']}, "
            f"alpha {g['alpha']:.3g}, {g['canaries']} canaries / {g['controls']} control: "
            f"{g['reason']}"
        )
    for t in view["timeline"]:
        print(f"  {time.strftime('%H:%M:%S', time.gmtime(t['at_ms'] / 1000))} {t['line']}")


WATCH_EXIT = {"completed": 0, "rolled_back": 1, "aborted": 1, "paused": 2, "awaiting_approval": 2}


def _watch(args: argparse.Namespace) -> int:
    with connect(args) as hub:
        while True:
            view = hub.get(f"/api/v1/rollouts/{segment(args.id)}")
            print("\033[2J\033[H", end="")
            print_view(view)
            if view["phase"] in WATCH_EXIT:
                return WATCH_EXIT[view["phase"]]
            time.sleep(2)


def _act(args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"reason": args.reason}
    if args.action == "approve":
        body = {}
    elif args.action == "resume":
        body = {"accept_inconclusive": args.accept_inconclusive}
    with connect(args) as hub:
        view: dict[str, Any] = hub.send(
            "POST", f"/api/v1/rollouts/{segment(args.id)}/{args.action}", json=body
        )
    print(f"{view['id']}: {view['phase']}")
    return 0
