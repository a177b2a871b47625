"""How every operator command reaches the hub: its REST API, remote or in this process.

``--hub URL --token T`` (or ``EDGEFLEET_HUB_URL`` and ``EDGEFLEET_TOKEN``) talks to a
running hub over HTTP. ``--data DIR`` serves the same API in this process over the hub's
files (:class:`InProcess`), acting as a local admin: for bootstrap (the first admin
token), for a hub that is not running, and on the hub's own machine. Either way the
command sends the same requests and reads the same answers, so the two modes cannot
drift apart, and a change made with ``--data`` is stored for the running hub to
publish (only the hub process publishes anything: the CLI never talks to the broker).

Every failure becomes one :class:`CliFailure`: a line for stderr and the exit status
docs/cli.md promises, **2** when the caller must change something (an option, a file,
the token, a name the hub does not know, a request the hub refuses) and **1** when
something outside failed (the hub cannot be reached or does not answer, or fails with a
5xx). A refused connection fails at once; only a hub that accepted and then went quiet
costs :data:`READ_TIMEOUT_S`.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit

import httpx

from edgefleet.clock import SystemClock
from hub import keyring
from hub.settings import HubSettings
from hub.store.dialects import open_store

if TYPE_CHECKING:
    from fastapi import FastAPI

HUB_URL_VARIABLE = "EDGEFLEET_HUB_URL"
TOKEN_VARIABLE = "EDGEFLEET_TOKEN"  # noqa: S105 - the variable's name, not a secret
CONNECT_TIMEOUT_S = 5.0
READ_TIMEOUT_S = 120.0  # registering a large model runs it on the hub: give it time
LOCAL_URL = "http://edgefleet-data"
PAGE = 1000


class CliFailure(Exception):
    """What a command prints on stderr (one line) and the status it exits with."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def add_target_options(parser: argparse.ArgumentParser) -> None:
    """``--hub URL --token T`` for a running hub, or ``--data DIR`` on its machine."""
    where = parser.add_argument_group("which hub (one of)")
    where.add_argument(
        "--hub",
        metavar="URL",
        help=f"the hub's REST API, e.g. http://hub:8080 (${HUB_URL_VARIABLE})",
    )
    where.add_argument("--token", metavar="T", help=f"an API token (${TOKEN_VARIABLE})")
    where.add_argument(
        "--data", type=Path, metavar="DIR", help="the hub's data directory, on its machine"
    )
    where.add_argument(
        "--database",
        metavar="URL",
        help="with --data: the hub's PostgreSQL store, postgresql://USER:PASSWORD@HOST/DB",
    )


@dataclass(frozen=True)
class Target:
    """Where the commands go: a URL with a token, or a data directory."""

    url: str | None = None
    token: str | None = None
    data: Path | None = None
    database: str | None = None


def resolve(args: argparse.Namespace, environ: Mapping[str, str]) -> Target:
    """Flags first, then the variables; ``--data`` given as a flag wins over them.

    Raises:
        CliFailure: neither or both given, a URL that is not http(s), no token (2).
    """
    data: Path | None = getattr(args, "data", None)
    url: str | None = getattr(args, "hub", None)
    token: str | None = getattr(args, "token", None)
    if data is not None and (url is not None or token is not None):
        raise CliFailure("--data works on the hub's files; leave out --hub and --token", 2)
    database: str | None = getattr(args, "database", None)
    if database is not None and data is None:
        raise CliFailure("--database is the store of a hub's --data DIR: add --data", 2)
    if data is not None:
        return Target(data=data, database=database)
    url = url or environ.get(HUB_URL_VARIABLE) or None
    token = token or environ.get(TOKEN_VARIABLE) or None
    if url is None:
        raise CliFailure(
            f"which hub? give --hub URL (or {HUB_URL_VARIABLE}) with --token, "
            "or --data DIR on the hub's machine",
            2,
        )
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise CliFailure(f"--hub {url[:80]!r}: expected http://HOST:PORT or https://...", 2)
    if token is None:
        raise CliFailure(f"--hub needs an API token: --token T or {TOKEN_VARIABLE}", 2)
    return Target(url=url.rstrip("/"), token=token)


