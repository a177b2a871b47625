"""``edgefleet hub device show`` and ``hub device history``: what a device reported.

``show`` prints the device's twin (``GET /api/v1/devices/{id}/twin``): the desired
version beside the reported one, whether they agree, and what stands between them (the
last refused, failed or rolled-back install with its reason; for a pending device, why
its hello did not enrol it). ``history`` lists one kind of record the device sent
(deltas, data windows, telemetry, state reports), newest first. ``--json`` prints the
hub's answer as it came, for scripts.
"""

from __future__ import annotations

import argparse
from typing import Any

from hub.cli.client import add_target_options, connect, segment
from hub.cli.common import Subcommands, add_command, json_option, positive, print_json, show_date

KINDS = ("states", "deltas", "windows", "telemetry")

SHOW_EPILOG = """\
examples:
  edgefleet hub device show pump-17
  edgefleet hub device show pump-17 --json | jq .last_refusal.reason
"""

HISTORY_EPILOG = """\
Records are newest first by the time the hub received them; --since and --until are
milliseconds since the epoch on the hub's clock (--until excluded).

examples:
  edgefleet hub device history pump-17                       state reports
  edgefleet hub device history pump-17 --kind deltas --model churn:3
  edgefleet hub device history pump-17 --kind deltas --tensors --limit 1 --json
"""


def add_commands(devices: Subcommands) -> None:
    """Add ``show`` and ``history`` to ``hub device``."""
    show = add_command(
        devices, "hub device show", "show a device's twin: desired, reported, last refusal",
        SHOW_EPILOG, _show,
    )  # fmt: skip
    show.add_argument("device_id", metavar="DEVICE", help="the device id")
    add_target_options(show)
    json_option(show)

    history = add_command(
        devices, "hub device history", "list what a device sent, newest first",
        HISTORY_EPILOG, _history,
    )  # fmt: skip
    history.add_argument("device_id", metavar="DEVICE", help="the device id")
    history.add_argument("--kind", choices=KINDS, default="states", help="default: states")
    history.add_argument("--model", metavar="NAME[:VERSION]", help="only about this model")
    history.add_argument("--since", type=int, metavar="MS", help="received at or after")
    history.add_argument("--until", type=int, metavar="MS", help="received before")
    history.add_argument("--limit", type=positive, default=20, help="how many (default 20)")
    history.add_argument("--tensors", action="store_true", help="deltas: include the tensors")
    add_target_options(history)
    json_option(history)


def _show(args: argparse.Namespace) -> int:
    with connect(args) as hub:
        twin = hub.get(f"/api/v1/devices/{segment(args.device_id)}/twin")
    if args.json:
        print_json(twin)
        return 0
    online = "online" if twin["online"] else "offline"
    print(
        f"{twin['device_id']}: {twin['status']}, {online}, health {twin['health']}, "
        f"last seen {show_date(twin['last_seen'])}"
    )
    desired = twin["desired"]
    if desired is None:
        print("  desired   none")
    else:
        published = show_date(desired["published_at"]) if desired["published_at"] else "not yet"
        print(
            f"  desired   {_model(desired['model'])} (assignment {desired['assignment_version']},"
            f" set {show_date(desired['set_at'])} by {desired['set_by']}, published {published})"
        )
    reported = twin["reported"]
    print(f"  reported  {_model(reported['model'])} (at {show_date(reported['at'])})")
    sync = "yes" if twin["in_sync"] else "no"
    print(f"  in sync   {'- (nothing desired)' if desired is None else sync}")
    refusal = twin["last_refusal"]
    if refusal is not None:
        print(
            f"  refusal   {refusal['outcome']} {_model(refusal['model'])} at "
            f"{show_date(refusal['at'])}: {refusal['reason'] or '(no reason given)'}"
        )
    waiting = twin["enrollment_refusal"]
    if waiting is not None:
        print(f"  waits     for approval since {show_date(waiting['at'])}: {waiting['reason']}")
    return 0


def _history(args: argparse.Namespace) -> int:
    include = "tensors" if args.tensors and args.kind == "deltas" else None
    with connect(args) as hub:
        page = hub.get(
            f"/api/v1/{args.kind}",
            device=args.device_id,
            model=args.model,
            since=args.since,
            until=args.until,
            limit=args.limit,
            include=include,
        )
    if args.json:
        print_json(page)
        return 0
    for item in page["items"]:
        print(f"{show_date(item['received_at'])}  #{item['seq']:<6}  {LINES[args.kind](item)}")
    print(f"{len(page['items'])} of {page['total']} {args.kind}")
    return 0


def _model(ref: dict[str, Any] | None) -> str:
    return f"{ref['name']} v{ref['version']}" if ref else "nothing"


def _delta(item: dict[str, Any]) -> str:
    tensors = item["tensors"]
    shapes = " ".join(f"{t['name']}{t['shape']}" for t in tensors) if tensors else ""
    return (
        f"on {_model(item['base'])}: {item['num_samples']} samples, {item['metric']} "
        f"{item['before']:.4g} -> {item['after']:.4g}, {item['tensors_bytes']} bytes, "
        f"{item['status']} {shapes}".rstrip()
    )


def _window(item: dict[str, Any]) -> str:
    report = item["report"]
    minutes = (item["window_end"] - item["window_start"]) / 60_000
    return (
        f"{minutes:g} min of {_model(item['model'])}: {report.get('inference_count', 0)} rows, "
        f"{report.get('error_count', 0)} errors, {len(report.get('features', []))} features"
    )


def _telemetry(item: dict[str, Any]) -> str:
    r = item["report"]
    return (
        f"{r.get('inference_count', 0)} rows, {r.get('error_count', 0)} errors, p95 "
        f"{r.get('latency_p95_ms', 0):.3g} ms, outbox {r.get('outbox_depth', 0)} "
        f"({r.get('outbox_dropped', 0)} dropped)"
    )


def _state(item: dict[str, Any]) -> str:
    r = item["report"]
    line = f"runs {_model(r.get('active'))}"
    install = r.get("install")
    if install:
        reason = f": {install['reason']}" if install.get("reason") else ""
        line += f"; install of {_model(install.get('model'))} {install.get('status')}{reason}"
    flags = r.get("flags") or []
    return line + (f"; flags {','.join(flags)}" if flags else "")


LINES = {"deltas": _delta, "windows": _window, "telemetry": _telemetry, "states": _state}
