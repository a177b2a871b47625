"""The hub's fleet-wide retained documents: the root chain, the release list, the heartbeat.

Each is published retained on ``fleet/<kind>`` through the context's fleet publisher
(:data:`hub.context.FleetPublisher`); this module never sees the MQTT link, so the CLI,
tests and the running hub publish the same way. The payloads come from
:mod:`hub.fleet.releases` (pure); this module signs, counts and publishes.

- **Release list**: :func:`publish_release` publishes the current signed release list
  (drafted and signed by :mod:`hub.registry.releases`) and records its version in the
  ``release_published`` counter, so the reconciler notices one the broker has not
  received yet.
- **Heartbeat** (signed by the heartbeat role, short expiry): "at ``issued_at``,
  release list vN with payload sha S is current". Devices refuse to install without a
  fresh one and suspect a freeze when it goes stale, and it pins the release list so a
  broker serving an old one is noticed (docs/protocol.md). :func:`issue_heartbeat` signs
  a new one (its version is the ``heartbeat_version`` counter, so it only grows, across
  restarts) and publishes it. Until a release list has been signed there is nothing to
  pin, and it returns None. The scheduler calls it every ``heartbeat_interval_s``, and
  the registry after every release list that reached the broker.
- **Root chain**: one canonical JSON list of the root documents, oldest first, at most
  the last ``MAX_ROOT_CHAIN`` versions (what a device walks in one update); see
  :func:`protocol.metadata.encode_root_chain`.
"""

from __future__ import annotations

import logging

from hub.context import HubContext
from hub.errors import KeyUnavailable
from hub.fleet.releases import SignedRelease, heartbeat_for
from hub.keyring import KeyringError
from hub.store import Store
from protocol import metadata
from protocol.documents import SignedDocument

logger = logging.getLogger(__name__)


def signed_release(store: Store) -> SignedRelease | None:
    """The current signed release list, or None before the first one is signed."""
    record = store.registry.latest_release_list(signed=True)
    return None if record is None else SignedRelease.parse(record.document)


def publish_release(ctx: HubContext) -> int | None:
    """Publish the current signed release list (retained) and record that it was.

    Returns its version, or None when none is signed yet, there is no fleet publisher,
    or the broker is out of reach.
    """
    record = ctx.store.registry.latest_release_list(signed=True)
    if record is None or ctx.fleet is None or not ctx.fleet("release", record.document.encode()):
        return None
    ctx.store.counters.set("release_published", record.version)
    logger.info("published release list v%d", record.version)
    return record.version


def publish_root_chain(ctx: HubContext) -> bool:
    """Publish the key ring's root chain retained on ``fleet/root``; False if not reached."""
    if ctx.fleet is None:
        return False
    return ctx.fleet("root", metadata.encode_root_chain(ctx.keyring.chain))


def issue_heartbeat(ctx: HubContext) -> SignedDocument | None:
    """Sign a new heartbeat pinning the current signed release list and publish it
    (when there is a fleet publisher).

    Returns the signed heartbeat, or None while no release list has been signed.
    A failed publish is logged; the next heartbeat replaces it anyway.

    Raises:
        KeyUnavailable: the heartbeat key is not on the hub.
    """
    current = signed_release(ctx.store)
    if current is None:
        logger.debug("no signed release list yet: no heartbeat to issue")
        return None
    try:
        signers = ctx.keyring.signing_keys("heartbeat")
    except KeyringError as e:
        raise KeyUnavailable(f"cannot sign a heartbeat: {e}") from e
    beat = heartbeat_for(
        current,
        version=ctx.store.counters.bump("heartbeat_version"),
        now_ms=ctx.now_ms(),
        lifetime_ms=int(ctx.settings.heartbeat_expiry_s * 1000),
    )
    signed = metadata.sign(beat, signers)
    if ctx.fleet is not None and not ctx.fleet("heartbeat", signed.to_bytes()):
        logger.warning("heartbeat v%d not published: broker out of reach", beat.version)
    return signed