class HubClient:
    """The REST API, with every failure turned into a :class:`CliFailure`."""

    def __init__(self, http: httpx.Client, where: str) -> None:
        self.http = http
        self.where = where

    def call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """Send one request; the answer if it is a 2xx.

        Raises:
            CliFailure: see the module docstring for the exit statuses.
        """
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.ConnectError as e:
            raise CliFailure(f"cannot reach the hub at {self.where}: {_cause(e)}", 1) from None
        except httpx.TimeoutException:
            raise CliFailure(f"the hub at {self.where} did not answer in time", 1) from None
        except httpx.HTTPError as e:
            raise CliFailure(f"talking to the hub at {self.where} failed: {_cause(e)}", 1) from None
        if response.is_success:
            return response
        raise failure(response, self.where)

    def get(self, path: str, **params: Any) -> Any:
        return self.call("GET", path, params=_params(params)).json()

    def send(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self.call(method, path, **kwargs)
        return response.json() if response.content else None

    def all(self, path: str, **params: Any) -> list[dict[str, Any]]:
        """Every item of a paginated listing, fetched a page at a time."""
        items: list[dict[str, Any]] = []
        while True:
            page = self.get(path, **params, limit=PAGE, offset=len(items))
            items += page["items"]
            if not page["items"] or len(items) >= page["total"]:
                return items


def failure(response: httpx.Response, where: str) -> CliFailure:
    """The one line (and exit status) for an answer that is not a 2xx."""
    status = response.status_code
    detail = _detail(response)
    if status == 401:
        return CliFailure(f"the hub at {where} refused the token: {detail}", 2)
    if status == 403:
        return CliFailure(f"not allowed: {detail}", 2)
    if status >= 500:
        return CliFailure(f"the hub at {where} failed ({status}): {detail}", 1)
    return CliFailure(detail, 2)


def _detail(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("detail"), str):
        return str(body["detail"])
    return f"HTTP {response.status_code} {response.reason_phrase} (is this an edgefleet hub?)"


def _cause(error: Exception) -> str:
    text = str(error) or type(error).__name__
    return text.rsplit("] ", 1)[-1][:160]  # "[Errno 111] Connection refused" -> the words


def segment(text: str) -> str:
    """``text`` (an id the user typed) as one URL path segment, so no ``/`` or ``..`` in
    it can reach another route.

    Raises:
        CliFailure: empty, ``.`` or ``..`` (2).
    """
    if text in ("", ".", ".."):
        raise CliFailure(f"not an id: {text!r}", 2)
    return quote(text, safe="")


def _params(params: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in params.items() if v is not None}


class InProcess(httpx.BaseTransport):
    """Serve requests with an ASGI app in this process (``--data``): each request runs
    the app on a fresh event loop, synchronously, as the CLI is."""

    def __init__(self, app: FastAPI) -> None:
        self._asgi = httpx.ASGITransport(app=app)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        request.read()

        async def call() -> httpx.Response:
            response = await self._asgi.handle_async_request(request)
            body = await response.aread()
            return httpx.Response(response.status_code, headers=response.headers, content=body)

        return asyncio.run(call())


def local_app(
    data: Path, *, create: bool = False, database: str | None = None
) -> tuple[FastAPI, Any]:
    """The hub's REST API over the files in ``data`` (and the store at ``database``, if
    given), acting as the local operator; and the store to close afterwards.

    Raises:
        CliFailure: no hub store in ``data`` (unless ``create``), or no key ring (2).
    """
    # The REST app (and through the registry, onnx) is imported here, for --data only:
    # every command that talks to a running hub starts without it (3.3 s -> about 1 s).
    from prometheus_client import CollectorRegistry

    from hub.api.app import create_app
    from hub.api.auth import Principal
    from hub.api.services import HubServices
    from hub.context import HubContext
    from hub.registry.artifacts import ArtifactStore
    from hub.registry.registry import Registry

    settings = HubSettings(data_dir=data, database=database or "")
    if not create and not settings.store_exists():
        raise CliFailure(f"no hub store at {settings.db_path}", 2)
    try:
        ring = keyring.load(settings.keys_dir)
    except keyring.KeyringError as e:
        raise CliFailure(str(e), 2) from None
    store = open_store(settings.store_location)
    ctx = HubContext(store, ring, SystemClock(), settings)
    artifacts = ArtifactStore(settings.artifacts_dir)
    services = HubServices(Registry(ctx, artifacts), artifacts, CollectorRegistry())
    operator = Principal("", "admin", getpass.getuser(), local=True)
    return create_app(ctx, services, local=operator), store


@contextmanager
def connect(args: argparse.Namespace, *, create: bool = False) -> Iterator[HubClient]:
    """A client for the hub the options name; ``create`` lets ``--data`` start a store.

    Raises:
        CliFailure: bad options (2); see :func:`resolve` and :func:`local_app`.
    """
    target = resolve(args, os.environ)
    if target.data is None:
        assert target.url is not None
        timeout = httpx.Timeout(READ_TIMEOUT_S, connect=CONNECT_TIMEOUT_S)
        headers = {"Authorization": f"Bearer {target.token}"}
        with httpx.Client(base_url=target.url, headers=headers, timeout=timeout) as http:
            yield HubClient(http, target.url)
        return
    app, store = local_app(target.data, create=create, database=target.database)
    try:
        with httpx.Client(base_url=LOCAL_URL, transport=InProcess(app)) as http:
            yield HubClient(http, str(target.data))
    finally:
        store.close()
