"""The hub's MQTT pipeline: broker link, downlink, ingest worker and chunk delivery.

:func:`assemble` is the one place these pieces are wired together: ``edgefleet hub
serve`` (:class:`hub.service.HubService`) adds REST and the scheduler around it, and
this module's ``main`` runs it alone::

    python -m hub.ingest.pipeline --data DIR --broker URL [--prefix P] --key ROLLOUT.pem

The crash tests and the benchmark run that as a subprocess they can SIGKILL. It prints
``ready`` on stdout once the broker has granted the subscription, and exits 0 on SIGTERM
or SIGINT after finishing the batch in hand.
"""

from __future__ import annotations

import argparse
import logging
import os
import queue
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgefleet.clock import Clock, SystemClock
from hub.fleet.delivery import Delivery
from hub.ingest.worker import Ingest
from hub.registry.artifacts import ArtifactStore
from hub.settings import HubSettings
from hub.store import Store
from hub.store.dialects import open_store
from hub.transport.downlink import Downlink
from hub.transport.mqtt import HubLink, Inbound, TlsFiles
from protocol import keys
from protocol.topics import Topics


@dataclass
class IngestService:
    """The pipeline's pieces, for callers that need to reach into them."""

    store: Store
    link: HubLink
    downlink: Downlink
    delivery: Delivery
    ingest: Ingest

    def start(self) -> None:
        """Start the worker, then connect (in the background; see ``link.wait_ready``)."""
        self.ingest.start()
        self.link.start()

    def stop(self) -> None:
        """Stop taking messages, finish the batch in hand, close the store. Safe to call
        on a pipeline that never started."""
        self.link.stop()
        self.ingest.stop()
        self.store.close()


def assemble(
    settings: HubSettings,
    key: Ed25519PrivateKey,
    *,
    clock: Clock | None = None,
    store: Store | None = None,
    artifacts: ArtifactStore | None = None,
    tls: TlsFiles | None = None,
    on_ready: Callable[[], None] | None = None,
    login: tuple[str, str] | None = None,
) -> IngestService:
    """Wire the pipeline without starting it; the store is opened unless given.

    ``key`` is the rollout key downlink frames are signed with; ``on_ready`` is
    :class:`~hub.transport.mqtt.HubLink`'s (runs on paho's thread after every (re)connect).
    ``login``: the hub's broker user name and password; its client id is then the user
    name, as brokers with access control require (docs/broker-security.md).

    Raises:
        hub.errors.InvalidRequest: a bad broker URL or TLS files.
    """
    clock = clock or SystemClock()
    topics = Topics(settings.topic_prefix)
    inbox: queue.Queue[Inbound] = queue.Queue(settings.ingest_queue_max)
    link = HubLink(
        settings.broker_url,
        client_id=login[0] if login else settings.mqtt_client_id(os.getpid()),
        inbox=inbox,
        subscriptions=[topics.all_up()],
        tls=tls,
        on_ready=on_ready,
        login=login,
    )
    store = store or open_store(settings.store_location)
    downlink = Downlink(store, link, topics, key, clock, limits=settings.limits)
    delivery = Delivery(
        store, artifacts or ArtifactStore(settings.artifacts_dir), downlink, clock, settings
    )
    ingest = Ingest(
        store,
        settings,
        clock,
        downlink,
        on_fetch=delivery.on_fetch,
        inbox=inbox,
        hub_keys=(key.public_key(),),
    )
    return IngestService(store, link, downlink, delivery, ingest)


def start(
    settings: HubSettings,
    key: Ed25519PrivateKey,
    *,
    clock: Clock | None = None,
    store: Store | None = None,
    tls: TlsFiles | None = None,
) -> IngestService:
    """:func:`assemble`, then start: the worker runs and the link connects.

    Raises:
        hub.errors.InvalidRequest: a bad broker URL or TLS files.
    """
    service = assemble(settings, key, clock=clock, store=store, tls=tls)
    service.start()
    return service


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m hub.ingest.pipeline",
        description="Run hub ingest alone (tests, benchmarks).",
    )
    parser.add_argument("--data", type=Path, required=True, help="hub data directory")
    parser.add_argument("--broker", required=True, help="mqtt://host:port or mqtts://...")
    parser.add_argument("--prefix", default="ef", help="topic prefix (default ef)")
    parser.add_argument("--key", type=Path, required=True, help="rollout key, PKCS#8 PEM")
    parser.add_argument("--client-id", default="edgefleet-hub-ingest")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    settings = HubSettings(
        data_dir=args.data,
        broker_url=args.broker,
        topic_prefix=args.prefix,
        client_id=args.client_id,
    )
    key = keys.private_from_pem(args.key.read_bytes())
    service = start(settings, key)
    done = threading.Event()

    def stop(signum: int, frame: FrameType | None) -> None:
        done.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    while not done.is_set() and not service.link.wait_ready(0.1):
        pass
    print("ready", flush=True)
    done.wait()
    service.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
