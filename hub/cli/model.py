"""``edgefleet model`` and ``edgefleet rollout``: register and release models, set devices.

Thin shells over the REST API (``/api/v1/models``, ``/api/v1/releases``,
``/api/v1/devices/{id}/desired``) through :mod:`hub.cli.client`: ``--hub URL --token T``
(or ``EDGEFLEET_HUB_URL`` / ``EDGEFLEET_TOKEN``) for a running hub, from any directory;
``--data DIR`` on the hub's machine, with the hub running or not.

Publishing is the hub's alone. Through ``--hub``, the hub that answers signs and
publishes (a release list, a device's assignment) before it answers. With ``--data``
the change is stored and the running hub publishes it on its next reconcile
(``reconcile_interval_s``, 15 s by default) or reconnect. The CLI never talks to the
broker: a CLI that published downlink frames itself used sequence numbers of its own
and, run five times beside a hub, moved a device's replay window past the hub's.
"""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from hub.cli import rollout as rollout_cli
from hub.cli.client import CliFailure, add_target_options, connect, segment
from hub.cli.common import add_command, json_option, positive, print_json
from hub.cli.example import add_example_command

MODEL_EPILOG = """\
examples:
  edgefleet model example --out example/
  edgefleet model register example/model.onnx --name demo --reference example/reference.npz
  edgefleet model list
  edgefleet model show demo 1
  edgefleet model pending --out pending.json      (release key kept offline)
  edgefleet keys sign-release pending.json --key /media/usb/release.pem --out signed.json
  edgefleet model publish signed.json

The hub is --hub URL --token T (or EDGEFLEET_HUB_URL and EDGEFLEET_TOKEN), or --data DIR
on its machine.
"""

REGISTER_EPILOG = """\
MODEL.onnx is checked (no external data, no custom operators, a supported opset), its
trainable head is found (or named with --head), and the reference rows give the drift
profile, the smoke inputs and the latency budget. The .npz files hold X (rows x
features) and, for --validation, y (class indices, or regression targets) for the same
features; they are read without pickle. Registering the same files again answers with
the version they made. When the release key is offline the new version's release list
waits: `edgefleet model pending`, then `edgefleet keys sign-release`, then `model publish`.

example:
  edgefleet model register example/model.onnx --name demo \\
      --reference example/reference.npz --validation example/validation.npz
"""

PUBLISH_EPILOG = """\
Uploads a release list signed offline: it must verify under the root's release keys, be
newer than the published one, and name only versions this hub holds. Its versions
become released and the hub publishes it.

example:
  edgefleet model publish signed.json
"""

PENDING_EPILOG = """\
Writes the newest unsigned release list, to be signed on the machine holding the
release key. Exit status 1 when none is pending.

example:
  edgefleet model pending --out pending.json
"""

SHOW_EPILOG = """\
Without VERSION: every version of NAME. With it: hashes, head, profile, lineage.

example:
  edgefleet model show demo 1
"""

