"""What routes receive: the app's collaborators and the authenticated caller, as aliases.

Routes declare what they need with ``Annotated`` aliases (``HubDep`` for the whole
:class:`~hub.context.HubContext`, ``StoreDep``, ``ClockDep``, ``ServicesDep``, and
``ViewerDep``/``OperatorDep``/``AdminDep`` for the caller). The collaborators come from
:class:`AppContext` on ``app.state``, set once by ``create_app``: there are no module
globals, so every test builds its own app.

**Authentication comes first.** FastAPI reads and parses a request body before it runs
any dependency, so a role check in a dependency alone would let an unauthenticated or
read-only caller make the hub parse (and spool to disk) a 64 MiB upload, and would answer
a viewer's malformed change with 422 instead of 403. :class:`GuardedRoute` therefore
checks the token and the role that the route's dependencies ask for *before* the body
is read, then caps the body: a ``Content-Length`` over :attr:`GuardedRoute.max_body_bytes`
is refused at once and a body that grows past it while streaming is cut off, both with
413 (docs/decisions.md, bounded state). The role dependencies then only hand the checked
caller to the route.

A missing, unknown or revoked token is 401 and is not audited (there is nobody to name);
a known token with too low a role is 403, and that refusal is audited with the token's
id, the route's action name and the path.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import Depends, Query, Request, Security
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CollectorRegistry
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.responses import Response
from starlette.types import Message, Receive

from edgefleet.clock import Clock
from hub.api import auth
from hub.api.auth import Principal, Role
from hub.api.errors import problem_responses
from hub.api.services import HubServices
from hub.context import HubContext
from hub.errors import InvalidRequest, PermissionDenied, Unauthenticated
from hub.settings import HubSettings
from hub.store import Store
from protocol.errors import Oversize

if TYPE_CHECKING:
    from fastapi.dependencies.models import Dependant

MAX_JSON_BODY_BYTES = 1024 * 1024
MAX_AUTHORIZATION_CHARS = 256
MAX_PAGE = 1000
MAX_OFFSET = 10**9


@dataclass(frozen=True)
class AppContext:
    """Everything a route may use, set on ``app.state.context`` by ``create_app``."""

    hub: HubContext
    services: HubServices
    api_metrics: CollectorRegistry
    """The API's own request metrics, served on ``/metrics`` after ``services.metrics``."""
    local: Principal | None = None
    """Set only by the CLI's ``--data`` mode, which serves the API in its own process over
    the hub's files: requests without a token act as this admin (whoever can write the
    store can do anything anyway). ``hub serve`` never sets it."""


def get_context(request: Request) -> AppContext:
    context: AppContext = request.app.state.context
    return context


def get_hub(request: Request) -> HubContext:
    return get_context(request).hub


def get_settings(request: Request) -> HubSettings:
    return get_hub(request).settings


def get_store(request: Request) -> Store:
    return get_hub(request).store


def get_clock(request: Request) -> Clock:
    return get_hub(request).clock


def get_services(request: Request) -> HubServices:
    return get_context(request).services


def authorize(request: Request, role: Role, action: str) -> Principal:
    """The caller, checked for ``role``; cached on the request once authenticated.

    Raises:
        Unauthenticated: no bearer token, or one the hub does not accept.
        PermissionDenied: the token's role is below ``role`` (audited as ``action``).
    """
    principal: Principal | None = getattr(request.state, "principal", None)
    context = get_context(request)
    hub = context.hub
    if principal is None and context.local is not None and "authorization" not in request.headers:
        principal = context.local
    if principal is None:
        principal = auth.authenticate(hub.store, _bearer(request))
    request.state.principal = principal
    if not principal.may(role):
        hub.store.audit.append(
            at=hub.now_ms(),
            actor=principal.actor,
            action=action,
            target=request.url.path[:200],
            outcome="rejected",
            reason=PermissionDenied.reason,
        )
        raise PermissionDenied(f"this needs the {role} role; the token has {principal.role}")
    return principal


def _bearer(request: Request) -> str:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token or len(header) > MAX_AUTHORIZATION_CHARS:
        raise Unauthenticated("send an API token: Authorization: Bearer <token>")
    return token.strip()


_bearer_scheme = HTTPBearer(
    auto_error=False,
    scheme_name="token",
    description="An API token (`edgefleet hub token create --role ROLE`).",
)
_Credentials = Annotated[HTTPAuthorizationCredentials | None, Security(_bearer_scheme)]


def require_viewer(request: Request, _: _Credentials) -> Principal:
    return authorize(request, "viewer", _action(request))


def require_operator(request: Request, _: _Credentials) -> Principal:
    return authorize(request, "operator", _action(request))


def require_admin(request: Request, _: _Credentials) -> Principal:
    return authorize(request, "admin", _action(request))


ROLE_DEPENDENCIES: dict[Callable[..., Principal], Role] = {
    require_viewer: "viewer",
    require_operator: "operator",
    require_admin: "admin",
}

