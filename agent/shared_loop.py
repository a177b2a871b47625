"""Many agents' MQTT sessions on one thread: paho's external-loop API behind one selector.

A thousand agents in one process (the fleet simulator) cannot afford :class:`agent.link.Link`'s
two threads each. :class:`SharedLoop` drives every session's paho client from one
``selectors`` thread with ``loop_read`` / ``loop_write`` (only while ``want_write``) /
``loop_misc`` (keepalive, every :data:`MISC_INTERVAL_S`); paho's ``on_socket_open`` /
``on_socket_close`` keep the selector in step, and ``on_socket_register_write`` (a publish
from another thread queued bytes) wakes it through a socket pair so only the loop thread
writes. Backoff, the connect deadline and the enrollment hold are timers on the loop.

:class:`LoopLink` is one device's :class:`~agent.transport.Transport` on it, with
:class:`~agent.link.Link`'s behaviour (agent/link.py). Every paho call but ``publish``
(callable from any thread) is made on the loop thread. Not done: the TCP connect (and a TLS
handshake) is paho's blocking one, on the loop thread; docs/agent-architecture.md.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import logging
import random
import selectors
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt

from agent.link import LinkSettings, backoff_delay
from agent.mqtt_session import SessionCore
from agent.transport import WillFactory

logger = logging.getLogger(__name__)

MISC_INTERVAL_S = 1.0
"""How often every connected client's ``loop_misc`` (keepalive) runs."""


@dataclass(slots=True, eq=False)
class _Timer:
    when: float
    fn: Callable[[], None]
    cancelled: bool = False

    def cancel(self) -> None:
        self.cancelled = True