ROLLOUT_EPILOG = """\
`rollout set` chooses the model version one device runs: the hub signs an assignment
for it (rollout key) and publishes it (with --data: the running hub publishes it on its
next reconcile). The device installs it only if the release list names it too.

example:
  edgefleet rollout set --device pump-17 --model demo --version 2
"""


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``model`` and ``rollout`` to the root ``edgefleet`` parser."""
    model = subparsers.add_parser(
        "model",
        help="register, release, list and show model versions",
        description="Register models, release them, and read the registry.",
        epilog=MODEL_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = model.add_subparsers(dest="model_command", metavar="SUBCOMMAND", required=True)

    reg = add_command(
        commands, "model register", "register a new model version", REGISTER_EPILOG, _register
    )
    reg.add_argument("model", type=Path, metavar="MODEL.onnx", help="the ONNX model")
    reg.add_argument("--name", required=True, help="model name ([a-z0-9][a-z0-9._-]*)")
    reg.add_argument("--reference", type=Path, required=True, help="reference rows (.npz, X)")
    reg.add_argument("--validation", type=Path, help="validation rows (.npz, X and y)")
    reg.add_argument("--head", metavar="NODE", help="the trainable head's node (default: found)")
    add_target_options(reg)
    json_option(reg)

    pub = add_command(
        commands, "model publish", "upload an offline-signed release list", PUBLISH_EPILOG, _publish
    )
    pub.add_argument("file", type=Path, metavar="SIGNED_RELEASE.json", help="the signed list")
    add_target_options(pub)

    pending = add_command(
        commands, "model pending", "write the pending release list", PENDING_EPILOG, _pending
    )
    pending.add_argument("--out", type=Path, required=True, help="where to write it")
    add_target_options(pending)

    listing = add_command(commands, "model list", "list registered models", MODEL_EPILOG, _list)
    add_target_options(listing)
    json_option(listing)

    show = add_command(
        commands, "model show", "show a model's versions or one version", SHOW_EPILOG, _show
    )
    show.add_argument("name", help="model name")
    show.add_argument("version", type=positive, nargs="?", help="one version (default: all)")
    add_target_options(show)
    json_option(show)

    add_example_command(commands)

    rollout = subparsers.add_parser(
        "rollout",
        help="staged rollouts, or the model version one device runs",
        description="Start and steer staged rollouts; set one device's desired model version.",
        epilog=ROLLOUT_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    rollouts = rollout.add_subparsers(dest="rollout_command", metavar="SUBCOMMAND", required=True)
    one = add_command(
        rollouts,
        "rollout set",
        "set one device's desired model version",
        ROLLOUT_EPILOG,
        _rollout_set,
    )
    one.add_argument("--device", required=True, help="device id")
    one.add_argument("--model", required=True, help="model name")
    one.add_argument("--version", type=positive, required=True, help="a released version")
    add_target_options(one)
    rollout_cli.add_commands(rollouts)


def _register(args: argparse.Namespace) -> int:
    files = {
        "model": ("model.onnx", args.model.read_bytes()),
        "reference": ("reference.npz", args.reference.read_bytes()),
    }
    if args.validation is not None:
        files["validation"] = ("validation.npz", args.validation.read_bytes())
    form = {"name": args.name, **({"head": args.head} if args.head else {})}
    with connect(args) as hub:
        reg = hub.send("POST", "/api/v1/models", files=files, data=form)
    if args.json:
        print_json(reg)
        return 0
    made = "registered" if reg["created"] else "already registered as"
    print(f"{made} {reg['name']} v{reg['version']}: release counter {reg['release_counter']}")
    print(f"  package  {reg['sha256']} ({reg['length']} bytes)")
    print(f"  head     {'found' if reg['head_reason'] is None else 'none: ' + reg['head_reason']}")
    for metric, value in reg["metrics"].items():
        print(f"  {metric:<8} {value:g}")
    if reg["release_pending"]:
        print(f"release key offline: release list v{reg['release_version']} waits for it:")
        print("  `edgefleet model pending --out pending.json`, `edgefleet keys sign-release`,")
        print("  then `edgefleet model publish`")
    return 0


def _publish(args: argparse.Namespace) -> int:
    try:
        document = json.loads(args.file.read_bytes())
    except ValueError as e:
        raise CliFailure(f"{args.file}: not a JSON release list: {e}", 2) from None
    with connect(args) as hub:
        release = hub.send("POST", "/api/v1/releases", json=document)
    print(f"published release list v{release['version']} with {release['entries']} entries")
    return 0


def _pending(args: argparse.Namespace) -> int:
    with connect(args) as hub:
        try:
            pending = hub.get("/api/v1/releases/pending")
        except CliFailure as e:
            if "no release list is pending" not in str(e):
                raise
            print("no release list is pending")
            return 1
    args.out.write_text(json.dumps(pending, sort_keys=True, separators=(",", ":")))
    print(f"wrote the pending release list to {args.out}")
    return 0


def _list(args: argparse.Namespace) -> int:
    with connect(args) as hub:
        summaries = hub.all("/api/v1/models")
    if args.json:
        print_json(summaries)
        return 0
    if not summaries:
        print("no models registered")
    for m in summaries:
        released = f"v{m['latest_released']}" if m["latest_released"] else "none"
        print(
            f"{m['name']:<24} {m['versions']} version(s), latest v{m['latest_version']}, "
            f"released {released}"
        )
    return 0


def _show(args: argparse.Namespace) -> int:
    name = segment(args.name)
    with connect(args) as hub:
        if args.version is None:
            versions = hub.all(f"/api/v1/models/{name}/versions")
        else:
            version = hub.get(f"/api/v1/models/{name}/versions/{args.version}")
    if args.json:
        print_json(versions if args.version is None else version)
        return 0
    if args.version is None:
        for v in versions:
            print(
                f"v{v['version']:<4} #{v['release_counter']:<5} {v['status']:<16} "
                f"{v['sha256'][:16]} {_date(v['created_at'])} {v['made_by']} by {v['created_by']}"
            )
        return 0
    _print_version(version)
    return 0


def _print_version(v: dict[str, Any]) -> None:
    m = v["manifest"]
    print(f"{v['name']} v{v['version']}: {v['status']}, release counter {v['release_counter']}")
    print(f"  package  {v['sha256']} ({v['length']} bytes)")
    print(f"  created  {_date(v['created_at'])} by {v['created_by']} ({v['made_by']})")
    parent = v["parent_version"]
    print(f"  parent   {'v' + str(parent) if parent else 'none'}")
    print(f"  opset    {m['opset']}; scores {m['scores']!r}; budget {m['latency_budget_ms']} ms")
    inputs = ", ".join(f"{t['name']} {t['dtype']}{t['shape']}" for t in m["inputs"])
    print(f"  inputs   {inputs}")
    head = m.get("head")
    described = f"{head['node']} ({head['kind']}, {head['task']})" if head else "none"
    print(f"  head     {described}")
    profile = m.get("profile")
    if profile:
        print(f"  profile  {profile['rows']} rows, {len(profile['features'])} features")
    for metric, value in v["lineage"].get("metrics", {}).items():
        print(f"  {metric:<8} {value:g}")


def _rollout_set(args: argparse.Namespace) -> int:
    body = {"model": args.model, "version": args.version}
    with connect(args) as hub:
        desired = hub.send("PUT", f"/api/v1/devices/{segment(args.device)}/desired", json=body)
    when = "published" if desired["published_at"] else "the hub publishes it on its next reconcile"
    target = f"{args.device} should run {args.model} v{args.version}"
    print(f"{target} (assignment v{desired['assignment_version']}): {when}")
    return 0


def _date(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M UTC")
