"""Dashboard sessions: a signed-in API token behind an HttpOnly, SameSite=Strict cookie.

A person signs in by pasting an API token (the same tokens and roles as REST:
:mod:`hub.api.auth`). The hub checks it once, then opens a session: 32 random bytes as
its id, sent only in a cookie the page's scripts cannot read (HttpOnly) and the browser
does not send on another site's requests (SameSite=Strict). The store keeps the session
(``store.ui_sessions``) under the sha256 of its id, with the token's id but never its
secret, so a copy of the database signs nobody in and no bearer secret sits on disk twice.
Keeping it in the store, not the process, means a sign-in survives a hub restart and works
on every hub replica that shares the database. Every request reads the token's row again
(:func:`hub.api.auth.principal_of`), so revoking the token ends its sessions at once and a
changed role applies at the next page.

Every action is a POST form carrying a CSRF token bound to the session: an HMAC of the
fixed label ``edgefleet ui csrf`` keyed by the session id, compared in constant time. A
request forged from elsewhere cannot read it (nor the cookie it derives from), SameSite
alone does not cover older browsers or a sibling subdomain, and deriving it means the store
holds nothing more to steal.

At most :data:`MAX_SESSIONS` sessions are kept (each sign-in first deletes the expired ones,
then the oldest beyond the bound), each for at most :data:`SESSION_TTL_MS`; an expired
session is refused and deleted when it is next presented, and signing out deletes it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from dataclasses import dataclass

from fastapi import Request
from starlette.responses import Response

from hub.api import auth
from hub.api.auth import Principal
from hub.api.deps import get_hub
from hub.errors import PermissionDenied, Unauthenticated
from hub.store import Store
from hub.store.rows import UiSession

COOKIE = "ef_session"
MAX_SESSIONS = 10_000
SESSION_TTL_MS = 12 * 3600 * 1000
MAX_TOKEN_CHARS = 256
MAX_SESSION_ID_CHARS = 100  # a cookie longer than any id we issue is not hashed, just refused
_CSRF_LABEL = b"edgefleet ui csrf"


@dataclass(frozen=True)
class Session:
    """A signed-in browser: its id (from its cookie), the token it signed in with (by id),
    its CSRF token and when it ends."""

    id: str
    token_id: str
    csrf: str
    expires_ms: int


def digest(session_id: str) -> str:
    """What the store keeps of a session id: sha256 of its UTF-8 bytes, hex. As for API
    tokens, 256 random bits need no slow hash."""
    return hashlib.sha256(session_id.encode()).hexdigest()


def csrf_of(session_id: str) -> str:
    """The CSRF token of the session ``session_id``: derived, never stored."""
    mac = hmac.new(session_id.encode(), _CSRF_LABEL, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).rstrip(b"=").decode()


class Sessions:
    """The dashboard sessions in ``store``."""

    def __init__(self, store: Store, limit: int = MAX_SESSIONS) -> None:
        self._store = store
        self._limit = limit

    def open(self, token_id: str, *, now_ms: int) -> Session:
        session_id = secrets.token_urlsafe(32)
        expires = now_ms + SESSION_TTL_MS
        with self._store.atomic():
            self._store.ui_sessions.prune(now_ms=now_ms, keep=self._limit - 1)
            self._store.ui_sessions.add(UiSession(digest(session_id), token_id, now_ms, expires))
        return Session(session_id, token_id, csrf_of(session_id), expires)

    def find(self, session_id: str, *, now_ms: int) -> Session | None:
        """The session, or None when unknown or expired (an expired one is deleted)."""
        if not session_id or len(session_id) > MAX_SESSION_ID_CHARS:
            return None
        row = self._store.ui_sessions.get(digest(session_id))
        if row is None:
            return None
        if row.expires_ms <= now_ms:
            self._store.ui_sessions.delete(row.digest)
            return None
        return Session(session_id, row.token_id, csrf_of(session_id), row.expires_ms)

    def close(self, session_id: str) -> None:
        if session_id and len(session_id) <= MAX_SESSION_ID_CHARS:
            self._store.ui_sessions.delete(digest(session_id))


def sessions_of(request: Request) -> Sessions:
    return Sessions(get_hub(request).store, request.app.state.ui_max_sessions)


def current(request: Request) -> tuple[Session, Principal] | None:
    """The request's session and who it signed in as; None when signed out, expired, or
    the token no longer works (its session is deleted then)."""
    session_id = request.cookies.get(COOKIE, "")
    if not session_id:
        return None
    hub = get_hub(request)
    sessions = sessions_of(request)
    session = sessions.find(session_id, now_ms=hub.now_ms())
    if session is None:
        return None
    try:
        principal = auth.principal_of(hub.store, session.token_id)
    except Unauthenticated:
        sessions.close(session_id)
        return None
    return session, principal


def sign_in(request: Request, token: str, response: Response) -> Principal:
    """Check ``token``, open a session for it and set its cookie on ``response``.

    Raises:
        Unauthenticated: not a token the hub accepts.
    """
    hub = get_hub(request)
    principal = auth.authenticate(hub.store, token.strip()[:MAX_TOKEN_CHARS])
    session = sessions_of(request).open(principal.token_id, now_ms=hub.now_ms())
    response.set_cookie(
        COOKIE,
        session.id,
        max_age=SESSION_TTL_MS // 1000,
        path="/ui",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    return principal


def sign_out(request: Request, response: Response) -> None:
    sessions_of(request).close(request.cookies.get(COOKIE, ""))
    response.delete_cookie(COOKIE, path="/ui")


def check_csrf(request: Request, session: Session, principal: Principal, sent: str) -> None:
    """Refuse a form whose CSRF token is not the session's, and audit the refusal.

    Raises:
        PermissionDenied: a missing or wrong CSRF token.
    """
    if sent and hmac.compare_digest(sent.encode(), session.csrf.encode()):
        return
    hub = get_hub(request)
    hub.store.audit.append(
        at=hub.now_ms(),
        actor=principal.actor,
        action="ui.action",
        target=request.url.path[:200],
        outcome="rejected",
        reason="csrf",
    )
    raise PermissionDenied("this form's CSRF token is missing or stale: reload the page")
