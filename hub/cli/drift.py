"""``edgefleet drift show|alerts|ack``: read a model's drift and handle its alerts.

Thin shells over ``/api/v1/drift`` through :mod:`hub.cli.client` (``--hub URL --token T``
for a running hub, or ``--data DIR`` on its machine). ``show`` prints, per feature, the
newest bucket's scores (PSI beside its no-drift 99.9th percentile ``psi_null``, the test's
p-value, the devices whose own test is significant) and a sparkline of PSI over the
buckets asked for, so a trend reads at a glance.
"""

from __future__ import annotations

import argparse
import re
import time
from typing import Any

from hub.cli.client import add_target_options, connect, segment
from hub.cli.common import Subcommands, add_command, json_option, print_json, show_date
from hub.errors import InvalidRequest

EPILOG = """\
Scores are per bucket (5 minutes by default) and per cohort: the fleet, each model
version (version=3), each device tag (region=eu). A feature warns when its test is
significant beyond the no-drift 99.9th percentile *and* PSI >= 0.1; an alert needs
PSI >= 0.25 (or a significant share of drifting devices) in 2 of the last 3 buckets.
"not enough data" is its own state, neither a pass nor an alarm.

examples:
  edgefleet drift show --model churn --hub https://hub:8080 --token $TOKEN
  edgefleet drift show --model churn --cohort region=eu --since 6h
  edgefleet drift show --model churn --width 1d --since 30d      the daily roll-up
  edgefleet drift alerts --state open
  edgefleet drift alerts --json | jq '.[0].detail.features[0].score'
  edgefleet drift ack 5f3c0a9e1b2d4c6f-drift-1795392000000 --note "known: new sensor batch"
"""

SPARK = "▁▂▃▄▅▆▇█"
_DURATION = re.compile(r"^([1-9][0-9]{0,6})([mhd])$")
_UNIT_MS = {"m": 60_000, "h": 3_600_000, "d": 86_400_000}


