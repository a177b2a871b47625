"""``edgefleet model`` and ``edgefleet rollout``: register and release models, set devices.

A thin shell over :mod:`hub.registry.registry` and :mod:`hub.fleet.desired`, working
directly on a hub
data directory (``hub.db``, ``keys/``, ``artifacts/``). A hub serving the same directory
may keep running: SQLite in WAL mode lets both write, one transaction at a time.

Publishing: the hub publishes what the CLI stores. Its reconciler (every
``reconcile_interval_s``, 15 s by default) publishes a newly signed release list and any
desired state not yet published. ``--broker URL`` (the hub's broker) publishes right
away instead: the release list and a fresh heartbeat, or the device's desired state,
signed with the rollout key like the hub's own frames (downlink sequence numbers come
from the shared store, so the CLI and the hub never reuse one).

Bad input ends in one line on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import getpass
import logging
import queue
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from edgefleet.clock import SystemClock
from hub import keyring
from hub.cli.common import add_command, positive
from hub.context import HubContext
from hub.errors import InvalidRequest
from hub.fleet.desired import set_desired
from hub.registry.artifacts import ArtifactStore
from hub.registry.registry import Registration, Registry, VersionInfo
from hub.settings import HubSettings
from hub.store.dialects import open_store
from hub.transport.downlink import Downlink
from hub.transport.mqtt import HubLink, Inbound, fleet_publisher
from protocol.documents import SignedDocument
from protocol.topics import Topics

logger = logging.getLogger(__name__)

BROKER_WAIT_S = 10.0

MODEL_EPILOG = """\
examples:
  edgefleet model register churn.onnx --name churn --reference ref.npz --data hub/
  edgefleet model list --data hub/
  edgefleet model show churn 3 --data hub/
  edgefleet model pending --data hub/ --out pending.json      (release key offline)
  edgefleet keys sign-release pending.json --key /media/usb/release.pem --out signed.json
  edgefleet model publish signed.json --data hub/
"""

REGISTER_EPILOG = """\
MODEL.onnx is checked (no external data, no custom operators, a supported opset), its
trainable head is found (or named with --head), and the reference rows give the drift
profile, the smoke inputs and the latency budget. The .npz files hold X (rows x
features) and, for --validation, y (class indices, or regression targets); they are
read without pickle. The new version gets the next release counter and a release list;
when the release key is offline the list is left pending and written to
DIR/pending-release-vN.json for `edgefleet keys sign-release`.

example:
  python -c 'import numpy as np; np.savez("ref.npz", X=np.load("train.npy")[:5000])'
  edgefleet model register churn.onnx --name churn --reference ref.npz \\
      --validation val.npz --data hub/ --broker mqtt://127.0.0.1:1883
"""

PUBLISH_EPILOG = """\
Uploads a release list signed offline: it must verify under the root's release keys, be
newer than the published one, and name only versions this hub holds. Its versions
become released and the hub publishes it (now, with --broker).

example:
  edgefleet model publish signed.json --data hub/
"""

PENDING_EPILOG = """\
Writes the newest unsigned release list, to be signed on the machine holding the
release key.

example:
  edgefleet model pending --data hub/ --out pending.json
"""

SHOW_EPILOG = """\
Without VERSION: every version of NAME. With it: hashes, head, profile, lineage.

example:
  edgefleet model show churn 3 --data hub/
"""

ROLLOUT_EPILOG = """\
`rollout set` chooses the model version one device runs: it signs an assignment for it
(rollout key); the hub's reconciler publishes it within reconcile_interval_s, or
--broker publishes it at once.

Staged rollouts over many devices (1% -> 10% -> 100%, gates, automatic rollback) come
in a later release; until then, set devices one at a time.

example:
  edgefleet rollout set --device pump-17 --model churn --version 3 --data hub/ \\
      --broker mqtt://127.0.0.1:1883
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
    _data_option(reg)
    _broker_option(reg)

    pub = add_command(
        commands, "model publish", "upload an offline-signed release list", PUBLISH_EPILOG, _publish
    )
    pub.add_argument("file", type=Path, metavar="SIGNED_RELEASE.json", help="the signed list")
    _data_option(pub)
    _broker_option(pub)

    pending = add_command(
        commands, "model pending", "write the pending release list", PENDING_EPILOG, _pending
    )
    pending.add_argument("--out", type=Path, required=True, help="where to write it")
    _data_option(pending)

    listing = add_command(commands, "model list", "list registered models", MODEL_EPILOG, _list)
    _data_option(listing)

    show = add_command(
        commands, "model show", "show a model's versions or one version", SHOW_EPILOG, _show
    )
    show.add_argument("name", help="model name")
    show.add_argument("version", type=positive, nargs="?", help="one version (default: all)")
    _data_option(show)

    rollout = subparsers.add_parser(
        "rollout",
        help="choose the model version a device runs",
        description="Set a device's desired model version.",
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
    _data_option(one)
    _broker_option(one)


def _data_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data", type=Path, required=True, metavar="DIR", help="hub data directory"
    )


def _broker_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--broker", metavar="URL", help="publish now through this broker (mqtt[s]://host:port)"
    )
    parser.add_argument("--topic-prefix", default="ef", help="topic prefix (default ef)")


def _actor() -> str:
    return f"cli:{getpass.getuser()}"


