"""The whole hub in one process: MQTT pipeline, scheduler and REST API (``edgefleet hub serve``).

:meth:`HubService.start` assembles the pieces that exist on their own elsewhere and
returns once the REST API accepts requests and the broker has granted the hub's
subscription, so a caller (the CLI, a test, the demo next to its agents) can use the hub
at once::

    with HubService.start(HubSettings(data, http_port=0), embedded_broker=EmbeddedBroker()) as hub:
        ...  # agents connect to hub.broker_url; REST at hub.http_url; hub.store, hub.registry
    # leaving the block calls hub.stop(), which is idempotent

What runs, started in this order and stopped in the reverse one:

0. the **data directory's lock** (:class:`edgefleet.lock.DirectoryLock`), before anything
   reads the keys, opens the store or connects: a second hub on the same directory fails
   at once with :class:`DataDirInUse`, and the first one never notices (it keeps its
   MQTT session: each hub's client id is its own, ``HubSettings.mqtt_client_id``);
1. the embedded broker, when one is given (the one-machine tier), with access control:
   the hub's own login and every active device's (:mod:`hub.transport.broker_accounts`,
   which also keeps a Mosquitto's accounts set up by ``edgefleet broker config``);
2. the store and the pipeline of :func:`hub.ingest.pipeline.assemble`: the broker link, the
   downlink signed with the **rollout** key, the ingest worker and chunk delivery (the
   worker and the link start once 4 and 5 run, so no connect goes unnoticed);
3. the hub context (:class:`hub.context.HubContext`: store, the live key ring, clock,
   settings, the downlink and the fleet publisher), which every shell below is given whole;
4. the republisher: after every (re)connect of the link it publishes the retained
   messages again (root chain, release list, a fresh heartbeat, every desired state,
   :func:`hub.fleet.reconciler.republish_all`), on a thread of its own since the link
   reports the connect on paho's network thread; after the first, it arms the retained
   watch (:mod:`hub.transport.retained`, a link of its own) that restores whatever else
   appears on the hub's retained topics;
5. an APScheduler ``BackgroundScheduler`` with the jobs of :data:`JOBS`, each a one-line
   shim calling a function with the context: reconcile (``reconcile_interval_s``),
   heartbeat (``heartbeat_interval_s``), marking silent devices offline
   (``offline_check_interval_s``), planning the staged rollouts (``rollout_tick_s``,
   :func:`hub.fleet.rollouts.rollouts_job`), and the ``keyring`` job (every
   ``keyring_check_interval_s``) that reloads the key ring when its files change and
   makes a rotation take effect at once (:func:`hub.fleet.reconciler.rekey`);
6. the REST API (:func:`hub.api.create_app`) under uvicorn (:mod:`hub.transport.http_server`).

What this module does not do: handle signals (the CLI does) or retry a start.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from types import TracebackType
from typing import Self

from apscheduler.schedulers.background import BackgroundScheduler
from fastapi import FastAPI

from edgefleet.clock import Clock, SystemClock
from edgefleet.lock import DirectoryInUse, DirectoryLock
from hub import keyring, metrics
from hub.api.app import create_app
from hub.api.services import HubServices
from hub.context import FleetPublisher, HubContext
from hub.errors import HubError, InvalidRequest
from hub.federated.rounds import RoundsKick, open_round, rounds_job
from hub.fleet.documents import issue_heartbeat
from hub.fleet.presence import mark_offline
from hub.fleet.reconciler import reconcile_job, rekey, republish_all
from hub.fleet.restore import restore_retained
from hub.fleet.rollouts import rollouts_job
from hub.ingest import pipeline as ingest_run
from hub.ingest.pipeline import IngestService
from hub.keyring import Keyring, KeyringError, LiveKeyring
from hub.leader import Leadership
from hub.monitor.jobs import RoundRequest, maintain_job, score_job
from hub.registry.artifacts import Artifacts, ArtifactStore
from hub.registry.registry import Registry
from hub.settings import HubSettings
from hub.store import Store
from hub.store.dialects import describe
from hub.transport import broker_accounts
from hub.transport.broker import EmbeddedBroker
from hub.transport.downlink import Downlink
from hub.transport.http_server import HttpServer
from hub.transport.mqtt import TlsFiles, fleet_publisher
from hub.transport.retained import RetainedLedger, RetainedWatch
from protocol.errors import EdgefleetError
from protocol.topics import Topics

logger = logging.getLogger(__name__)

READY_TIMEOUT_S = 15.0

Job = Callable[[HubContext], object]


def round_on_alert(ctx: HubContext) -> Callable[[RoundRequest], object]:
    """What a drift alert of a ``retrain_on_alert`` model does: open a round on the version
    it alerted on, for the devices of the cohorts it names. A refusal (a round already
    live, a base that is not released) is a :class:`~hub.errors.HubError` that drift
    audits as the request's outcome."""

    def request(r: RoundRequest) -> object:
        return open_round(
            ctx, r.model_name, actor=r.requested_by, base_version=r.model_version,
            trigger="drift", cohorts=r.cohorts,
        )  # fmt: skip

    return request


