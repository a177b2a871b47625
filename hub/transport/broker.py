"""The embedded MQTT broker of the one-machine tier (``hub serve --embedded-broker``, the demo).

:class:`EmbeddedBroker` runs an amqtt 0.12 broker in a thread of its own with its own
asyncio loop, so synchronous code (paho clients, FastAPI under uvicorn in another thread)
can use it as if it were a separate process::

    with EmbeddedBroker(port=0) as broker:      # port 0: pick a free port
        hub_settings = HubSettings(data_dir, broker_url=broker.url)

Access control is off unless a :class:`~hub.transport.broker_gate.Gate` is given (the hub
gives one whenever it runs the broker: ``hub serve --embedded-broker``, the demo): then
devices log in with the credentials the hub provisioned, each client id is bound to its
user name, anonymous clients may only say hello, and every topic operation follows the
same policy Mosquitto gets as an ``acl_file`` (:mod:`hub.transport.broker_gate`,
docs/broker-security.md). Without a gate anyone who can reach the port may connect
anonymously and publish anywhere, which is why it binds to loopback by default. It does
not do TLS. Frames are signed end to end, so a broker, embedded or not, is never trusted
with integrity.

How amqtt 0.12.1 is driven, and why:

- We own the listening socket (amqtt sees an ``external`` listener and is handed each
  connection), because amqtt 0.12.1 has no message size option and no public way to learn
  the port it bound. Every read amqtt asks of a connection goes through a small reader that
  closes the connection when one read exceeds ``max_message_bytes``; that read is in
  practice a PUBLISH payload, so the cap behaves like Mosquitto's ``max_packet_size``
  (the sender is disconnected, nothing is forwarded).
- Each :meth:`~EmbeddedBroker.start` builds a fresh amqtt ``Broker`` on a fresh loop and
  binds the *same* port as before (``SO_REUSEADDR``), so a stop/start pair looks like a
  broker outage to clients, who reconnect by themselves. Retained messages and sessions do
  not survive a restart, as with ``persistence false`` in Mosquitto.
- Persistent sessions are broken in amqtt 0.12.1 (a QoS 1 message queued for a
  disconnected ``clean_session=False`` client is dropped; upstream Yakifo/amqtt issue
  401); edgefleet uses clean sessions only, so this class does not try to fix them.
- With a gate, each connection's CONNECT is read here first and handed to amqtt only if
  the gate admits it (amqtt acts on a CONNECT before its auth plugins answer, see
  :mod:`hub.transport.broker_gate`); the bytes read are replayed to amqtt's reader.
- On every CONNECT amqtt 0.12.1 sends the new session every retained message that
  matches *any* filter *any* client holds (``_handle_client_session`` loops over the
  broker's whole subscription table), bypassing topic checks: a device connecting after
  another had subscribed got that device's retained desired state. :class:`_Broker`
  delivers retained messages only for filters the session itself holds.
- amqtt logs every connection at INFO; its loggers are set to WARNING unless told otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import threading
from collections.abc import Iterator
from types import TracebackType
from typing import Any, Self

from amqtt.adapters import StreamWriterAdapter
from amqtt.broker import Broker

from hub.errors import HubError
from hub.transport.broker_gate import AclPlugin, Gate
from hub.transport.mqtt_packets import (
    CONNECT,
    Connect,
    PacketError,
    connack,
    packet_type,
    parse_connect,
    read_remaining_length,
)

logger = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 1024 * 1024  # a 256 KiB frame with a lot of room to spare
_LISTENER = "default"
_AMQTT_LOGGERS = ("amqtt", "transitions")  # transitions: amqtt's state machines
_CLOSE_GRACE_S = 1.0  # after amqtt's shutdown, connections still open are aborted
_SHUTDOWN_S = 2.0  # amqtt's own shutdown may hang (a session cleanup that never ends)
_CONNECT_TIMEOUT_S = 10.0  # a connection must send its CONNECT within this


class BrokerError(HubError):
    """The embedded broker could not start or stop (port taken, amqtt failure, timeout)."""

    reason = "broker"


class _CappedReader:
    """amqtt's reader interface over an asyncio stream, refusing oversize reads.

    amqtt reads a PUBLISH payload in one ``read(n)`` of its declared length, before
    allocating it. Refusing that read (returning nothing, then end-of-stream for good) makes
    amqtt treat the connection as closed, so a client cannot make the broker buffer more
    than ``max_bytes`` per packet. Duck-typed: amqtt calls only ``read`` and ``feed_eof``.
    """

    def __init__(self, reader: asyncio.StreamReader, max_bytes: int, read: bytes = b"") -> None:
        self._reader = reader
        self._max_bytes = max_bytes
        self._refused = False
        self._replay = read  # what the gate read already (the CONNECT), served first

    async def read(self, n: int = -1) -> bytes:
        if self._refused:
            return b""
        if n < 0 or n > self._max_bytes:
            self._refused = True
            logger.warning("closing a client that sent %d bytes (cap %d)", n, self._max_bytes)
            return b""
        if self._replay:
            head, self._replay = self._replay[:n], self._replay[n:]
            return head + (await self._reader.readexactly(n - len(head)) if n > len(head) else b"")
        return await self._reader.readexactly(n)

    def feed_eof(self) -> None:
        self._reader.feed_eof()


class _Subscriptions(dict[str, list[tuple[Any, int]]]):
    """amqtt's subscription table, iterated over a snapshot.

    amqtt 0.12.1 walks the table across awaits: a broadcast awaits each target's topic
    check, a connect each retained publish. A SUBSCRIBE or a disconnect in the meantime
    raised "dictionary changed size during iteration", which ended that broadcast and
    silently dropped it for every remaining subscriber (seen with 50 agents in the demo as
    a rollout stage whose assignments stalled until the hub nudged). A snapshot delivers to
    the filters held when the broadcast began.
    """

    def __iter__(self) -> Iterator[str]:
        return iter(list(super().keys()))

    def items(self) -> list[tuple[str, list[tuple[Any, int]]]]:  # type: ignore[override]
        return list(super().items())


class _Broker(Broker):  # type: ignore[misc]  # amqtt ships no types
    """amqtt's broker, sending retained messages only for the session's own filters, over
    a subscription table that tolerates changes while it is walked (:class:`_Subscriptions`)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._subscriptions = _Subscriptions()  # empty until the first SUBSCRIBE

    async def _publish_retained_messages_for_subscription(
        self, subscription: tuple[str, int], session: Any
    ) -> None:
        holders = self._subscriptions.get(subscription[0], ())
        if any(held.client_id == session.client_id for held, _ in holders):
            await super()._publish_retained_messages_for_subscription(subscription, session)


