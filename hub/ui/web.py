"""What every dashboard route shares: templates, the signed-in caller, HTML errors, forms.

Pages and actions run on :class:`PageRoute`, which answers the hub's typed errors as an
HTML page with the same status and reason the REST API would give (a 404 for an unknown
device, a 409 for an action the rollout's phase refuses, a 403 for a viewer's action or a
form without its CSRF token), and sends a signed-out browser to the sign-in page.

Actions check, in order: that the form did not come from another site (its ``Origin``,
else 403), a session (else 401), the form's CSRF token (else 403, audited ``reason=csrf``),
and the role, through :func:`hub.api.deps.authorize`, so a refusal is audited exactly as a
REST one (``outcome=rejected``, the REST action's name). They then call the REST route's
own function, so the action and its audit row are the REST ones.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote, urlsplit

from fastapi import Depends, Form, Request
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from fastapi.templating import Jinja2Templates
from starlette.responses import RedirectResponse, Response

from hub.api.auth import Principal, Role
from hub.api.deps import authorize, get_hub
from hub.context import HubContext
from hub.ui import session
from hub.ui.session import Session
from protocol.errors import EdgefleetError

HERE = Path(__file__).parent
TEMPLATES = Jinja2Templates(directory=HERE / "templates")
PAGE_SIZE = 50
SECURITY_HEADERS = {
    # Only the hub's own files run or style a page; no page may be framed (clickjacking an
    # operator's action); forms post only to the hub.
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; "
        "frame-ancestors 'none'; form-action 'self'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}


def when(ms: int | None) -> str:
    """A stored time (ms) as people read it, in UTC."""
    if ms is None:
        return "never"
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ms / 1000))


TEMPLATES.env.filters["when"] = when


class SignInRequired(Exception):
    """Raised by :func:`signed_in` when the browser has no working session."""


@dataclass(frozen=True)
class Signed:
    """A signed-in person: their session (for its CSRF token) and who they are."""

    session: Session
    principal: Principal
    hub: HubContext

    def may(self, role: Role) -> bool:
        return self.principal.may(role)


def signed_in(request: Request) -> Signed:
    found = session.current(request)
    if found is None:
        raise SignInRequired
    return Signed(found[0], found[1], get_hub(request))


SignedDep = Annotated[Signed, Depends(signed_in)]
CsrfField = Annotated[str, Form(max_length=100)]


def act(request: Request, who: Signed, csrf: str, role: Role, action: str) -> Principal:
    """Check the form's CSRF token, then the role as REST would (both refusals audited).

    Raises:
        PermissionDenied: a missing or stale CSRF token, or a role below ``role``.
    """
    session.check_csrf(request, who.session, who.principal, csrf)
    request.state.principal = who.principal
    return authorize(request, role, action)


def render(
    request: Request, template: str, who: Signed | None, status_code: int = 200, **values: Any
) -> Response:
    context = {
        "me": who.principal if who else None,
        "csrf": who.session.csrf if who else "",
        "may_operate": who.may("operator") if who else False,
        "refresh_s": request.app.state.ui_refresh_s,
        "path": request.url.path,
        **values,
    }
    return TEMPLATES.TemplateResponse(request, template, context, status_code=status_code)


def back_to(path: str) -> RedirectResponse:
    """After a successful action: show the page again (POST, redirect, GET)."""
    return RedirectResponse(path, status_code=303)


class PageRoute(APIRoute):
    """A dashboard route: typed errors become HTML pages, a signed-out GET goes to sign in."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def page(request: Request) -> Response:
            response = await answer(request)
            response.headers.update(SECURITY_HEADERS)
            return response

        async def answer(request: Request) -> Response:
            if request.method == "POST" and not same_origin(request):
                return _error(request, 403, "forbidden", "a form from another site is refused")
            try:
                return await handler(request)
            except SignInRequired:
                if request.method == "GET":
                    target = quote(request.url.path + _query(request), safe="")
                    return RedirectResponse(f"/ui/signin?next={target}", status_code=303)
                return _error(request, 401, "unauthenticated", "sign in first")
            except RequestValidationError as exc:
                first = exc.errors()[0] if exc.errors() else {}
                where = ".".join(str(p) for p in first.get("loc", ()))
                return _error(request, 422, "invalid_request", f"{where}: {first.get('msg')}")
            except EdgefleetError as exc:
                if exc.status_hint >= 500:
                    raise
                return _error(request, exc.status_hint, exc.reason, str(exc))

        return page


def same_origin(request: Request) -> bool:
    """False when the browser says the form came from another site: its ``Origin`` names
    another host than the one it asked. Browsers send ``Origin`` with every POST form; the
    hosts are compared, not the schemes, so a TLS-terminating proxy that keeps ``Host``
    passes. This also covers signing in, which has no session (and so no CSRF token) yet."""
    origin = request.headers.get("origin")
    if origin is None:
        return True
    return urlsplit(origin).netloc == request.headers.get("host", "")


def _query(request: Request) -> str:
    return f"?{request.url.query}" if request.url.query else ""


def _error(request: Request, status: int, reason: str, detail: str) -> Response:
    found = session.current(request)
    who = Signed(found[0], found[1], get_hub(request)) if found else None
    response = render(
        request, "error.html", who, status_code=status, reason=reason, detail=detail[:500]
    )
    if status == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="edgefleet"'
    return response


def safe_next(target: str) -> str:
    """Where to go after signing in: a dashboard path only, never another site."""
    if target.startswith("/ui") and not target.startswith("//"):
        return target
    return "/ui/fleet"