def drift_job(ctx: HubContext) -> None:
    """Score drift, with alerts wired to rounds (:func:`round_on_alert`)."""
    score_job(ctx, request_round=round_on_alert(ctx))


JOBS: dict[str, tuple[Callable[[HubSettings], float], Job]] = {
    "reconcile": (lambda s: s.reconcile_interval_s, reconcile_job),
    "heartbeat": (lambda s: s.heartbeat_interval_s, issue_heartbeat),
    "offline": (lambda s: s.offline_check_interval_s, mark_offline),
    "rounds": (lambda s: s.round_tick_interval_s, rounds_job),
    "drift.score": (lambda s: s.drift_score_interval_s, drift_job),
    "drift.maintain": (lambda s: s.drift_maintain_interval_s, maintain_job),
    "rollouts": (lambda s: s.rollout_tick_s, rollouts_job),
}
"""The scheduler's jobs: name -> (its interval from the settings, the function it calls
with the context). Rounds, drift and rollouts add theirs here."""


EMBEDDED_REPLICAS = (
    "--replica-group needs a broker with shared subscriptions ($share, e.g. Mosquitto 2): "
    "the embedded broker has none; give --broker"
)


def replica_id(settings: HubSettings) -> str:
    """Who this replica is in the leader lease: ``replica_id``, or ``<host>:<data dir>``,
    which a restarted replica keeps (it takes its own lease back at once)."""
    return settings.replica_id or f"{socket.gethostname()}:{settings.data_dir.resolve()}"


class BrokerUnreachable(HubError):
    """The broker did not accept the hub's connection and subscription in time."""

    reason = "broker_unreachable"
    status_hint = 503


class DataDirInUse(HubError):
    """Another hub runs on this data directory (its pid is in the message)."""

    reason = "data_dir_in_use"
    status_hint = 409


def lock_data_dir(data_dir: Path) -> DirectoryLock:
    """Take ``data_dir``'s lock (creating the directory).

    Raises:
        DataDirInUse: another hub holds it.
    """
    try:
        return DirectoryLock(data_dir).acquire()
    except DirectoryInUse as e:
        raise DataDirInUse(f"data directory {e}: another hub runs on it; not starting") from e


class KeyringJob:
    """The ``keyring`` job: reload the key ring when its files changed, and make the change
    take effect (the downlink signs with the new rollout key, then
    :func:`hub.fleet.reconciler.rekey` republishes what the old keys signed)."""

    def __init__(self, ring: LiveKeyring, downlink: Downlink) -> None:
        self.ring = ring
        self.downlink = downlink

    def __call__(self, ctx: HubContext) -> None:
        change = self.ring.reload()
        if change is None:
            return
        old, new = change
        if "rollout" in keyring.rotated_roles(old.root, new.root):
            self.downlink.set_key(new.signing_keys("rollout")[0])
        if ctx.role != "follower":  # every replica signs with the new keys; one republishes
            rekey(ctx, old, new)


def ledgered(publish: FleetPublisher, ledger: RetainedLedger, topics: Topics) -> FleetPublisher:
    """``publish``, telling ``ledger`` what it leaves on each fleet topic."""

    def fleet(kind: str, payload: bytes) -> bool:
        ledger.published(topics.fleet(kind), payload)
        return publish(kind, payload)

    return fleet


def load_keyring(keys_dir: Path) -> Keyring:
    """The key ring the hub signs with, with both online keys (rollout, heartbeat) present.

    Raises:
        KeyringError: there is no key ring in ``keys_dir`` (the message says how to make
            one), it does not verify, or an online key is missing (kept offline?).
    """
    if not (keys_dir / keyring.ROOT_DIR / "1.root.json").is_file():
        raise KeyringError(
            f"no key ring in {keys_dir}: run `edgefleet keys init --dir {keys_dir}` first"
        )
    ring = keyring.load(keys_dir)
    for role in keyring.ONLINE_ROLES:
        ring.signing_keys(role)
    return ring


