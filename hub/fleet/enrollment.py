"""Enrollment: pinning a device's key on its hello, tokens, approval and revocation.

:func:`admit_claim` writes what :func:`hub.fleet.identity.decide` (pure) says about a
verified hello from an unknown or pending device; the table of outcomes is in
:mod:`hub.fleet.identity`. The operator's actions (tokens, approve, revoke, preauthorize)
are the rest of this module.

**Tokens** are 32 random bytes, url-safe base64, shown once by :func:`create_token` and
stored as their sha256. A plain hash is enough because the secret has 256 bits of entropy:
nobody can guess or brute-force a preimage, so a slow password hash (argon2, bcrypt) would
only add cost to every hello; and a deterministic hash lets the hub find the token by a
unique index instead of trying every salted row. Kinds: ``single`` (one use) and ``fleet``
(any number of uses until it expires; an expiry is required). Tags on a token are applied
to every device enrolled with it, over the tags the device claims. Audit rows and logs
name a token by its id, never by its secret.

Every status change made here (approve, revoke, preauthorize) bumps the ``devices_epoch``
counter in the same transaction, so ingest, which caches device keys, drops its cache at
its next batch. What this module does not do: verify signatures, publish anything, or
delete devices.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field, replace

from hub.errors import Conflict, InvalidRequest
from hub.fleet.identity import (
    ACTIVE,
    PENDING,
    REVOKED,
    Claim,
    Decision,
    Enroll,
    Pend,
    Refuse,
    decide,
    token_hash,
)
from hub.store import Store
from hub.store.rows import Device, EnrollmentToken, HelloUpdate, TokenKind
from protocol import keys
from protocol.errors import Malformed
from protocol.messages import Hello
from protocol.schema import check_name

SECRET_PREFIX = "efe_"  # noqa: S105 (not a secret)
"""Before the random part of an enrollment secret: ``token_urlsafe`` may begin with ``-``,
which a command line (``--enrollment-token -Ab..``) takes for an option."""
ENROLLED_BY_TOKEN = "enrollment-token:"  # noqa: S105 (a label: + token id in enrolled_by)


@dataclass(frozen=True)
class IssuedToken:
    """A token as created: ``secret`` exists only here and is never stored or logged."""

    id: str
    secret: str = field(repr=False)
    kind: TokenKind
    expires_at: int | None
    tags: dict[str, str]


def admit_claim(store: Store, claim: Claim, *, now_ms: int, max_pending: int) -> Decision:
    """Decide on ``claim`` and write the outcome (device, token use, audit).

    Runs inside ingest's batch transaction.
    """
    device = store.devices.find(claim.device_id)
    token = None
    if claim.hello.enrollment_token is not None:
        token = store.enrollment_tokens.by_digest(token_hash(claim.hello.enrollment_token))
    pending = store.devices.count(status=PENDING)
    holder = store.devices.key_holder(claim.hello.public_key, besides=claim.device_id)
    decision = decide(
        claim, device, token, now_ms=now_ms, pending=pending, max_pending=max_pending,
        key_holder=holder,
    )  # fmt: skip
    if isinstance(decision, Enroll) and not store.enrollment_tokens.use(decision.token_id):
        # only if another hello used up the token since it was read
        decision = Pend("token_used") if device is None else Refuse("pending")
    if isinstance(decision, Refuse):
        if decision.reason == "pending" and decision.why:
            store.devices.set_pending_reason(claim.device_id, decision.why)
        return decision
    hello = claim.hello
    known = device or Device(claim.device_id, hello.public_key, PENDING, first_seen=now_ms)
    active = hello.active  # a hello that names no active model leaves the known one
    claimed = replace(
        known,
        public_key=hello.public_key,
        tags=decision.tags if isinstance(decision, Enroll) else dict(hello.tags),
        agent_version=hello.agent_version,
        last_seen=now_ms,
        active_name=active.name if active else known.active_name,
        active_version=active.version if active else known.active_version,
        active_sha256=active.sha256 if active else known.active_sha256,
    )
    if isinstance(decision, Enroll):
        claimed = replace(
            claimed,
            status=ACTIVE,
            enrolled_at=now_ms,
            enrolled_by=ENROLLED_BY_TOKEN + decision.token_id,
            online=True,
            pending_reason=None,
        )
        detail = {"token": decision.token_id, "keyid": claim.keyid}
        action, reason = "device.enroll", ""
    else:
        claimed = replace(claimed, status=PENDING, online=False, pending_reason=decision.reason)
        detail = {"keyid": claim.keyid}
        action, reason = "device.pending", decision.reason
    store.devices.put(claimed)
    store.audit.append(
        at=now_ms,
        actor=f"device:{claim.device_id}",
        action=action,
        target=claim.device_id,
        # a single-use token shown again by another device: leaked, or a cloned image
        outcome="alert" if reason == "token_used" else "ok",
        reason=reason,
        detail=detail,
    )
    return decision


def hello_update(store: Store, device: Device, hello: Hello) -> HelloUpdate:
    """What a re-hello from an active device changes: version, tags, active model.

    Tags: the device's claims, overridden by those of the token that enrolled it.
    """
    tags = dict(hello.tags)
    enrolled_by = device.enrolled_by or ""
    if enrolled_by.startswith(ENROLLED_BY_TOKEN):
        token = store.enrollment_tokens.get(enrolled_by.removeprefix(ENROLLED_BY_TOKEN))
        tags |= token.tags if token else {}
    active = hello.active
    if active is None:
        return HelloUpdate(hello.agent_version, tags)
    return HelloUpdate(hello.agent_version, tags, active.name, active.version, active.sha256)


# ---------------------------------------------------------------------- operator actions


def create_token(
    store: Store,
    *,
    kind: TokenKind,
    by: str,
    now_ms: int,
    expires_at: int | None = None,
    tags: dict[str, str] | None = None,
) -> IssuedToken:
    """Create an enrollment token; its secret is returned here and never again.

    Raises:
        InvalidRequest: an unknown kind, a fleet token without expiry, an expiry in the
            past, or a tag that is not a valid name.
    """
    if kind not in ("single", "fleet"):
        raise InvalidRequest(f"kind must be single or fleet, not {kind!r}")
    if kind == "fleet" and expires_at is None:
        raise InvalidRequest("a fleet token needs expires_at")
    if expires_at is not None and expires_at <= now_ms:
        raise InvalidRequest("expires_at must be in the future")
    tags = dict(tags or {})
    try:
        for key, value in tags.items():
            check_name(key, "tag key")
            if not isinstance(value, str) or len(value) > 128:
                raise Malformed(f"tag {key} must be a string of at most 128 characters")
    except Malformed as e:
        raise InvalidRequest(str(e)) from e
    token = IssuedToken(
        id="tok-" + secrets.token_hex(8),
        secret=SECRET_PREFIX + secrets.token_urlsafe(32),
        kind=kind,
        expires_at=expires_at,
        tags=tags,
    )
    with store.atomic():
        store.enrollment_tokens.add(
            EnrollmentToken(token.id, kind, now_ms, by, expires_at, tags=tags),
            digest=token_hash(token.secret),
        )
        store.audit.append(
            at=now_ms, actor=by, action="enrollment_token.create", target=token.id,
            detail={"kind": kind},
        )  # fmt: skip
    return token


def revoke_token(store: Store, token_id: str, *, by: str, now_ms: int) -> None:
    """Make a token unusable from now on (devices it enrolled stay enrolled).

    Raises:
        NotFound: no such token.
    """
    with store.atomic():
        store.enrollment_tokens.revoke(token_id)
        store.audit.append(at=now_ms, actor=by, action="enrollment_token.revoke", target=token_id)


def list_tokens(store: Store) -> list[EnrollmentToken]:
    """Every token (never its secret or digest), newest first."""
    return store.enrollment_tokens.all()


def approve(store: Store, device_id: str, *, by: str, now_ms: int) -> None:
    """Trust the key a pending device presented: it becomes active.

    Raises:
        NotFound: no such device.
        Conflict: the device is not pending.
    """
    with store.atomic():
        device = store.devices.get(device_id)
        if device.status != PENDING:
            raise Conflict(f"device {device_id} is {device.status}, not pending")
        store.devices.approve(device_id, at_ms=now_ms, by=by)
        keyid = keys.keyid(keys.public_from_hex(device.public_key))
        store.audit.append(
            at=now_ms, actor=by, action="device.approve", target=device_id, detail={"keyid": keyid}
        )
        store.counters.bump("devices_epoch")


def revoke(store: Store, device_id: str, *, by: str, now_ms: int) -> None:
    """Revoke a device: ingest refuses its frames (and alerts), the downlink goes quiet.

    Raises:
        NotFound: no such device.
        Conflict: already revoked.
    """
    with store.atomic():
        device = store.devices.get(device_id)
        if device.status == REVOKED:
            raise Conflict(f"device {device_id} is already revoked")
        store.devices.revoke(device_id)
        store.audit.append(
            at=now_ms, actor=by, action="device.revoke", target=device_id,
            detail={"was": device.status},
        )  # fmt: skip
        store.counters.bump("devices_epoch")


def preauthorize(
    store: Store,
    device_id: str,
    public_key: str,
    *,
    by: str,
    now_ms: int,
    tags: dict[str, str] | None = None,
) -> None:
    """Register a device and its key ahead of its first hello (it starts active).

    Raises:
        InvalidRequest: a bad device id, key or tag.
        Conflict: a device with this id exists.
    """
    try:
        check_name(device_id, "device_id")
        keyid = keys.keyid(keys.public_from_hex(public_key))
        for key in tags or {}:
            check_name(key, "tag key")
    except Malformed as e:
        raise InvalidRequest(str(e)) from e
    with store.atomic():
        if store.devices.find(device_id) is not None:
            raise Conflict(f"device {device_id} exists")
        store.devices.add(
            Device(
                device_id,
                public_key,
                ACTIVE,
                first_seen=now_ms,
                tags=dict(tags or {}),
                enrolled_at=now_ms,
                enrolled_by=by,
            )
        )
        store.audit.append(
            at=now_ms, actor=by, action="device.preauthorize", target=device_id,
            detail={"keyid": keyid},
        )  # fmt: skip
        store.counters.bump("devices_epoch")
