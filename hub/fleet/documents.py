"""The hub's fleet-wide retained documents: the root chain, the release list, the heartbeat.

Each is published retained on ``fleet/<kind>`` through a :data:`FleetPublisher`.
:func:`publish_release` publishes the current signed release list (drafted and signed
by :mod:`hub.registry.registry`) and records its version in the ``release_published`` counter,
so the reconciler notices one the broker has not received yet.

The **heartbeat** (signed by the heartbeat role, short expiry) says "at ``issued_at``,
release list vN with payload sha S is current". Devices refuse to install without a
fresh one and suspect a freeze when it goes stale (THREATS T3), and it pins the release
list so that a broker serving an old one is noticed (T6). :func:`issue_heartbeat` signs
a new one (its version is the store's ``heartbeat_version`` counter, so it only grows,
across restarts) and publishes it retained on ``fleet/heartbeat``. Until a release list
has been signed there is nothing to pin, and it returns None.

The **root chain** is published retained on ``fleet/root`` as one canonical JSON list of
the root documents, oldest first, at most the last ``MAX_ROOT_CHAIN`` versions (what a
device walks in one update); see :func:`protocol.metadata.encode_root_chain`.

The hub's scheduler calls :func:`issue_heartbeat` every ``HubSettings.heartbeat_interval_s``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from edgefleet.clock import Clock
from hub.errors import KeyUnavailable
from hub.keyring import Keyring, KeyringError
from hub.settings import HubSettings
from hub.store.database import Store
from hub.transport.mqtt import HubLink
from protocol import metadata
from protocol.documents import SignedDocument
from protocol.metadata import Heartbeat, ReleaseList
from protocol.topics import Topics

logger = logging.getLogger(__name__)

HEARTBEAT_VERSION = "heartbeat_version"
FleetPublisher = Callable[[str, bytes], bool]
"""``publish(kind, payload)``: publish ``payload`` retained on ``fleet/<kind>``; False
when the broker is out of reach (the caller retries later)."""

RELEASE_PUBLISHED = "release_published"
"""Meta counter: the signed release list version last handed to the broker."""


def signed_release(store: Store) -> tuple[SignedDocument, ReleaseList] | None:
    """The current signed release list, or None before the first one is signed."""
    row = store.latest_release_list(signed=True)
    if row is None:
        return None
    doc = SignedDocument.from_bytes(row["document"].encode())
    return doc, metadata.parse(ReleaseList, doc)


def fleet_publisher(link: HubLink, topics: Topics) -> FleetPublisher:
    """Publish fleet documents through the hub's link, retained at QoS 1."""

    def publish(kind: str, payload: bytes) -> bool:
        return link.publish(topics.fleet(kind), payload, qos=1, retain=True)

    return publish


def publish_release(store: Store, publish_fleet: FleetPublisher) -> int | None:
    """Publish the current signed release list (retained) and record that it was.

    Returns its version, or None when none is signed yet or the broker is out of reach.
    """
    row = store.latest_release_list(signed=True)
    if row is None or not publish_fleet("release", row["document"].encode()):
        return None
    store.set_counter(RELEASE_PUBLISHED, row["version"])
    logger.info("published release list v%d", row["version"])
    return int(row["version"])


def publish_root_chain(keyring: Keyring, publish_fleet: FleetPublisher) -> bool:
    """Publish the key ring's root chain retained on ``fleet/root``; False if not reached."""
    return publish_fleet("root", metadata.encode_root_chain(keyring.chain))


def issue_heartbeat(
    store: Store,
    keyring: Keyring,
    clock: Clock,
    settings: HubSettings,
    publish_fleet: FleetPublisher | None = None,
) -> SignedDocument | None:
    """Sign a new heartbeat pinning the current signed release list and publish it.

    Returns the signed heartbeat, or None while no release list has been signed.
    A failed publish is logged; the next heartbeat replaces it anyway.

    Raises:
        KeyUnavailable: the heartbeat key is not on the hub.
    """
    current = signed_release(store)
    if current is None:
        logger.debug("no signed release list yet: no heartbeat to issue")
        return None
    doc, release = current
    try:
        signers = keyring.signing_keys("heartbeat")
    except KeyringError as e:
        raise KeyUnavailable(f"cannot sign a heartbeat: {e}") from e
    now = clock.now_ms()
    beat = Heartbeat(
        version=store.bump(HEARTBEAT_VERSION),
        issued_at=now,
        expires=now + int(settings.heartbeat_expiry_s * 1000),
        release_version=release.version,
        release_sha256=metadata.payload_sha256(doc),
    )
    signed = metadata.sign(beat, signers)
    if publish_fleet is not None and not publish_fleet("heartbeat", signed.to_bytes()):
        logger.warning("heartbeat v%d not published: broker out of reach", beat.version)
    return signed