def register(subparsers: Subcommands) -> None:
    """Add ``drift`` to the root ``edgefleet`` parser."""
    drift = subparsers.add_parser(
        "drift",
        help="read a model's drift per feature and cohort; list and acknowledge alerts",
        description="Read fleet drift and label-free performance; handle drift alerts.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = drift.add_subparsers(dest="drift_command", metavar="SUBCOMMAND", required=True)
    show = add_command(
        commands, "drift show", "show a model's scores per feature, newest bucket", EPILOG, _show
    )
    show.add_argument("--model", required=True, help="the model's name")
    show.add_argument("--version", type=int, help="its version (default: the newest scope)")
    show.add_argument("--cohort", default="fleet", help="fleet, version=N or TAG=VALUE")
    show.add_argument("--width", choices=("5m", "1h", "1d"), default="5m", help="bucket width")
    show.add_argument(
        "--since", default="6h", metavar="DURATION", help="e.g. 90m, 6h, 30d, all (default 6h)"
    )
    add_target_options(show)
    json_option(show)
    alerts = add_command(commands, "drift alerts", "list drift alerts", EPILOG, _alerts)
    alerts.add_argument("--state", choices=("open", "acknowledged", "resolved"))
    alerts.add_argument("--model", help="only this model's")
    add_target_options(alerts)
    json_option(alerts)
    ack = add_command(commands, "drift ack", "acknowledge an alert", EPILOG, _ack)
    ack.add_argument("id", help="the alert id (from `drift alerts`)")
    ack.add_argument("--note", help="why (kept in the audit log)")
    add_target_options(ack)
    json_option(ack)


def duration_ms(text: str) -> int:
    """``90m``, ``6h``, ``30d`` in milliseconds; ``all`` is everything kept."""
    if text == "all":
        return 2**52
    found = _DURATION.match(text)
    if found is None:
        raise InvalidRequest(f"--since {text!r}: expected a number and m, h or d (e.g. 6h)")
    return int(found.group(1)) * _UNIT_MS[found.group(2)]


def _show(args: argparse.Namespace) -> int:
    since = max(int(time.time() * 1000) - duration_ms(args.since), 0)
    with connect(args) as hub:
        trend = hub.get(
            "/api/v1/drift",
            model=args.model,
            version=args.version,
            cohort=args.cohort,
            width=args.width,
            since=since,
        )
    if args.json:
        print_json(trend)
        return 0
    buckets = trend["buckets"]
    if not buckets:
        print(f"{args.model}: no scored {args.width} buckets for {args.cohort} since {args.since}")
        return 0
    newest = buckets[-1]
    devices = newest.get("devices")
    print(
        f"{trend['model']} v{trend['version']}, {trend['cohort']}, bucket "
        f"{show_date(newest['start_ms'])} ({len(buckets)} bucket(s), "
        f"{'?' if devices is None else devices} device(s) in the newest)"
    )
    print(f"{'FEATURE':<16}  {'STATE':<12}  {'ROWS':>7}  {'PSI':>6}  {'PSI_NULL':>8}  "
          f"{'P':>8}  {'DRIFTING':>8}  TREND")  # fmt: skip
    for r, score in enumerate(newest["scores"]):
        drifting = _ratio(newest, r)
        spark = _spark([b["scores"][r]["psi"] for b in buckets])
        state = score["state"] if score["state"] == "scored" else "not enough"
        print(
            f"{score['name'][:16]:<16}  {state:<12}  {score['n']:>7}  {_num(score['psi'])}  "
            f"{_num(score['psi_null'], 8)}  {_p(score['p'])}  {drifting:>8}  {spark}"
        )
    perf = newest.get("performance") or {}
    if perf.get("estimated_accuracy") is not None:
        print(
            f"estimated accuracy {perf['estimated_accuracy']:.3f} "
            f"(reference {_num(perf.get('reference_accuracy')).strip()})"
        )
    return 0


def _ratio(bucket: dict[str, Any], r: int) -> str:
    drifting, scored = bucket.get("drifting_devices") or [], bucket.get("scored_devices") or []
    if r >= len(scored) or not scored[r]:
        return "-"
    return f"{drifting[r]}/{scored[r]}"


def _spark(values: list[float | None]) -> str:
    top = max((v for v in values if v is not None), default=0.0) or 1.0
    return "".join(
        " " if v is None else SPARK[min(int(v / top * (len(SPARK) - 1)), len(SPARK) - 1)]
        for v in values
    )


def _num(value: float | None, width: int = 6) -> str:
    return f"{'-':>{width}}" if value is None else f"{value:>{width}.3f}"


def _p(value: float | None) -> str:
    return f"{'-':>8}" if value is None else f"{value:>8.1e}"


def _alerts(args: argparse.Namespace) -> int:
    with connect(args) as hub:
        rows = hub.get("/api/v1/drift/alerts", state=args.state, model=args.model)
    if args.json:
        print_json(rows)
        return 0
    print(f"{'ID':<40}  {'MODEL':<12}  {'STATE':<12}  {'SEVERITY':<8}  {'UPDATED':<16}  "
          "FEATURES / COHORTS")  # fmt: skip
    for row in rows:
        names = f"{','.join(row['features']) or '-'} / {','.join(row['cohorts']) or '-'}"
        print(
            f"{row['id']:<40}  {row['model'][:12]:<12}  {row['state']:<12}  "
            f"{row['severity']:<8}  {show_date(row['updated_at']):<16}  {names}"
        )
    print(f"{len(rows)} alert(s)")
    return 0


def _ack(args: argparse.Namespace) -> int:
    with connect(args) as hub:
        row = hub.send(
            "POST", f"/api/v1/drift/alerts/{segment(args.id)}/ack", json={"note": args.note}
        )
    if args.json:
        print_json(row)
        return 0
    print(
        f"alert {row['id']} acknowledged by {row['acknowledged_by']}; it re-opens if it escalates"
    )
    return 0
