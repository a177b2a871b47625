"""The hub's web dashboard, served under ``/ui`` by the same app as the REST API.

Server-rendered pages (Jinja2 templates, inline SVG charts) with a little hand-written
script and style shipped in this package: no CDN, no Node toolchain (docs/dashboard.md,
and docs/decisions.md for why). Pages read through the REST routes' own functions and act
through them, so the dashboard can show or do nothing the API cannot.
"""

from __future__ import annotations

from fastapi import APIRouter, FastAPI
from starlette.responses import RedirectResponse, Response
from starlette.staticfiles import StaticFiles

from hub.store import NotFound
from hub.ui import ops, pages
from hub.ui.session import MAX_SESSIONS
from hub.ui.web import HERE, PageRoute

__all__ = ["install"]


REFRESH_S = 5

_fallback = APIRouter(prefix="/ui", route_class=PageRoute, include_in_schema=False)


@_fallback.get("/{unknown:path}", name="ui.unknown")
def _unknown(unknown: str) -> Response:
    """A page a person mistyped answers as a page, not as the API's problem+json."""
    raise NotFound(f"no dashboard page /ui/{unknown[:100]}")


def install(app: FastAPI, *, refresh_s: int = REFRESH_S) -> None:
    """Serve the dashboard on ``app``: pages under ``/ui``, its files under ``/ui/static``,
    and ``/`` sending a browser there. Open pages fetch themselves again every
    ``refresh_s`` seconds (``app.state.ui_refresh_s``; 0: never). Sessions live in the
    hub's store, at most ``app.state.ui_max_sessions`` of them."""
    app.state.ui_max_sessions = MAX_SESSIONS
    app.state.ui_refresh_s = refresh_s
    app.include_router(pages.router)
    app.include_router(ops.router)
    app.mount("/ui/static", StaticFiles(directory=HERE / "static"), name="ui.static")
    app.include_router(_fallback)  # last: any other /ui path is the dashboard's own 404

    @app.get("/", include_in_schema=False, name="ui.root")
    def root() -> RedirectResponse:
        return RedirectResponse("/ui/fleet", status_code=307)
