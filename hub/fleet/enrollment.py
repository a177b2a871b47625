"""Device identity: enrollment tokens, pinning a device's key, approval and revocation.

A device introduces itself with ``up.hello``, signed with the key it carries (proof of
possession, checked by ingest before anything here runs). Then (THREATS.md B10, B34):

=========================  ==============================  ===================================
device row                 hello                           outcome
=========================  ==============================  ===================================
none                       valid token                     **active**, key pinned, audited
none                       no token / invalid token        **pending** (key recorded, trusted
                                                           for nothing), audited; an operator
                                                           :func:`approve`\\ s it later
pending, same key          valid token                     active
pending, other key         valid token                     active with the new key (the
                                                           pending key was never trusted)
pending, same key          no valid token                  refused ``pending`` (keeps waiting)
pending, other key         no valid token                  refused ``identity_mismatch``,
                                                           alert ``key_conflict``
=========================  ==============================  ===================================

Active and revoked devices never reach :func:`decide`: ingest verifies their frames with
the pinned key, refuses a hello carrying another key (alert ``key_change_refused``: a
cloned device, or a key change, which needs re-enrollment) and refuses everything from a
revoked device (alert ``revoked_key_in_use``).

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

import hashlib
import json
import secrets
from dataclasses import dataclass, field
from typing import Literal

from hub.errors import Conflict, InvalidRequest
from hub.store.database import Row, Store
from protocol import canonical, keys
from protocol.errors import Malformed, ProtocolError
from protocol.messages import Hello
from protocol.schema import check_name

PENDING, ACTIVE, REVOKED = "pending", "active", "revoked"
DEVICES_EPOCH = "devices_epoch"
ENROLLED_BY_TOKEN = "enrollment-token:"  # noqa: S105 (a label: + token id in enrolled_by)
TokenKind = Literal["single", "fleet"]


class UnknownDevice(ProtocolError):
    """A frame from a device id the hub has never enrolled."""

    reason = "unknown_device"
    status_hint = 403


class DevicePending(ProtocolError):
    """A frame from a device that waits for an operator's approval."""

    reason = "pending"
    status_hint = 403


class DeviceRevoked(ProtocolError):
    """A frame from a revoked device."""

    reason = "revoked"
    status_hint = 403


@dataclass(frozen=True)
class IssuedToken:
    """A token as created: ``secret`` exists only here and is never stored or logged."""

    id: str
    secret: str = field(repr=False)
    kind: TokenKind
    expires_at: int | None
    tags: dict[str, str]


@dataclass(frozen=True)
class Claim:
    """A hello whose proof of possession verified, from an unknown or pending device."""

    device_id: str
    seq: int
    hello: Hello

    @property
    def keyid(self) -> str:
        return keys.keyid(keys.public_from_hex(self.hello.public_key))


@dataclass(frozen=True)
class Enroll:
    """Pin the claimed key: the device becomes active."""

    token_id: str
    tags: dict[str, str]


@dataclass(frozen=True)
class Pend:
    """Record the device as pending, with why the token did not enroll it."""

    reason: str


@dataclass(frozen=True)
class Refuse:
    """Refuse the hello (audited under ingest's rate limit as ``action``)."""

    reason: str
    action: str = "frame_rejected"


Decision = Enroll | Pend | Refuse


def token_hash(secret: str) -> str:
    """The stored form of a token secret (sha256 hex; see the module docstring)."""
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def token_problem(token: Row | None, now_ms: int) -> str | None:
    """Why ``token`` cannot enroll a device now, or None if it can."""
    if token is None:
        return "token_unknown"
    if token["revoked"]:
        return "token_revoked"
    if token["expires_at"] is not None and token["expires_at"] <= now_ms:
        return "token_expired"
    if token["kind"] == "single" and token["uses"] >= 1:
        return "token_used"
    return None


def decide(
    claim: Claim,
    device: Row | None,
    token: Row | None,
    *,
    now_ms: int,
    pending: int,
    max_pending: int,
) -> Decision:
    """What to do with a verified hello from an unknown or pending device (pure).

    Args:
        claim: the hello.
        device: the device's row, if any (status pending).
        token: the token row the hello's secret hashes to, if any.
        now_ms: the batch's time.
        pending: how many devices are pending now.
        max_pending: refuse new pending devices beyond this (a hello flood must not
            fill the disk, THREATS.md B31).
    """
    problem = "no_token" if claim.hello.enrollment_token is None else token_problem(token, now_ms)
    if problem is None and token is not None:
        return Enroll(token["id"], {**claim.hello.tags, **json.loads(token["tags"] or "{}")})
    if device is None:
        return Pend(problem or "no_token") if pending < max_pending else Refuse("pending_full")
    if device["public_key"] != claim.hello.public_key:
        return Refuse("identity_mismatch", "key_conflict")
    return Refuse("pending")


