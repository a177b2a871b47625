"""Dashboard sessions: a signed-in API token behind an HttpOnly, SameSite=Strict cookie.

A person signs in by pasting an API token (the same tokens and roles as REST:
:mod:`hub.api.auth`). The hub keeps the token in memory under a random session id and
sends only that id, in a cookie the page's scripts cannot read (HttpOnly) and the
browser does not send on another site's requests (SameSite=Strict). Every request
authenticates the kept token again, so revoking the token ends its sessions at once.

Every action is a POST form carrying a CSRF token bound to the session (32 random bytes,
compared in constant time): a request forged from elsewhere cannot read it, and SameSite
alone does not cover older browsers or a sibling subdomain.

Sessions live in the hub process's memory, at most :data:`MAX_SESSIONS` (the oldest go
first: bounded state) for at most :data:`SESSION_TTL_MS`: a restarted hub asks everyone to
sign in again, which costs a paste and keeps no bearer secret on disk twice.
"""

from __future__ import annotations

import hmac
import secrets
import threading
from collections import OrderedDict
from dataclasses import dataclass

from fastapi import Request
from starlette.responses import Response

from hub.api import auth
from hub.api.auth import Principal
from hub.api.deps import get_hub
from hub.errors import PermissionDenied, Unauthenticated

COOKIE = "ef_session"
MAX_SESSIONS = 10_000
SESSION_TTL_MS = 12 * 3600 * 1000
MAX_TOKEN_CHARS = 256


@dataclass(frozen=True)
class Session:
    """A signed-in browser: the token it signed in with and its CSRF token."""

    id: str
    token: str
    csrf: str
    expires_ms: int


class Sessions:
    """The hub's open dashboard sessions, oldest first; safe across threads."""

    def __init__(self, limit: int = MAX_SESSIONS) -> None:
        self._limit = limit
        self._by_id: OrderedDict[str, Session] = OrderedDict()
        self._lock = threading.Lock()

    def open(self, token: str, *, now_ms: int) -> Session:
        session = Session(
            secrets.token_urlsafe(32), token, secrets.token_urlsafe(32), now_ms + SESSION_TTL_MS
        )
        with self._lock:
            self._by_id[session.id] = session
            while len(self._by_id) > self._limit:
                self._by_id.popitem(last=False)
        return session

    def find(self, session_id: str, *, now_ms: int) -> Session | None:
        with self._lock:
            session = self._by_id.get(session_id)
            if session is not None and session.expires_ms <= now_ms:
                del self._by_id[session_id]
                return None
            return session

    def close(self, session_id: str) -> None:
        with self._lock:
            self._by_id.pop(session_id, None)


def sessions_of(request: Request) -> Sessions:
    found: Sessions = request.app.state.ui_sessions
    return found


def current(request: Request) -> tuple[Session, Principal] | None:
    """The request's session and who it signed in as; None when signed out or the token
    no longer works (its session is dropped then)."""
    session_id = request.cookies.get(COOKIE, "")
    if not session_id:
        return None
    hub = get_hub(request)
    sessions = sessions_of(request)
    session = sessions.find(session_id, now_ms=hub.now_ms())
    if session is None:
        return None
    try:
        principal = auth.authenticate(hub.store, session.token)
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
    session = sessions_of(request).open(token.strip(), now_ms=hub.now_ms())
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