HubDep = Annotated[HubContext, Depends(get_hub)]
SettingsDep = Annotated[HubSettings, Depends(get_settings)]
StoreDep = Annotated[Store, Depends(get_store)]
ClockDep = Annotated[Clock, Depends(get_clock)]
ServicesDep = Annotated[HubServices, Depends(get_services)]
ViewerDep = Annotated[Principal, Depends(require_viewer)]
OperatorDep = Annotated[Principal, Depends(require_operator)]
AdminDep = Annotated[Principal, Depends(require_admin)]
LimitQuery = Annotated[int, Query(ge=1, le=MAX_PAGE, description="Items per page")]
OffsetQuery = Annotated[int, Query(ge=0, le=MAX_OFFSET, description="Items to skip")]


def _action(request: Request) -> str:
    route = request.scope.get("route")
    return str(getattr(route, "name", None) or f"{request.method} {request.url.path[:100]}")


class GuardedRoute(APIRoute):
    """A route that authorises the caller, then caps the body, before FastAPI reads it."""

    max_body_bytes = MAX_JSON_BODY_BYTES

    def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        super().__init__(path, endpoint, **kwargs)
        documented = [422]  # any unknown query parameter, on every route
        if required_role(self.dependant) is not None:
            documented += [401, 403]
        if self.body_field is not None:
            documented += [400, 413]
        self.responses = {**problem_responses(*documented), **self.responses}

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        role, action, limit = required_role(self.dependant), self.name, self.max_body_bytes
        known = query_names(self.dependant)

        async def guarded(request: Request) -> Response:
            if role is not None:
                await run_in_threadpool(authorize, request, role, action)
            _check_query(request, known)
            length = request.headers.get("content-length", "")
            if length.isdigit() and int(length) > limit:
                raise Oversize(f"request body of {length} bytes exceeds {limit}")
            capped = Request(request.scope, _capped(request.receive, limit))
            if self.body_field is not None and _is_json(capped):
                _refuse_duplicate_keys(await capped.body())  # FastAPI reuses the read body
            return await handler(capped)

        return guarded


def _check_query(request: Request, known: frozenset[str]) -> None:
    """Refuse query parameters the route does not take, and any given twice.

    FastAPI would ignore the first and keep the last of the second: a misspelt filter
    (``?stauts=revoked``) would silently list every device.

    Raises:
        InvalidRequest: an unknown or repeated parameter.
    """
    seen: set[str] = set()
    for key, _ in request.query_params.multi_items():
        if key not in known:
            takes = ", ".join(sorted(known)) or "none"
            raise InvalidRequest(f"unknown query parameter {key[:40]!r}; this route takes {takes}")
        if key in seen:
            raise InvalidRequest(f"query parameter {key[:40]!r} given more than once")
        seen.add(key)


def _is_json(request: Request) -> bool:
    media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    return media == "application/json" or media.endswith("+json")


def _refuse_duplicate_keys(body: bytes) -> None:
    """Refuse a JSON body that names a key twice in one object.

    Python's parser keeps the last value and says nothing, while another reader (a proxy,
    an audit tool) may keep the first: the two would act on different requests. A body
    that is not JSON at all is left to FastAPI, which answers 422 for it.

    Raises:
        InvalidRequest: a duplicate key, named.
    """

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        seen: dict[str, Any] = {}
        for key, value in items:
            if key in seen:
                raise InvalidRequest(f"the JSON body names {key[:40]!r} more than once")
            seen[key] = value
        return seen

    try:
        json.loads(body, object_pairs_hook=pairs)
    except ValueError:
        return


class UploadRoute(GuardedRoute):
    """A multipart upload route: one model and two data files of 64 MiB each, and slack."""

    max_body_bytes = 3 * 64 * 1024 * 1024 + MAX_JSON_BODY_BYTES


class _BodyTooLarge(HTTPException):
    """Raised while reading: FastAPI passes ``HTTPException`` through its body parsing."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body exceeds {limit} bytes")


def _capped(receive: Receive, limit: int) -> Receive:
    seen = 0

    async def capped() -> Message:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise _BodyTooLarge(limit)
        return message

    return capped


def required_role(dependant: Dependant) -> Role | None:
    """The highest role any of the route's dependencies (at any depth) requires."""
    found: list[Role] = []
    for dependency in dependant.dependencies:
        if dependency.call in ROLE_DEPENDENCIES:
            found.append(ROLE_DEPENDENCIES[dependency.call])
        nested = required_role(dependency)
        if nested is not None:
            found.append(nested)
    return max(found, key=auth.ROLES.index) if found else None


def query_names(dependant: Dependant) -> frozenset[str]:
    """Every query parameter the route or its dependencies (at any depth) declare."""
    names = {param.alias for param in dependant.query_params}
    for dependency in dependant.dependencies:
        names |= query_names(dependency)
    return frozenset(names)
