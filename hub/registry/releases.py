"""Release lists: drafted with every registration, signed here or offline, then published.

**Release lists** are append-mostly: list N+1 holds the entries of list N (signed or
pending) plus the new one, and its rollback floor (``min_counter``, which only the
release role may raise, docs/decisions.md), keeping every entry of the last
:data:`KEEP_VERSIONS` versions per model, so that operators can still assign an older
version (a rollback) without a new release; past :data:`~protocol.metadata.MAX_ENTRIES`
the lowest release counters go. :func:`draft_release` signs the draft when the release
key is on the hub, or leaves it pending for the offline key (not an error).

An offline-signed list comes back through :func:`accept_release`, which verifies it
against the root's release role, refuses one not newer than the published one or
lowering its floor, and checks every entry against the registered versions.

:func:`publish` hands the signed list to the broker through the context's fleet
publisher and then issues a heartbeat pinning it, since devices install nothing from a
release list no fresh heartbeat vouches for (docs/decisions.md). Without a publisher (the
CLI without a broker) or when the broker is out of reach, the signed list stays stored
and the running hub publishes it (the reconciler, and every reconnect).
"""

from __future__ import annotations

import logging

from hub.context import HubContext
from hub.errors import Conflict
from hub.fleet.documents import issue_heartbeat, publish_release, signed_release
from hub.keyring import KeyringError
from hub.store.rows import ReleaseListRecord
from protocol import metadata
from protocol.documents import SignedDocument, verify_threshold
from protocol.metadata import ReleaseEntry, ReleaseList

logger = logging.getLogger(__name__)

KEEP_VERSIONS = 20


def draft_release(
    ctx: HubContext, entry: ReleaseEntry, *, now_ms: int, actor: str
) -> tuple[int, bool]:
    """Store release list N+1 (the previous entries + ``entry``), signed if the release
    key is here; its version and whether it was signed. The caller holds a write
    transaction."""
    store = ctx.store
    previous = store.registry.latest_release_list()
    entries: list[ReleaseEntry] = [entry]
    version, floor = 1, 0
    if previous is not None:
        last = metadata.parse(ReleaseList, SignedDocument.from_bytes(previous.document.encode()))
        entries = [*last.entries, entry]
        version, floor = last.version + 1, last.min_counter
    expires = now_ms + int(ctx.settings.release_expiry_s * 1000)
    release = ReleaseList(version, expires, kept(entries), floor)
    try:
        signers = ctx.keyring.signing_keys("release")
    except KeyringError:
        signers = ()
    doc = metadata.sign(release, signers)
    store.registry.put_release_list(
        ReleaseListRecord(version, doc.to_bytes().decode(), bool(signers), now_ms, actor)
    )
    if signers:
        mark_released(ctx, release)
    else:
        logger.info("release list v%d is pending: the release key is offline", version)
    return version, bool(signers)


def mark_released(ctx: HubContext, release: ReleaseList) -> None:
    """Versions the newly signed list names are released. Versions it leaves out that
    are older (lower counter) than its newest entry are withdrawn: the release officer
    dropped them, or they fell past :data:`KEEP_VERSIONS`; later drafts omit them too.
    """
    registry = ctx.store.registry
    listed = {(e.name, e.version) for e in release.entries}
    newest = max((e.release_counter for e in release.entries), default=0)
    for name, version in registry.listed_below(newest):
        if (name, version) not in listed:
            registry.set_status(name, version, "withdrawn")
    for name, version in listed:
        registry.set_status(name, version, "released")


def pending_release(ctx: HubContext) -> SignedDocument | None:
    """The newest unsigned release list, if it is newer than the newest signed one."""
    pending = ctx.store.registry.latest_release_list(signed=False)
    signed = ctx.store.registry.latest_release_list(signed=True)
    if pending is None or (signed is not None and signed.version > pending.version):
        return None
    return SignedDocument.from_bytes(pending.document.encode())


def accept_release(ctx: HubContext, doc: SignedDocument, *, actor: str) -> ReleaseList:
    """Store a release list signed offline and mark its versions released.

    Raises:
        WrongKind, Malformed: not a release list document.
        ThresholdNotMet: not signed by a threshold of the root's release keys.
        Conflict: expired, not newer than the published list, lowering its rollback
            floor, or naming a version the registry does not hold with exactly those
            bytes and counter.
    """
    release = metadata.parse(ReleaseList, doc)
    root = ctx.keyring.root
    verify_threshold(doc, "release", root.role_keys("release"), root.threshold("release"))
    store, now_ms = ctx.store, ctx.now_ms()
    if now_ms >= release.expires:
        raise Conflict(f"release list v{release.version} has expired: draft a new one")
    with store.immediate():
        current = signed_release(store)
        if current is not None and release.version <= current.version:
            raise Conflict(
                f"release list v{release.version} is not newer than the published "
                f"v{current.version}"
            )
        if current is not None and release.min_counter < current.release.min_counter:
            raise Conflict(
                f"release list v{release.version} lowers the rollback floor to "
                f"{release.min_counter} (published: {current.release.min_counter})"
            )
        for e in release.entries:
            held = store.registry.version(e.name, e.version)
            if (
                held is None
                or (held.sha256, held.length, held.release_counter)
                != (e.sha256, e.length, e.release_counter)
                or held.status == "withdrawn"
            ):
                raise Conflict(f"release list names {e.name} v{e.version}, not held as signed")
        store.registry.put_release_list(
            ReleaseListRecord(release.version, doc.to_bytes().decode(), True, now_ms, actor)
        )
        mark_released(ctx, release)
        store.audit.append(
            at=now_ms, actor=actor, action="release.publish", target=f"v{release.version}"
        )
    return release


def publish(ctx: HubContext) -> bool:
    """Publish the signed release list and a heartbeat pinning it; False when it stays
    stored for the running hub to publish."""
    if publish_release(ctx) is None:
        logger.info("release list stored; the hub publishes it when the broker is reachable")
        return False
    issue_heartbeat(ctx)
    return True


def kept(entries: list[ReleaseEntry]) -> tuple[ReleaseEntry, ...]:
    """The entries a new list keeps: the newest :data:`KEEP_VERSIONS` per model, then
    the highest :data:`~protocol.metadata.MAX_ENTRIES` release counters."""
    newest: dict[str, list[int]] = {}
    for e in entries:
        newest.setdefault(e.name, []).append(e.version)
    cut = {n: sorted(v)[-KEEP_VERSIONS:] for n, v in newest.items()}
    kept = sorted((e for e in entries if e.version in cut[e.name]), key=lambda e: e.release_counter)
    return tuple(kept[-metadata.MAX_ENTRIES :])