class EmbeddedBroker:
    """An amqtt broker on ``host:port`` in a background thread; start/stop from any thread.

    Args:
        host: IP address to bind; loopback unless devices on other machines must connect.
        port: TCP port; 0 picks a free one at the first start and keeps it for restarts.
        max_message_bytes: largest PUBLISH payload accepted; a larger one disconnects
            its sender.
        start_timeout_s: how long :meth:`start` and :meth:`stop` may take.
        amqtt_log_level: level for amqtt's own loggers (its INFO is one line per
            connection).
        gate: access control (None: anyone may connect and publish anywhere); see also
            :meth:`protect`.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
        start_timeout_s: float = 10.0,
        amqtt_log_level: int = logging.WARNING,
        gate: Gate | None = None,
    ) -> None:
        self.gate = gate
        self._host = host
        self._port = port
        self._max_message_bytes = max_message_bytes
        self._timeout_s = start_timeout_s
        self._amqtt_log_level = amqtt_log_level
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._ready = threading.Event()
        self._failure: BaseException | None = None

    @property
    def host(self) -> str:
        return self._host

    @property
    def port(self) -> int:
        """The bound port: the real one once started, even if 0 was asked for."""
        return self._port

    @property
    def url(self) -> str:
        """``mqtt://host:port``, the form ``HubSettings.broker_url`` and the agent take."""
        return f"mqtt://{self._host}:{self._port}"

    @property
    def running(self) -> bool:
        """True between a successful :meth:`start` and the next :meth:`stop`."""
        return self._thread is not None

    def protect(self, gate: Gate) -> None:
        """Turn access control on with ``gate`` (from the next :meth:`start` on).

        Raises:
            BrokerError: the broker runs already (its clients were let in unchecked).
        """
        with self._lock:
            if self._thread is not None:
                raise BrokerError("protect() must come before start()")
            self.gate = gate

    def drop_unprovisioned(self) -> None:
        """Disconnect every login whose account the gate's accounts no longer hold (a
        revoked device). Thread-safe; returns at once."""
        loop, gate = self._loop, self.gate
        if loop is None or gate is None:
            return

        def drop() -> None:
            for writer in gate.unprovisioned():
                if isinstance(writer, asyncio.StreamWriter):
                    writer.transport.abort()

        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
            loop.call_soon_threadsafe(drop)

    def start(self) -> None:
        """Start serving; returns once the listener accepts connections. No-op if running.

        Raises:
            BrokerError: the port cannot be bound, amqtt failed to start, or it did not
                come up within ``start_timeout_s``.
        """
        with self._lock:
            if self._thread is not None:
                return
            self._quiet_amqtt()
            if self.gate is None and not _is_loopback(self._host):
                logger.warning("embedded broker on %s accepts anonymous clients", self._host)
            self._ready.clear()
            thread = threading.Thread(target=self._run, name="edgefleet-broker", daemon=True)
            thread.start()
            if not self._ready.wait(self._timeout_s):
                self._request_stop()
                thread.join(self._timeout_s)
                raise BrokerError(f"embedded broker did not start within {self._timeout_s}s")
            if self._failure is not None:
                thread.join(self._timeout_s)
                raise BrokerError(
                    f"embedded broker failed to start on {self._host}:{self._port}: {self._failure}"
                ) from self._failure
            self._thread = thread
            logger.info("embedded broker listening on %s", self.url)

    def stop(self) -> None:
        """Disconnect every client, close the listener and end the thread. Idempotent.

        Raises:
            BrokerError: the broker thread did not end within ``start_timeout_s``.
        """
        with self._lock:
            thread, self._thread = self._thread, None
            if thread is None:
                return
            self._request_stop()
            thread.join(self._timeout_s)
            if thread.is_alive():
                raise BrokerError(f"embedded broker did not stop within {self._timeout_s}s")
            logger.info("embedded broker on %s stopped", self.url)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"EmbeddedBroker({self.url}, {state})"

    def _quiet_amqtt(self) -> None:
        for name in _AMQTT_LOGGERS:
            logging.getLogger(name).setLevel(self._amqtt_log_level)

    def _request_stop(self) -> None:
        loop, stopping = self._loop, self._stopping
        if loop is not None and stopping is not None:
            with contextlib.suppress(RuntimeError):  # the loop already closed
                loop.call_soon_threadsafe(stopping.set)

    def _run(self) -> None:
        self._failure = None
        try:
            asyncio.run(self._serve())
        except BaseException as e:  # reported to start(), or logged if it came later
            if self._ready.is_set():
                logger.exception("embedded broker on %s crashed", self.url)
            else:
                self._failure = e
        finally:
            self._loop = self._stopping = None
            self._ready.set()

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        clients: dict[asyncio.Task[Any], asyncio.StreamWriter] = {}
        broker = _Broker(self._config(), loop=self._loop)
        await broker.start()
        try:
            server = await asyncio.start_server(
                lambda r, w: self._connected(broker, clients, r, w),
                self._host,
                self._port,
                reuse_address=True,
            )
        except BaseException:
            await _shutdown(broker)
            raise
        self._port = server.sockets[0].getsockname()[1]
        self._ready.set()
        await self._stopping.wait()
        server.close()
        await _shutdown(broker)
        await self._close_clients(clients)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(server.wait_closed(), self._timeout_s)

    async def _connected(
        self,
        broker: Broker,
        clients: dict[asyncio.Task[Any], asyncio.StreamWriter],
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        task = asyncio.current_task()
        assert task is not None  # always true: asyncio.start_server runs us in a task
        clients[task] = writer
        gate, connect = self.gate, None
        try:
            read = b""
            if gate is not None:
                connect, read = await self._gate(gate, reader, writer)
                if connect is None:
                    return
            await broker.external_connected(
                _CappedReader(reader, self._max_message_bytes, read),
                StreamWriterAdapter(writer),
                _LISTENER,
            )
        finally:
            if gate is not None and connect is not None:
                gate.closed(writer, connect.client_id)
            # Not ``await writer.wait_closed()``: amqtt may cancel that shared future
            # while closing the same writer, which would end this task as cancelled.
            writer.close()
            del clients[task]

    async def _gate(
        self, gate: Gate, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> tuple[Connect | None, bytes]:
        """Read the CONNECT and ask ``gate``: the admitted CONNECT and its bytes, or
        ``(None, b"")`` once a refusal was sent (or the client sent no valid CONNECT)."""
        try:
            data = await asyncio.wait_for(
                _read_packet(reader, self._max_message_bytes), _CONNECT_TIMEOUT_S
            )
            if packet_type(data[0]) != CONNECT:
                raise PacketError("first packet is not a CONNECT")
            start = read_remaining_length(data)
            assert start is not None  # _read_packet read it whole
            connect = parse_connect(data[start[1] :])
        except (PacketError, TimeoutError, asyncio.IncompleteReadError, OSError) as e:
            logger.info("closing a client that sent no valid CONNECT: %s", e)
            return None, b""
        admission = gate.admit(connect)
        if admission.principal is None:
            with contextlib.suppress(OSError):
                writer.write(connack(admission.code))
                await writer.drain()
            return None, b""
        gate.opened(writer, connect.client_id, admission.principal)
        return connect, data

    async def _close_clients(self, clients: dict[asyncio.Task[Any], asyncio.StreamWriter]) -> None:
        """Let each connection's task end after amqtt's shutdown, aborting laggards.

        Waiting here, rather than leaving the tasks to ``asyncio.run``'s final cancel,
        ends every connection without a cancelled-task traceback (Python 3.11 logs one).
        """
        if not clients:
            return
        _, lagging = await asyncio.wait(list(clients), timeout=_CLOSE_GRACE_S)
        for task in lagging:
            clients[task].transport.abort()
        if lagging:
            await asyncio.wait(lagging, timeout=self._timeout_s)

    def _config(self) -> dict[str, Any]:
        # the gate has authenticated whoever reaches amqtt: its auth plugin only says yes
        plugins: dict[str, Any] = {
            "amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True},
        }
        if self.gate is not None:
            plugins[f"{AclPlugin.__module__}.{AclPlugin.__name__}"] = {"policy": self.gate.policy}
        return {
            "listeners": {
                _LISTENER: {"type": "external", "bind": f"{self._host}:{self._port}"},
            },
            "plugins": plugins,
        }


async def _shutdown(broker: Broker) -> None:
    """amqtt's shutdown, bounded: past ``_SHUTDOWN_S`` it is cancelled and the caller
    aborts the connections still open, so :meth:`EmbeddedBroker.stop` never hangs."""
    try:
        await asyncio.wait_for(broker.shutdown(), _SHUTDOWN_S)
    except TimeoutError:
        logger.warning(
            "amqtt did not shut down within %.0f s; closing its connections", _SHUTDOWN_S
        )


async def _read_packet(reader: asyncio.StreamReader, max_bytes: int) -> bytes:
    """One whole MQTT packet from ``reader``, refusing one longer than ``max_bytes``."""
    data = await reader.readexactly(2)
    while data[-1] & 0x80:
        if len(data) >= 5:
            raise PacketError("remaining length longer than four bytes")
        data += await reader.readexactly(1)
    parsed = read_remaining_length(data)
    assert parsed is not None
    length, _ = parsed
    if length > max_bytes:
        raise PacketError(f"a {length}-byte packet before CONNECT was accepted")
    return data + await reader.readexactly(length)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: cannot tell without resolving it
        return False


__all__ = ["MAX_MESSAGE_BYTES", "BrokerError", "EmbeddedBroker"]
