"""API tokens: bearer secrets with a role, stored hashed, shared by the REST API and the CLI.

A token reads ``efh_<id>_<secret>``: ``id`` is 12 hex digits (not secret: the audit log
names callers as ``token:<id>``), ``secret`` is 32 random bytes, url-safe base64. The
prefix lets secret scanners recognise a leaked token. The hub keeps only the sha256 of
the whole token, hex. A slow KDF (argon2, scrypt) buys nothing here: it exists to make
guessing a *low-entropy* password from its hash expensive, and 256 random bits cannot
be guessed however fast the hash is. The full token is shown once, at creation.

Checking a token looks its row up by ``id`` and compares digests with
:func:`hmac.compare_digest`, so the time taken does not depend on how much of the secret
was right. Roles are ordered ``viewer < operator < admin``: a role may do everything the
roles below it may.

What this module does not do: speak HTTP (:mod:`hub.api.deps` turns a failed check into
401 or 403), expire tokens, or rate-limit guesses.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from typing import Literal, get_args

from hub.errors import InvalidRequest, Unauthenticated
from hub.store import Store
from hub.store.rows import ApiToken

Role = Literal["viewer", "operator", "admin"]
ROLES: tuple[Role, ...] = get_args(Role)
"""Lowest first: each role may do what the roles before it may."""
TOKEN_PREFIX = "efh_"  # noqa: S105 - the prefix, not a secret
TOKEN_PATTERN = re.compile(r"efh_([0-9a-f]{12})_[A-Za-z0-9_-]{43}")
MAX_NAME_CHARS = 64
_NAME = re.compile(rf"[A-Za-z0-9_ .@:/+-]{{0,{MAX_NAME_CHARS}}}")


@dataclass(frozen=True)
class Principal:
    """Who is calling: an API token that checked out, and its role; or, ``local``, the
    operator of the CLI's ``--data`` mode, who holds the hub's store itself (admin)."""

    token_id: str
    role: Role
    name: str
    local: bool = False

    @property
    def actor(self) -> str:
        """How the audit log names this caller (never the token itself)."""
        return f"cli:{self.name}" if self.local else f"token:{self.token_id}"

    def may(self, role: Role) -> bool:
        """True when this caller's role is ``role`` or above it."""
        return ROLES.index(self.role) >= ROLES.index(role)


@dataclass(frozen=True)
class IssuedToken:
    """A token just created: the only time :attr:`token` exists outside its holder."""

    id: str
    token: str
    role: Role
    name: str
    created_at: int


def digest(token: str) -> str:
    """The stored form of ``token``: sha256 of its UTF-8 bytes, hex."""
    return hashlib.sha256(token.encode()).hexdigest()


def check_role(role: str) -> Role:
    """Return ``role`` if it is one of :data:`ROLES`.

    Raises:
        InvalidRequest: any other string.
    """
    for known in ROLES:
        if role == known:
            return known
    raise InvalidRequest(f"role must be one of {', '.join(ROLES)}, not {role[:20]!r}")


def create_token(store: Store, *, role: str, name: str, actor: str, now_ms: int) -> IssuedToken:
    """Create a token with ``role``, store its digest, audit it, and return it once.

    Raises:
        InvalidRequest: an unknown role, or a name longer than 64 characters or with
            characters other than letters, digits, space and ``.@:/+-_``.
    """
    checked = check_role(role)
    if _NAME.fullmatch(name) is None:
        raise InvalidRequest(
            f"token name must be at most {MAX_NAME_CHARS} letters, digits, spaces or .@:/+-_"
        )
    token_id = secrets.token_hex(6)
    token = f"{TOKEN_PREFIX}{token_id}_{secrets.token_urlsafe(32)}"
    with store.atomic():
        store.api_tokens.add(ApiToken(token_id, checked, name, now_ms, actor), digest=digest(token))
        store.audit.append(
            at=now_ms,
            actor=actor,
            action="api_token.create",
            target=token_id,
            detail={"role": checked, "name": name},
        )
    return IssuedToken(token_id, token, checked, name, now_ms)


def list_tokens(store: Store) -> list[ApiToken]:
    """Every token (never its digest), oldest first."""
    return store.api_tokens.all()


def revoke_token(store: Store, token_id: str, *, actor: str, now_ms: int) -> None:
    """Revoke a token for good; revoking it again changes nothing and is not an error.

    Raises:
        NotFound: no token with that id.
    """
    with store.atomic():
        store.api_tokens.revoke(token_id)
        store.audit.append(at=now_ms, actor=actor, action="api_token.revoke", target=token_id)


def authenticate(store: Store, token: str) -> Principal:
    """The caller ``token`` identifies.

    Raises:
        Unauthenticated: not a token of ours, unknown, revoked, or the digest differs.
    """
    match = TOKEN_PATTERN.fullmatch(token)
    if match is None:
        raise Unauthenticated("not an edgefleet API token")
    credential = store.api_tokens.credential(match.group(1))
    if credential is None:
        raise Unauthenticated("unknown or revoked token")
    row = credential.token
    if not hmac.compare_digest(credential.digest, digest(token)) or row.revoked:
        raise Unauthenticated("unknown or revoked token")
    return Principal(row.id, check_role(row.role), row.name)


def principal_of(store: Store, token_id: str) -> Principal:
    """The caller behind a token already checked once (a dashboard session keeps its id,
    not its secret): its role as it stands now.

    Raises:
        Unauthenticated: no such token, or it was revoked since.
    """
    credential = store.api_tokens.credential(token_id)
    if credential is None or credential.token.revoked:
        raise Unauthenticated("unknown or revoked token")
    row = credential.token
    return Principal(row.id, check_role(row.role), row.name)