@contextmanager
def _context(args: argparse.Namespace, *, downlink: bool = False) -> Iterator[HubContext]:
    """The hub context over ``--data``, publishing through ``--broker`` when given (the
    fleet documents, and device frames signed with the rollout key if ``downlink``)."""
    settings = HubSettings(data_dir=args.data)
    if not settings.db_path.parent.is_dir():
        raise InvalidRequest(f"{settings.data_dir} is not a hub data directory")
    ring = keyring.load(settings.keys_dir)
    clock = SystemClock()
    store = open_store(settings.db_path)
    try:
        with _link(args) as link:
            ctx = HubContext(store, ring, clock, settings)
            if link is not None:
                topics = Topics(args.topic_prefix)
                sender = None
                if downlink:
                    key = ring.signing_keys("rollout")[0]
                    sender = Downlink(store, link, topics, key, clock)
                ctx = HubContext(
                    store, ring, clock, settings, sender, fleet_publisher(link, topics)
                )
            yield ctx
    finally:
        store.close()


@contextmanager
def _registry(args: argparse.Namespace) -> Iterator[Registry]:
    """The registry over ``--data``, publishing through ``--broker`` when given."""
    with _context(args) as ctx:
        yield Registry(ctx, ArtifactStore(ctx.settings.artifacts_dir))


@contextmanager
def _link(args: argparse.Namespace) -> Iterator[HubLink | None]:
    """A connected link to ``--broker``, or None without it."""
    url = getattr(args, "broker", None)
    if url is None:
        yield None
        return
    inbox: queue.Queue[Inbound] = queue.Queue(maxsize=1)
    link = HubLink(url, client_id=f"edgefleet-cli-{uuid.uuid4().hex[:8]}", inbox=inbox)
    link.start()
    try:
        if not link.wait_ready(BROKER_WAIT_S):
            raise InvalidRequest(f"broker {url} not reachable in {BROKER_WAIT_S:.0f} s")
        yield link
    finally:
        link.stop()


def _register(args: argparse.Namespace) -> int:
    with _registry(args) as registry:
        reg = registry.register(
            args.model.read_bytes(),
            name=args.name,
            reference=args.reference.read_bytes(),
            validation=args.validation.read_bytes() if args.validation else None,
            head=args.head,
            actor=_actor(),
        )
        _print_registration(reg)
        if reg.release_pending:
            pending = registry.pending_release()
            out = args.data / f"pending-release-v{reg.release_version}.json"
            if pending is not None:
                out.write_bytes(pending.to_bytes())
            print(f"release key offline: release list v{reg.release_version} is pending in {out}")
            print("sign it with `edgefleet keys sign-release`, then `edgefleet model publish`")
    return 0


def _print_registration(reg: Registration) -> None:
    head = reg.manifest.head
    print(f"registered {reg.name} v{reg.version}: release counter {reg.release_counter}")
    print(f"  package  {reg.sha256} ({reg.length} bytes)")
    described = f"{head.node} ({head.kind})" if head else f"none: {reg.head_reason}"
    print(f"  head     {described}")
    print(f"  budget   {reg.manifest.latency_budget_ms} ms for the smoke inputs")
    for metric, value in reg.metrics.items():
        print(f"  {metric:<8} {value:g}")


def _publish(args: argparse.Namespace) -> int:
    doc = SignedDocument.from_bytes(args.file.read_bytes())
    with _registry(args) as registry:
        release = registry.publish_release_list(doc, actor=_actor())
    print(f"published release list v{release.version} with {len(release.entries)} entries")
    return 0


def _pending(args: argparse.Namespace) -> int:
    with _registry(args) as registry:
        pending = registry.pending_release()
    if pending is None:
        print("no release list is pending")
        return 1
    args.out.write_bytes(pending.to_bytes())
    print(f"wrote the pending release list to {args.out}")
    return 0


def _list(args: argparse.Namespace) -> int:
    with _registry(args) as registry:
        summaries = registry.list_models()
    if not summaries:
        print("no models registered")
    for m in summaries:
        released = f"v{m.latest_released}" if m.latest_released else "none"
        print(
            f"{m.name:<24} {m.versions} version(s), latest v{m.latest_version}, released {released}"
        )
    return 0


def _show(args: argparse.Namespace) -> int:
    with _registry(args) as registry:
        if args.version is None:
            for v in registry.list_versions(args.name):
                print(
                    f"v{v.version:<4} #{v.release_counter:<5} {v.status:<16} {v.sha256[:16]} "
                    f"{_date(v.created_at)} {v.made_by} by {v.created_by}"
                )
            return 0
        _print_version(registry.get_version(args.name, args.version))
    return 0


def _print_version(v: VersionInfo) -> None:
    m = v.manifest
    print(f"{v.name} v{v.version}: {v.status}, release counter {v.release_counter}")
    print(f"  package  {v.sha256} ({v.length} bytes)")
    print(f"  created  {_date(v.created_at)} by {v.created_by} ({v.made_by})")
    print(f"  parent   {'v' + str(v.parent_version) if v.parent_version else 'none'}")
    print(f"  opset    {m.opset}; scores {m.scores!r}; budget {m.latency_budget_ms} ms")
    print(f"  io       {m.io_signature()}")
    head = m.head
    print(f"  head     {f'{head.node} ({head.kind}, {head.task})' if head else 'none'}")
    if m.profile is not None:
        print(f"  profile  {m.profile.rows} rows, {len(m.profile.features)} features")
    for metric, value in v.lineage.get("metrics", {}).items():
        print(f"  {metric:<8} {value:g}")


def _rollout_set(args: argparse.Namespace) -> int:
    with _context(args, downlink=True) as ctx:
        assignment = set_desired(
            ctx,
            device_id=args.device,
            model_name=args.model,
            model_version=args.version,
            actor=_actor(),
        )
        published = ctx.store.desired.get(args.device).published_at is not None
    when = "published" if published else "the hub publishes it on its next reconcile"
    target = f"{args.device} should run {args.model} v{args.version}"
    print(f"{target} (assignment v{assignment.version}): {when}")
    return 0


def _date(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M UTC")
