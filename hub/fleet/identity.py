"""Device identity, pure: statuses, the refusals a frame meets, and the enrollment decision.

A device introduces itself with ``up.hello``, signed with the key it carries (proof of
possession, checked by ingest before anything here runs). Then:

=========================  ==============================  ===================================
device row                 hello                           outcome
=========================  ==============================  ===================================
none                       valid token                     **active**, key pinned, audited
none                       no token / invalid token        **pending** (key recorded, trusted
                                                           for nothing), audited; an operator
                                                           approves it later
pending, same key          valid token                     active
pending, other key         valid token                     active with the new key (the
                                                           pending key was never trusted)
pending, same key          no valid token                  refused ``pending`` with why (keeps
                                                           waiting)
pending, other key         no valid token                  refused ``identity_mismatch``,
                                                           alert ``key_conflict``
any                        a key another device holds      refused ``identity_mismatch``,
                           (any status), any token         alert ``key_reused``: one key
                                                           never speaks for two ids
=========================  ==============================  ===================================

Active and revoked devices never reach :func:`decide`: ingest verifies their frames with
the pinned key, refuses a hello carrying another key (alert ``key_change_refused``: a
cloned device, or a key change, which needs re-enrollment) and refuses everything from a
revoked device (alert ``revoked_key_in_use``). :mod:`hub.fleet.enrollment` writes what
:func:`decide` returns; ingest's rules (:mod:`hub.ingest.rules`) use the statuses,
:class:`Claim` and the refusals, and no I/O.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Final

from hub.store.rows import Device, DeviceStatus, EnrollmentToken
from protocol import keys
from protocol.errors import ProtocolError
from protocol.messages import Hello

PENDING: Final[DeviceStatus] = "pending"
ACTIVE: Final[DeviceStatus] = "active"
REVOKED: Final[DeviceStatus] = "revoked"


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
    """Refuse the hello (audited under ingest's rate limit as ``action``); ``why``: what
    the device can do about it (for ``pending``: the token's problem)."""

    reason: str
    action: str = "frame_rejected"
    why: str = ""


Decision = Enroll | Pend | Refuse


def token_hash(secret: str) -> str:
    """The stored form of a token secret: sha256 hex (see :mod:`hub.fleet.enrollment`)."""
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def token_problem(token: EnrollmentToken | None, now_ms: int) -> str | None:
    """Why ``token`` cannot enroll a device now, or None if it can."""
    if token is None:
        return "token_unknown"
    if token.revoked:
        return "token_revoked"
    if token.expires_at is not None and token.expires_at <= now_ms:
        return "token_expired"
    if token.kind == "single" and token.uses >= 1:
        return "token_used"
    return None


def decide(
    claim: Claim,
    device: Device | None,
    token: EnrollmentToken | None,
    *,
    now_ms: int,
    pending: int,
    max_pending: int,
    key_holder: str | None = None,
) -> Decision:
    """What to do with a verified hello from an unknown or pending device.

    Args:
        claim: the hello.
        device: the device, if known (status pending).
        token: the token the hello's secret hashes to, if any.
        now_ms: the batch's time.
        pending: how many devices are pending now.
        max_pending: refuse new pending devices beyond this (a hello flood must not
            fill the disk: docs/decisions.md, "Bounded state a stranger can create").
        key_holder: another device (of any status) whose key the hello carries: a copied
            or revoked key enrolling under a second id, refused whatever the token.
    """
    if key_holder is not None:
        return Refuse("identity_mismatch", "key_reused")
    problem = "no_token" if claim.hello.enrollment_token is None else token_problem(token, now_ms)
    if problem is None and token is not None:
        return Enroll(token.id, {**claim.hello.tags, **token.tags})
    if device is None:
        return Pend(problem or "no_token") if pending < max_pending else Refuse("pending_full")
    if device.public_key != claim.hello.public_key:
        return Refuse("identity_mismatch", "key_conflict")
    return Refuse("pending", why=problem or "no_token")