class SharedLoop:
    """One selector thread for many :class:`LoopLink` sessions; :meth:`start` it, make
    links with :meth:`link`, :meth:`stop` it after they disconnected.
    """

    def __init__(self, *, name: str = "mqtt-loop") -> None:
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._lock = threading.Lock()
        self._calls: list[Callable[[], None]] = []
        self._writers: set[LoopLink] = set()
        self._woken = False
        self._timers: list[tuple[float, int, _Timer]] = []
        self._seq = itertools.count()
        self._links: set[LoopLink] = set()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._ident: int | None = None

    def link(self, settings: LinkSettings, *, rng: random.Random | None = None) -> LoopLink:
        """A new session on this loop (nothing connects before its ``connect``).

        Raises:
            ConfigError: a TLS file cannot be loaded.
        """
        return LoopLink(self, settings, rng=rng)

    @property
    def sessions(self) -> int:
        """Sessions connected right now (up and subscribed)."""
        return sum(1 for link in list(self._links) if link.connected)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        """End the loop thread; sessions still open are dropped (their wills fire)."""
        self.call_soon(lambda: setattr(self, "_stopping", True))
        self._thread.join(timeout_s)
        self._selector.close()
        self._wake_r.close()
        self._wake_w.close()

    def call_soon(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` on the loop thread (from any thread)."""
        with self._lock:
            self._calls.append(fn)
        self._wake()

    def call_later(self, delay_s: float, fn: Callable[[], None]) -> _Timer:
        """Run ``fn`` on the loop thread in ``delay_s``; loop thread only."""
        timer = _Timer(time.monotonic() + delay_s, fn)
        heapq.heappush(self._timers, (timer.when, next(self._seq), timer))
        return timer

    # ------------------------------------------------------------------ for LoopLink

    def _wants_write(self, link: LoopLink) -> None:
        with self._lock:
            self._writers.add(link)
        self._wake()

    def _wake(self) -> None:
        with self._lock:
            woken, self._woken = self._woken, True
        if woken:
            return
        with contextlib.suppress(OSError):  # full (a wake-up is pending) or closed (stopped)
            self._wake_w.send(b"\0")

    def _watch(self, sock: Any, link: LoopLink) -> None:
        self._selector.register(sock, selectors.EVENT_READ, link)
        self._links.add(link)

    def _unwatch(self, sock: Any) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(sock)

    def _interest(self, link: LoopLink, sock: Any, write: bool) -> None:
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if write else 0)
        with contextlib.suppress(KeyError, ValueError):  # the socket closed meanwhile
            if self._selector.get_key(sock).events != events:
                self._selector.modify(sock, events, link)

    # ------------------------------------------------------------------ the loop

    def _run(self) -> None:
        self._ident = threading.get_ident()
        next_misc = time.monotonic() + MISC_INTERVAL_S
        while not self._stopping:
            now = time.monotonic()
            deadline = min(next_misc, self._timers[0][0] if self._timers else next_misc)
            try:
                ready = self._selector.select(max(0.0, deadline - now))
            except OSError:
                logger.exception("selector failed")
                continue
            for key, events in ready:
                link = key.data
                if link is None:
                    self._drain_wake()
                    continue
                try:
                    link._io(events & selectors.EVENT_READ, events & selectors.EVENT_WRITE)
                except Exception:  # one session's fault must not stop the others
                    logger.exception("session %s failed", link.settings.client_id)
            self._run_calls()
            now = time.monotonic()
            while self._timers and self._timers[0][0] <= now:
                _, _, timer = heapq.heappop(self._timers)
                if not timer.cancelled:
                    self._guard(timer.fn)
            if now >= next_misc:
                next_misc = now + MISC_INTERVAL_S
                for link in list(self._links):
                    self._guard(link._misc)

    def _drain_wake(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except BlockingIOError:
            pass
        with self._lock:
            self._woken = False

    def _run_calls(self) -> None:
        with self._lock:
            calls, self._calls = self._calls, []
            writers, self._writers = self._writers, set()
        for fn in calls:
            self._guard(fn)
        for link in writers:
            self._guard(link._flush)

    @staticmethod
    def _guard(fn: Callable[[], None]) -> None:
        try:
            fn()
        except Exception:
            logger.exception("a task on the MQTT loop failed")


class LoopLink(SessionCore):
    """One device's :class:`~agent.transport.Transport` on a :class:`SharedLoop`; the
    behaviour of :class:`agent.link.Link`, without its threads (module docstring)."""

    def __init__(
        self, loop: SharedLoop, settings: LinkSettings, *, rng: random.Random | None = None
    ) -> None:
        super().__init__(settings, rng=rng)
        self._loop = loop
        self._sock: Any = None  # the session's socket; it and the client: loop thread only
        self._came_up_now = False
        self._will: tuple[str, bytes] | None = None
        self._failures = 0
        self._timer: _Timer | None = None
        self._stopping = False
        self._ended = threading.Event()

    def connect(self, *, will: WillFactory | None = None) -> None:
        self._will_factory = will
        self._loop.call_soon(self._attempt)

    def disconnect(self, timeout_s: float = 10.0) -> None:
        """Disconnect cleanly (no last will) and stop reconnecting; waits for it."""
        self._loop.call_soon(self._shut)
        self._ended.wait(timeout_s)

    # ------------------------------------------------------------------ loop thread

    def _attempt(self) -> None:
        """Start one session: a fresh client, a blocking TCP connect, CONNECT queued."""
        self._timer = None
        if self._stopping:
            return
        if not self._enrolling and self._will is None and self._will_factory is not None:
            try:
                self._will = self._will_factory()
            except Exception:
                logger.exception("cannot prepare the last will; connecting without one")
        client = self._new_client(None if self._enrolling else self._will)
        broker = self._target()
        self._came_up_now = False
        with self._lock:
            self._client = client
        try:
            client.connect(broker.host, broker.port, keepalive=self.settings.keepalive_s)
        except (OSError, ValueError) as e:
            level = logging.DEBUG if self._failures else logging.WARNING
            logger.log(level, "cannot reach broker %s:%d: %s", broker.host, broker.port, e)
            self._session_over(client)
            return
        self._flush()
        self._timer = self._loop.call_later(self.settings.connect_timeout_s, self._connect_timeout)

    def _connect_timeout(self) -> None:
        self._timer = None
        if not self._came_up_now and self._client is not None:
            logger.warning("broker %s did not accept in time", self._target())
            self._close()

    def _close(self, session: mqtt.Client | None = None) -> None:
        """End the current session (or only ``session``, if it is still the current one)
        from this side: DISCONNECT (no will), then the socket."""
        client = self._client
        if client is None or (session is not None and session is not client):
            return
        with self._lock:
            self._up = False
        client.disconnect()
        self._flush()
        if self._client is client:  # the DISCONNECT could not be written: drop the socket
            if self._sock is not None:
                self._loop._unwatch(self._sock)
                self._sock.close()
                self._sock = None
            self._session_over(client)

    def _shut(self) -> None:
        self._stopping = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._close()
        self._loop._links.discard(self)
        self._ended.set()

    def _session_over(self, client: mqtt.Client) -> None:
        """The session of ``client`` ended, however: schedule the next one."""
        if client is not self._client:
            return
        with self._lock:
            self._client = None
            self._up = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        came_up = self._came_up_now
        if self._enrolling:
            self._enrolling = False  # log in again next, after the backoff
        elif came_up:
            self._failures, self._will = 0, None
        elif self._login_refused and self.settings.username is not None:
            self._login_refused = False
            self._enrolling = True  # say hello anonymously, at once
            if not self._stopping:
                self._timer = self._loop.call_later(0.0, self._attempt)
            return
        if self._stopping:
            return
        delay = backoff_delay(
            self._failures, self.settings.reconnect_min_s, self.settings.reconnect_max_s, self._rng
        )
        self._failures += 1
        logger.debug("reconnecting to the broker in %.2f s", delay)
        self._timer = self._loop.call_later(delay, self._attempt)

    def _io(self, readable: int, writable: int) -> None:
        client = self._client
        if client is None:
            return
        if readable:
            client.loop_read()
        if writable or client.want_write():
            self._flush()

    def _flush(self) -> None:
        client, sock = self._client, self._sock
        if client is None or sock is None:
            return
        if client.want_write():
            client.loop_write()
        if self._client is client and self._sock is sock:
            self._loop._interest(self, sock, client.want_write())

    def _misc(self) -> None:
        client = self._client
        if client is not None and self._sock is not None:
            client.loop_misc()
            self._flush()

    def _new_client(self, will: tuple[str, bytes] | None) -> mqtt.Client:
        client = super()._new_client(will)
        client.on_socket_open = self._on_socket_open
        client.on_socket_close = self._on_socket_close
        client.on_socket_register_write = self._on_register_write
        return client

    # ------------------------------------------------------------------ paho callbacks

    def _on_socket_open(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        self._sock = sock
        self._loop._watch(sock, self)

    def _on_socket_close(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        self._loop._unwatch(sock)
        if self._sock is sock:
            self._sock = None

    def _on_register_write(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        if threading.get_ident() != self._loop._ident:  # on the loop, _io/_flush write next
            self._loop._wants_write(self)

    def _end_session(self, client: mqtt.Client) -> None:
        self._loop.call_soon(lambda: self._close(client))

    def _enrollment_up(self) -> None:
        self._came_up()
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._loop.call_later(self.settings.enroll_hold_s, self._close)

    def _came_up(self) -> None:
        if self._timer is not None and not self._enrolling:
            self._timer.cancel()  # the connect deadline
            self._timer = None
        self._came_up_now = True
        super()._came_up()

    def _on_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any
    ) -> None:
        with self._lock:
            was_up, self._up = self._up, False
        if was_up and not self._stopping:
            logger.warning("lost the broker connection: %s", reason)
        self._session_over(client)


__all__ = ["MISC_INTERVAL_S", "LoopLink", "SharedLoop"]