class Republisher:
    """Runs ``republish`` once after each ``due`` signal, on a thread of its own.

    Signals that arrive while a republish runs cause one more run, so the retained
    messages always follow the latest connect; a failure is logged and waits for the next.
    """

    def __init__(self, due: threading.Event, republish: Callable[[], object]) -> None:
        self._due = due
        self._republish = republish
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="edgefleet-republish", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Let a running republish finish, then end the thread."""
        self._stopping.set()
        self._due.set()
        self._thread.join()

    def _run(self) -> None:
        while True:
            self._due.wait()
            if self._stopping.is_set():
                return
            self._due.clear()
            try:
                self._republish()
            except EdgefleetError as e:
                logger.error("republishing after a connect failed: %s", e)


@dataclass(eq=False)
class HubService:
    """A running hub; make one with :meth:`start`. The attributes are its live pieces."""

    settings: HubSettings  # as started: the real broker URL and HTTP port
    context: HubContext
    artifacts: Artifacts
    registry: Registry
    pipeline: IngestService
    scheduler: BackgroundScheduler
    app: FastAPI
    http: HttpServer
    embedded_broker: EmbeddedBroker | None
    _stops: ExitStack = field(repr=False)

    @classmethod
    def start(
        cls,
        settings: HubSettings,
        *,
        clock: Clock | None = None,
        tls: TlsFiles | None = None,
        embedded_broker: EmbeddedBroker | None = None,
        ready_timeout_s: float = READY_TIMEOUT_S,
    ) -> HubService:
        """Start everything (see the module docstring); return once it serves.

        With ``embedded_broker``, that broker is started first and the hub connects to
        it, whatever ``settings.broker_url`` says. Anything started before a failure is
        stopped again before the error propagates.

        Raises:
            DataDirInUse: another hub runs on ``settings.data_dir``; nothing was touched.
            KeyringError: no key ring in ``settings.keys_dir``, or an online key missing.
            hub.transport.broker.BrokerError: the embedded broker could not start.
            hub.errors.InvalidRequest: a bad broker URL or TLS files.
            BrokerUnreachable: no connection and subscription within ``ready_timeout_s``.
            hub.transport.http_server.HttpUnavailable: the HTTP address cannot be bound.
        """
        clock = clock or SystemClock()
        if settings.replica_group and embedded_broker is not None:
            raise InvalidRequest(EMBEDDED_REPLICAS)
        lock = lock_data_dir(settings.data_dir)
        with ExitStack() as stops:
            stops.callback(lock.release)
            ring = LiveKeyring(load_keyring(settings.keys_dir))
            settings = replace(settings, client_id=settings.mqtt_client_id(os.getpid()))
            accounts = broker_accounts.prepare(settings, embedded_broker)
            if embedded_broker is not None:
                embedded_broker.start()
                stops.callback(embedded_broker.stop)
                settings = replace(settings, broker_url=embedded_broker.url)
            artifacts = ArtifactStore(settings.artifacts_dir)
            connected = threading.Event()
            pipeline = ingest_run.assemble(
                settings,
                ring.signing_keys("rollout")[0],
                clock=clock,
                artifacts=artifacts,
                tls=tls,
                on_ready=connected.set,
                login=accounts.login.pair() if accounts else None,
            )
            stops.callback(pipeline.stop)
            if accounts is not None:
                pipeline.ingest.on_credentials = accounts.request
                accounts.start(pipeline.store)
                stops.callback(accounts.stop)
            topics, ledger = Topics(settings.topic_prefix), RetainedLedger()
            pipeline.downlink.ledger = ledger
            ctx = HubContext(
                store=pipeline.store,
                keyring=ring,
                clock=clock,
                settings=settings,
                downlink=pipeline.downlink,
                fleet=ledgered(fleet_publisher(pipeline.link, topics), ledger, topics),
            )
            leadership = None
            if settings.replica_group:
                link = pipeline.link  # a new leader republishes now if connected, else on connect
                leadership = Leadership(
                    ctx,
                    replica_id(settings),
                    on_acquired=lambda: connected.set() if link.wait_ready(0) else None,
                )
                ctx = replace(ctx, leading=leadership.leading)
            leads = leadership.confirm if leadership else lambda: True
            watch = RetainedWatch.connect(
                settings.broker_url,
                client_id=f"{settings.client_id}-w",
                login=accounts.login.watch().pair() if accounts else None,
                tls=tls,
                topics=topics,
                ledger=ledger,
                restore=partial(restore_retained, ctx),
                store=pipeline.store,
                clock=clock,
            )
            watch.start()
            stops.callback(watch.stop)

            def republish() -> None:
                if not leads():  # a follower leaves the retained topics to the leader
                    return
                try:
                    republish_all(ctx)
                finally:
                    watch.arm()

            republisher = Republisher(connected, republish)
            republisher.start()
            stops.callback(republisher.stop)
            kick = RoundsKick(ctx)  # closes rounds and flushes buffers after ingest
            pipeline.ingest.on_deltas = lambda v: kick(v) if leads() else None
            stops.callback(kick.stop)
            if leadership is not None:
                leadership.start()
                stops.callback(leadership.stop)
            metrics.LEADER.set(1 if leadership is None else int(leadership.leading()))
            scheduler = _scheduler(ctx, KeyringJob(ring, pipeline.downlink), leads)
            scheduler.start()
            stops.callback(scheduler.shutdown)
            pipeline.start()
            registry = Registry(ctx, artifacts)
            app = create_app(ctx, HubServices(registry, artifacts, metrics.REGISTRY))
            http = HttpServer(app, settings.http_host, settings.http_port)
            http.start()
            stops.callback(http.stop)
            if not pipeline.link.wait_ready(ready_timeout_s):
                raise BrokerUnreachable(
                    f"broker {pipeline.link.url} did not accept the hub within "
                    f"{ready_timeout_s:.0f} s"
                )
            settings = replace(settings, http_port=http.port)
            service = cls(
                settings,
                replace(ctx, settings=settings),
                artifacts,
                registry,
                pipeline,
                scheduler,
                app,
                http,
                embedded_broker,
                stops.pop_all(),
            )
        logger.info(
            "hub serving %s (dashboard %s/ui, broker %s)",
            service.http_url,
            service.http_url,
            service.broker_url,
        )
        logger.info("hub store: %s", describe(settings.store_location))  # never a password
        return service

    @property
    def store(self) -> Store:
        return self.context.store

    @property
    def keyring(self) -> Keyring:
        """The key ring as loaded now (it follows rotations)."""
        ring = self.context.keyring
        if isinstance(ring, LiveKeyring):
            return ring.current
        assert isinstance(ring, Keyring)  # start() builds the context with a live ring
        return ring

    @property
    def clock(self) -> Clock:
        return self.context.clock

    @property
    def http_url(self) -> str:
        """Where the REST API answers, e.g. ``http://127.0.0.1:8080``."""
        return self.http.url

    @property
    def http_port(self) -> int:
        return self.http.port

    @property
    def broker_url(self) -> str:
        """The broker the hub is connected to (the embedded one's, if it runs one)."""
        return str(self.pipeline.link.url)

    def stop(self) -> None:
        """Stop the REST API, the scheduler (its running jobs finish), the republisher,
        the link, ingest (the batch in hand is committed and acknowledged), the store,
        then the embedded broker. Idempotent."""
        self._stops.close()
        logger.info("hub stopped")

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _scheduler(ctx: HubContext, keyring_job: Job, leads: Callable[[], bool]) -> BackgroundScheduler:
    """The periodic jobs of :data:`JOBS`, each a one-line shim over a function run only
    while ``leads()`` (:mod:`hub.leader`), and the ``keyring`` job, run on every replica."""
    scheduler = BackgroundScheduler(
        timezone="UTC", job_defaults={"coalesce": True, "max_instances": 1}
    )
    jobs = {**JOBS, "keyring": (lambda s: s.keyring_check_interval_s, keyring_job)}
    for name, (interval_s, job) in jobs.items():
        gate = (lambda: True) if name == "keyring" else leads
        scheduler.add_job(
            _logged(name, partial(job, ctx), gate),
            "interval",
            seconds=interval_s(ctx.settings),
            id=name,
            name=name,
        )
    return scheduler


def _logged(name: str, job: Callable[[], object], gate: Callable[[], bool]) -> Callable[[], None]:
    """Run ``job`` if ``gate()`` allows, turning an error the hub raises on purpose (a key
    kept offline, say) into one log line; anything else is a bug, and APScheduler logs
    its traceback."""

    def run() -> None:
        try:
            if gate():
                job()
        except EdgefleetError as e:
            logger.error("%s job: %s", name, e)

    return run


__all__ = [
    "BrokerUnreachable",
    "DataDirInUse",
    "HubService",
    "KeyringJob",
    "Republisher",
    "load_keyring",
    "lock_data_dir",
]
