"""The hub's REST API served by uvicorn in a background thread, so a caller stays synchronous.

We bind the listening socket ourselves and hand it to ``uvicorn.Server.run(sockets=...)``:
a port that is taken then fails here as an ``OSError`` (uvicorn would log it and call
``sys.exit`` in its thread), and the bound port is known at once, which is what port 0
(tests, the demo) needs. uvicorn installs no signal handlers off the main thread, so the
process's SIGTERM/SIGINT stay with whoever started us; :meth:`HttpServer.stop` asks uvicorn
to exit, and requests still running get ``GRACE_S`` to finish.

uvicorn's own logging configuration is not applied (``log_config=None``): its loggers
propagate to whatever the process set up, and the access log is off (``/metrics`` counts
requests by route and status).

What it does not do: TLS (run the hub behind a reverse proxy for that) or several workers.
"""

from __future__ import annotations

import logging
import socket
import threading
import time

import uvicorn
from fastapi import FastAPI

from hub.errors import HubError

logger = logging.getLogger(__name__)

GRACE_S = 3  # uvicorn's timeout_graceful_shutdown: requests still running are cancelled


class HttpUnavailable(HubError):
    """The HTTP server could not listen (port taken, bad address) or did not come up."""

    reason = "http_unavailable"


class HttpServer:
    """``app`` on ``host:port`` (port 0: a free one), started and stopped from any thread."""

    def __init__(self, app: FastAPI, host: str, port: int) -> None:
        self._server = uvicorn.Server(
            uvicorn.Config(
                app,
                host=host,
                port=port,
                log_config=None,
                access_log=False,
                timeout_graceful_shutdown=GRACE_S,
            )
        )
        self._host = host
        self._port = port
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The bound port once started (the real one, even if 0 was asked for)."""
        return self._port

    @property
    def url(self) -> str:
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self._port}"

    def start(self, timeout_s: float = 10.0) -> None:
        """Listen, and return once the app has started (its lifespan ran).

        Raises:
            HttpUnavailable: the address cannot be bound, or the app did not start
                within ``timeout_s``.
        """
        family = socket.AF_INET6 if ":" in self._host else socket.AF_INET
        try:
            sock = socket.create_server((self._host, self._port), family=family)
        except OSError as e:
            raise HttpUnavailable(f"cannot listen on {self._host}:{self._port}: {e}") from e
        self._port = sock.getsockname()[1]
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [sock]}, name="edgefleet-http", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                sock.close()
                raise HttpUnavailable(f"the REST API did not start on {self.url}")
            time.sleep(0.01)

    def stop(self, timeout_s: float = GRACE_S + 2.0) -> None:
        """Stop accepting, let running requests finish (up to ``GRACE_S``). Idempotent."""
        thread, self._thread = self._thread, None
        if thread is None:
            return
        self._server.should_exit = True
        thread.join(timeout_s)
        if thread.is_alive():
            logger.warning("the REST API did not stop within %.0f s", timeout_s)
