"""``edgefleet round``: open, list, read and cancel federated rounds; a model's FL policy
and validation set.

Thin shells over the REST API (``/api/v1/rounds``, ``/api/v1/models/{name}/fl-policy``,
``/api/v1/models/{name}/validation-set``) through :mod:`hub.cli.client`: ``--hub URL
--token T`` for a running hub, or ``--data DIR`` on its machine (then the running hub
announces the round to devices on its next reconcile).
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

from hub.cli.client import add_target_options, connect, segment
from hub.cli.common import Subcommands, add_command, json_option, print_json, show_date
from hub.errors import InvalidRequest
from hub.rounds.aggregate import PRESETS

STATES = ("open", "closing", "aggregated", "accepted", "rejected", "failed", "cancelled")
_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhd]?)")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}

EPILOG = """\
A round collects one delta per device on a released base version, closes at --target
usable deltas or at its deadline with at least --min, aggregates them into a candidate
version, and judges it on the model's validation set (`round validation-set`): it is
accepted when it beats its parent (by the policy's margin) and released when the policy
says auto_release and the release key is on the hub. Devices whose desired model is the
base hear of the round through their desired state and send their next delta to it.

examples:
  edgefleet round validation-set demo holdout.npz      the hub's own labelled rows (X, y)
  edgefleet round policy demo --auto-release --strategy default
  edgefleet round start demo --target 30 --min 10 --duration 30m
  edgefleet round list --model demo --state open
  edgefleet round show demo-r1                          deltas by verdict, the judgement
  edgefleet round cancel demo-r1

The hub is --hub URL --token T (or EDGEFLEET_HUB_URL and EDGEFLEET_TOKEN), or --data DIR.
"""


def duration_s(text: str) -> float:
    """``90``, ``90s``, ``30m``, ``2h``, ``1d`` in seconds (argparse type)."""
    found = _DURATION.fullmatch(text.strip())
    if found is None or float(found.group(1)) <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration such as 90s, 30m, 2h")
    return float(found.group(1)) * _UNITS[found.group(2)]


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``round`` to the root ``edgefleet`` parser."""
    parser = subparsers.add_parser(
        "round",
        help="open, list, show and cancel federated rounds",
        description="Open, list, show and cancel federated rounds; set a model's FL policy.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands: Subcommands = parser.add_subparsers(
        dest="round_command", metavar="SUBCOMMAND", required=True
    )
    start = add_command(commands, "round start", "open a round of a model", EPILOG, _start)
    start.add_argument("model", metavar="MODEL", help="the model's name")
    start.add_argument(
        "--base", type=int, metavar="V", help="base version (default: latest released)"
    )
    start.add_argument("--strategy", choices=sorted(PRESETS), help="default: the model's policy")
    start.add_argument("--min", type=int, metavar="N", help="fewest usable deltas at the deadline")
    start.add_argument("--target", type=int, metavar="N", help="close at once with this many")
    start.add_argument("--duration", type=duration_s, metavar="D", help="deadline: 90s, 30m, 2h")
    add_target_options(start)
    json_option(start)

    listing = add_command(commands, "round list", "list rounds, newest first", EPILOG, _list)
    listing.add_argument("--model", help="only this model's")
    listing.add_argument("--state", choices=STATES, help="only rounds in this state")
    add_target_options(listing)
    json_option(listing)

    show = add_command(commands, "round show", "a round, its deltas and judgement", EPILOG, _show)
    show.add_argument("round_id", metavar="ID", help="the round id (MODEL-rN)")
    add_target_options(show)
    json_option(show)

    cancel = add_command(commands, "round cancel", "cancel a live round", EPILOG, _cancel)
    cancel.add_argument("round_id", metavar="ID", help="the round id")
    add_target_options(cancel)

    policy = add_command(
        commands, "round policy", "show or change a model's FL policy", EPILOG, _policy
    )
    policy.add_argument("model", metavar="MODEL", help="the model's name")
    policy.add_argument(
        "--mode", choices=("rounds", "buffered", "exact"),
        help="rounds, FedBuff, or exact (rounds of sufficient statistics, linear heads)",
    )  # fmt: skip
    policy.add_argument("--strategy", choices=sorted(PRESETS), help="aggregation strategy")
    policy.add_argument("--max-norm", type=float, help="delta L2 bound (pushed to devices)")
    policy.add_argument("--margin", type=float, help="gain a candidate needs (0.01 = 1 point)")
    policy.add_argument("--buffer-size", type=int, help="buffered: deltas per flush (K)")
    policy.add_argument("--max-staleness", type=int, help="buffered: versions behind at most")
    schedule = policy.add_mutually_exclusive_group()
    schedule.add_argument(
        "--every", type=duration_s, metavar="D",
        help="open a round this long after the last one opened: 6h, 1d",
    )  # fmt: skip
    schedule.add_argument(
        "--no-schedule", action="store_true", help="only operators and drift alerts open rounds"
    )
    release = policy.add_mutually_exclusive_group()
    release.add_argument("--auto-release", dest="auto_release", action="store_true", default=None)
    release.add_argument("--no-auto-release", dest="auto_release", action="store_false")
    add_target_options(policy)

    validation = add_command(
        commands, "round validation-set", "store the rows candidates are judged on", EPILOG,
        _validation,
    )  # fmt: skip
    validation.add_argument("model", metavar="MODEL", help="the model's name")
    validation.add_argument("file", type=Path, metavar="FILE.npz", help="X and y")
    add_target_options(validation)


def _start(args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"model": args.model}
    for key, value in (
        ("base_version", args.base),
        ("strategy", args.strategy),
        ("min_deltas", args.min),
        ("target_deltas", args.target),
        ("duration_s", args.duration),
    ):
        if value is not None:
            body[key] = value
    with connect(args) as hub:
        record = hub.send("POST", "/api/v1/rounds", json=body)
    if args.json:
        print_json(record)
        return 0
    print(
        f"round {record['round_id']} open on {record['model']} v{record['base_version']} "
        f"({record['strategy']}): closes at {record['target_deltas']} deltas, or at "
        f"{show_date(record['deadline_at'])} with at least {record['min_deltas']}"
    )
    return 0


def _list(args: argparse.Namespace) -> int:
    with connect(args) as hub:
        rows = hub.all("/api/v1/rounds", model=args.model, state=args.state)
    if args.json:
        print_json(rows)
        return 0
    print(f"{'ROUND':<24}  {'BASE':>4}  {'STATE':<10}  {'OPENED':<16}  {'CANDIDATE':>9}  REASON")
    for r in rows:
        candidate = f"v{r['candidate_version']}" if r["candidate_version"] else "-"
        print(
            f"{r['round_id']:<24}  {r['base_version']:>4}  {r['state']:<10}  "
            f"{show_date(r['opened_at']):<16}  {candidate:>9}  {r['reason'] or '-'}"
        )
    return 0


def _show(args: argparse.Namespace) -> int:
    with connect(args) as hub:
        r = hub.get(f"/api/v1/rounds/{segment(args.round_id)}")
    if args.json:
        print_json(r)
        return 0
    d = r["deltas"]
    print(f"round {r['round_id']}: {r['model']} v{r['base_version']}, {r['state']}")
    print(f"  strategy {r['strategy']}, close at {r['target_deltas']} (min {r['min_deltas']})")
    print(f"  opened {show_date(r['opened_at'])}, deadline {show_date(r['deadline_at'])}")
    print(
        f"  deltas: {d['accepted']} waiting, {d['used']} used, {d['unused']} unused, "
        f"flagged {_reasons(d['flagged'])}, refused {_reasons(d['refused'])}"
    )
    if r["candidate_version"]:
        print(f"  candidate v{r['candidate_version']}")
    judgement = r.get("judgement")
    if judgement:
        print(f"  judgement: {judgement.get('reason')}")
        for key, value in sorted(judgement.get("validation", {}).items()):
            print(f"    {key} {value:.4g}")
    if r["reason"]:
        print(f"  reason: {r['reason']}")
    return 0


def _reasons(counts: dict[str, int]) -> str:
    return ", ".join(f"{n} {reason}" for reason, n in sorted(counts.items())) or "none"


def _cancel(args: argparse.Namespace) -> int:
    with connect(args) as hub:
        r = hub.send("POST", f"/api/v1/rounds/{segment(args.round_id)}/cancel")
    print(f"round {r['round_id']} {r['state']}")
    return 0


def _policy(args: argparse.Namespace) -> int:
    path = f"/api/v1/models/{segment(args.model)}/fl-policy"
    with connect(args) as hub:
        current = hub.get(path)
        change: dict[str, Any] = {}
        for key, value in (
            ("mode", args.mode),
            ("strategy", args.strategy),
            ("max_norm", args.max_norm),
            ("margin", args.margin),
            ("auto_release", args.auto_release),
        ):
            if value is not None:
                change[key] = value
        if args.every is not None or args.no_schedule:
            change["every_ms"] = None if args.no_schedule else int(args.every * 1000)
        buffer = dict(current["buffer"])
        for key, value in (("size", args.buffer_size), ("max_staleness", args.max_staleness)):
            if value is not None:
                buffer[key] = value
        if buffer != current["buffer"]:
            change["buffer"] = buffer
        if change:
            current = hub.send("PUT", path, json={**current, **change})
    print_json(current)
    return 0


def _validation(args: argparse.Namespace) -> int:
    try:
        data = args.file.read_bytes()
    except OSError as e:
        raise InvalidRequest(f"cannot read {args.file}: {e.strerror}") from e
    with connect(args) as hub:
        stored = hub.send(
            "PUT",
            f"/api/v1/models/{segment(args.model)}/validation-set",
            files={"validation": (args.file.name, data)},
        )
    print(f"validation set of {args.model}: {stored['rows']} rows")
    return 0