def admit_claim(store: Store, claim: Claim, *, now_ms: int, max_pending: int) -> Decision:
    """Decide on ``claim`` and write the outcome (device row, token use, audit).

    Runs inside ingest's batch transaction.
    """
    device = store.find("devices", claim.device_id)
    token = None
    if claim.hello.enrollment_token is not None:
        rows = store.query(
            "SELECT * FROM enrollment_tokens WHERE hash = ?",
            [token_hash(claim.hello.enrollment_token)],
        )
        token = rows[0] if rows else None
    pending = store.count("devices", "status = ?", [PENDING])
    decision = decide(claim, device, token, now_ms=now_ms, pending=pending, max_pending=max_pending)
    if isinstance(decision, Enroll) and not store.use_token(decision.token_id):
        # only if another hello used up the token since the row was read
        decision = Pend("token_used") if device is None else Refuse("pending")
    if isinstance(decision, Refuse):
        return decision
    hello = claim.hello
    row: Row = {
        "public_key": hello.public_key,
        "tags": _json(decision.tags if isinstance(decision, Enroll) else hello.tags),
        "agent_version": hello.agent_version,
        "last_seen": now_ms,
        **_active_columns(hello),
    }
    if isinstance(decision, Enroll):
        row |= {
            "status": ACTIVE,
            "enrolled_at": now_ms,
            "enrolled_by": ENROLLED_BY_TOKEN + decision.token_id,
            "online": 1,
        }
        detail = {"token": decision.token_id, "keyid": claim.keyid}
        action, reason = "device.enroll", ""
    else:
        row |= {"status": PENDING, "online": 0}
        detail = {"keyid": claim.keyid}
        action, reason = "device.pending", decision.reason
    if device is None:
        store.insert("devices", {"id": claim.device_id, "first_seen": now_ms, **row})
    else:
        store.update("devices", claim.device_id, row)
    _audit(store, now_ms, f"device:{claim.device_id}", action, claim.device_id, reason, detail)
    return decision


def hello_changes(store: Store, device: Row, hello: Hello) -> Row:
    """Columns a re-hello from an active device updates: version, tags, active model.

    Tags: the device's claims, overridden by those of the token that enrolled it.
    """
    tags = dict(hello.tags)
    enrolled_by = device.get("enrolled_by") or ""
    if enrolled_by.startswith(ENROLLED_BY_TOKEN):
        token = store.find("enrollment_tokens", enrolled_by.removeprefix(ENROLLED_BY_TOKEN))
        tags |= json.loads(token["tags"] or "{}") if token else {}
    return {"agent_version": hello.agent_version, "tags": _json(tags), **_active_columns(hello)}


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
        secret=secrets.token_urlsafe(32),
        kind=kind,
        expires_at=expires_at,
        tags=tags,
    )
    with store.atomic():
        store.insert(
            "enrollment_tokens",
            {
                "id": token.id,
                "hash": token_hash(token.secret),
                "kind": kind,
                "created_at": now_ms,
                "created_by": by,
                "expires_at": expires_at,
                "tags": _json(tags),
            },
        )
        _audit(store, now_ms, by, "enrollment_token.create", token.id, "", {"kind": kind})
    return token


def revoke_token(store: Store, token_id: str, *, by: str, now_ms: int) -> None:
    """Make a token unusable from now on (devices it enrolled stay enrolled).

    Raises:
        NotFound: no such token.
    """
    with store.atomic():
        store.update("enrollment_tokens", token_id, {"revoked": 1})
        _audit(store, now_ms, by, "enrollment_token.revoke", token_id, "", {})


def list_tokens(store: Store) -> list[Row]:
    """Every token without its hash, newest first."""
    return store.query(
        "SELECT id, kind, created_at, created_by, expires_at, uses, revoked, tags "
        "FROM enrollment_tokens ORDER BY created_at DESC, id"
    )


def approve(store: Store, device_id: str, *, by: str, now_ms: int) -> None:
    """Trust the key a pending device presented: it becomes active.

    Raises:
        NotFound: no such device.
        Conflict: the device is not pending.
    """
    with store.atomic():
        device = store.get("devices", device_id)
        if device["status"] != PENDING:
            raise Conflict(f"device {device_id} is {device['status']}, not pending")
        store.update(
            "devices", device_id, {"status": ACTIVE, "enrolled_at": now_ms, "enrolled_by": by}
        )
        keyid = keys.keyid(keys.public_from_hex(device["public_key"]))
        _audit(store, now_ms, by, "device.approve", device_id, "", {"keyid": keyid})
        store.bump(DEVICES_EPOCH)


def revoke(store: Store, device_id: str, *, by: str, now_ms: int) -> None:
    """Revoke a device: ingest refuses its frames (and alerts), the downlink goes quiet.

    Raises:
        NotFound: no such device.
        Conflict: already revoked.
    """
    with store.atomic():
        device = store.get("devices", device_id)
        if device["status"] == REVOKED:
            raise Conflict(f"device {device_id} is already revoked")
        store.update("devices", device_id, {"status": REVOKED, "online": 0})
        _audit(store, now_ms, by, "device.revoke", device_id, "", {"was": device["status"]})
        store.bump(DEVICES_EPOCH)


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
        if store.find("devices", device_id) is not None:
            raise Conflict(f"device {device_id} exists")
        store.insert(
            "devices",
            {
                "id": device_id,
                "public_key": public_key,
                "status": ACTIVE,
                "tags": _json(tags or {}),
                "enrolled_at": now_ms,
                "enrolled_by": by,
                "first_seen": now_ms,
            },
        )
        _audit(store, now_ms, by, "device.preauthorize", device_id, "", {"keyid": keyid})
        store.bump(DEVICES_EPOCH)


def _active_columns(hello: Hello) -> Row:
    if hello.active is None:
        return {}
    ref = hello.active
    return {"active_name": ref.name, "active_version": ref.version, "active_sha256": ref.sha256}


def _json(value: object) -> str:
    return canonical.dumps(value).decode("utf-8")


def _audit(
    store: Store, at: int, actor: str, action: str, target: str, reason: str, detail: Row
) -> None:
    store.audit(
        at=at, actor=actor, action=action, target=target, reason=reason, detail=_json(detail)
    )
