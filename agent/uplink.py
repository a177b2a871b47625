"""Everything the device says to the hub: the outbox, hello first, the drain, the hub's acks.

**Hello first.** The first message a process sends, whatever sends it, is preceded by a
``hello`` (:meth:`Uplink.send` queues one before it), so on a fresh device seq 1 is the
hello and the hub knows the device's key before anything else arrives; components may
send during construction (the model manager's resume report does). A hello is sent
again by the daemon's ``hello`` job until the hub acknowledges one.

**Waiting for approval.** Until the hub pins the key, it acknowledges nothing; the uplink
logs that it waits for approval once the hello stays unacknowledged past the ack
timeout, and the hub's reason when it refuses the hello (agent/enrollment.py says
what each reason means).

**Draining.** :meth:`Uplink.pump` is the daemon's ``pump`` job: after a reconnect it
rewinds the outbox (what went out on an earlier connection and is unacknowledged is due
again; the pump may already have sent on the new one before the news of it arrived, and
that is not sent twice), after a ``resend`` nudge everything unacknowledged; then it
publishes what is due, oldest first, while the transport is up. It is woken (``wake``)
by every send, ack and reconnect, and runs every ``drain_interval_s`` for resend
deadlines. One run at a time (the scheduler guarantees it): the outbox's in-flight book
assumes one drainer.

**Delivery.** :meth:`Uplink.fate` says where a frame sent in this process stands:
``queued`` until the hub's ack settles it, then ``committed`` or ``refused: <reason>``
(or ``dropped`` by the outbox bound). Never "sent": the broker's word is not the hub's.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

from agent import broker_login, enrollment
from agent.config import AgentConfig
from agent.identity import Identity
from agent.outbox import TRANSIENT_KINDS, Outbox, OutboxLimits, Settlement
from agent.transport import Transport
from edgefleet.clock import Clock
from protocol.errors import EdgefleetError
from protocol.frame import Envelope, Message
from protocol.messages import Hello, HubAck, ModelRef, Nudge, StateReport

logger = logging.getLogger(__name__)

MAX_FLAGS = 16


class Uplink:
    """The outbox and what drains and settles it; see the module docstring.

    Args:
        path: the agent's SQLite file (the outbox lives in it).
        active: the model serving now, for the hello.
    """

    def __init__(
        self,
        config: AgentConfig,
        identity: Identity,
        transport: Transport,
        *,
        path: Path,
        clock: Clock,
        active: Callable[[], ModelRef | None],
    ) -> None:
        self._config = config
        self._identity = identity
        self._broker_verifier = broker_login.load_or_create(
            config.state_dir, config.device_id
        ).verifier
        self._transport = transport
        self._clock = clock
        self._active = active
        self._topics = config.topics
        self.outbox = Outbox(
            path,
            identity,
            OutboxLimits(
                max_messages=config.outbox_max_messages,
                max_bytes=config.outbox_max_bytes,
                max_in_flight=config.outbox_max_in_flight,
                ack_timeout_ms=round(config.ack_timeout_s * 1000),
            ),
        )
        self.wake: Callable[[], None] = lambda: None
        """Asks for a :meth:`pump` run soon; the daemon sets it to its pump job's."""
        self.settled = threading.Event()
        """Set whenever an ack settled something (the daemon's stop waits on it)."""
        self._rewind_lock = threading.Lock()
        self._rewind_before = 0  # rewind what went out on connections before this; 0: none
        self._settle_lock = threading.Lock()
        self._last_settled: dict[str, tuple[int, str]] = {}
        self._hello_lock = threading.RLock()
        self._hello_seq: int | None = None
        self._hello_acked = False
        self._greeted = False
        self._hello_sent_ms: int | None = None
        self._waiting_said: str | None = None

    @property
    def hello_acked(self) -> bool:
        """The hub acknowledged a hello of this process (it knows the device's key)."""
        return self._hello_acked

    # ------------------------------------------------------------------ sending

    def send(self, message: Message) -> int:
        """Send ``message`` to the hub; return its seq (see :meth:`agent.daemon.Agent.send`).

        Raises:
            Oversize: the frame would exceed the frame size limit.
            Malformed: a header field out of range.
        """
        now_ms = self._clock.now_ms()
        if not self._greeted and not isinstance(message, Hello):
            self._greet(now_ms)
        if message.KIND in TRANSIENT_KINDS:
            sealed = self.outbox.seal(message, now_ms)
            topic = self._topics.up(self._config.device_id, sealed.kind)
            if not self._transport.publish(topic, sealed.frame):
                logger.debug("%s seq %d not sent: no connection", sealed.kind, sealed.seq)
            return sealed.seq
        if isinstance(message, StateReport) and self.outbox.take_drop_flag():
            message = with_flag(message, "outbox_dropped")
        seq = self.outbox.enqueue(message, now_ms)
        self.wake()
        return seq

    def send_hello(self, now_ms: int) -> None:
        """Send a hello unless one was acknowledged or one is still waiting in the outbox."""
        with self._hello_lock:  # a message racing the first hello waits and goes after it
            pending = self._hello_seq is not None and self.outbox.contains(self._hello_seq)
            if self._hello_acked or pending:
                self._greeted = True
                return
            self._hello_seq = self.send(self.hello())
            self._greeted = True

    def hello(self) -> Hello:
        """The hello to send now: key, agent version, tags, token, the active model."""
        return Hello(
            public_key=self._identity.public_hex,
            agent_version=agent_version()[:64],
            tags=dict(self._config.tags),
            enrollment_token=self._config.enrollment_token,
            active=self._active(),
            broker_verifier=self._broker_verifier,
        )

    def seal(self, message: Message) -> tuple[str, bytes]:
        """A signed frame for ``message`` and its topic, not stored (the last will)."""
        sealed = self.outbox.seal(message, self._clock.now_ms())
        return self._topics.up(self._config.device_id, sealed.kind), sealed.frame

    def _greet(self, now_ms: int) -> None:
        """The hello that goes before the process's first message (module docstring)."""
        try:
            self.send_hello(now_ms)
        except EdgefleetError as e:  # start() and the hello job try again
            logger.error("cannot queue the hello: %s", e)
            self._greeted = True

    # ------------------------------------------------------------------ draining

    def pump(self, now_ms: int) -> None:
        """The ``pump`` job: rewind if asked, publish what is due, say if approval waits."""
        with self._rewind_lock:
            before, self._rewind_before = self._rewind_before, 0
        if before:
            self.outbox.rewind(before)
        self.drain(now_ms)
        self._check_enrollment(now_ms)

    def drain(self, now_ms: int) -> int:
        """Publish what the outbox says is due, oldest first; return how many went out."""
        sent = 0
        device_id = self._config.device_id
        while self._transport.connected:
            batch = self.outbox.due(now_ms)
            if not batch:
                break
            for sealed in batch:
                connection = self._transport.connections  # read first: a doubt resends
                if not self._transport.publish(
                    self._topics.up(device_id, sealed.kind), sealed.frame
                ):
                    return sent
                self.outbox.mark_sent(sealed.seq, now_ms, connection)
                if sealed.seq == self._hello_seq and self._hello_sent_ms is None:
                    self._hello_sent_ms = now_ms
                sent += 1
        return sent

    def reconnected(self) -> None:
        """A connection came up: what went out on an earlier one is due again."""
        self._ask_rewind(self._transport.connections)

    def _ask_rewind(self, before_connection: int) -> None:
        with self._rewind_lock:
            self._rewind_before = max(self._rewind_before, before_connection)
        self.wake()

    # ------------------------------------------------------------------ the hub's answers

    def on_ack(self, envelope: Envelope) -> None:
        """Downlink handler for ``ack``: settle the outbox."""
        assert isinstance(envelope.message, HubAck)
        with self._settle_lock:
            settled = self.outbox.settle(envelope.message)
            self._remember(settled)
        for _, kind in settled.committed:
            if kind == "hello":
                if self._waiting_said is not None:
                    logger.info("the hub pinned this device's key: approval no longer awaited")
                self._hello_acked, self._waiting_said = True, None
        for _, kind, reason in settled.refused:
            if kind == "hello":
                self._hello_seq = self._hello_sent_ms = None
                self._say(enrollment.refused(self._config.device_id, reason))
        self.settled.set()
        self.wake()

    def on_nudge(self, envelope: Envelope) -> None:
        """Downlink handler for ``nudge``: a ``resend`` rewinds the outbox."""
        assert isinstance(envelope.message, Nudge)
        if envelope.message.reason == "resend":
            self._ask_rewind(self._transport.connections + 1)  # this connection's too

    def fate(self, seq: int, kind: str) -> str:
        """Where frame ``seq`` of ``kind`` (sent by this process) stands: ``queued``,
        ``committed``, ``refused: <reason>``, ``dropped`` or ``unknown``."""
        with self._settle_lock:
            if self.outbox.contains(seq):
                return "queued"
            last = self._last_settled.get(kind)
        if last is None or last[0] < seq:
            return "dropped"
        return last[1] if last[0] == seq else "unknown"

    # ------------------------------------------------------------------ internals

    def _remember(self, settled: Settlement) -> None:
        for seq, kind in settled.committed:
            self._last_settled[kind] = max(
                self._last_settled.get(kind, (0, "")), (seq, "committed")
            )
        for seq, kind, reason in settled.refused:
            if seq >= self._last_settled.get(kind, (0, ""))[0]:
                self._last_settled[kind] = (seq, f"refused: {reason}")

    def _check_enrollment(self, now_ms: int) -> None:
        sent = self._hello_sent_ms
        if self._hello_acked or sent is None or self._waiting_said is not None:
            return
        if now_ms - sent >= self._config.ack_timeout_s * 1000:
            token = self._config.enrollment_token is not None
            self._say(enrollment.waiting(self._config.device_id, token_configured=token))

    def _say(self, line: str) -> None:
        """Log an approval line at WARNING once; repeats go to DEBUG (the hello job retries
        every minute)."""
        level = logging.DEBUG if line == self._waiting_said else logging.WARNING
        logger.log(level, "%s", line)
        self._waiting_said = line


def agent_version() -> str:
    try:
        return metadata.version("edgefleet")
    except metadata.PackageNotFoundError:
        return "unknown"


def with_flag(report: StateReport, flag: str) -> StateReport:
    """``report`` with ``flag`` added (the flags are capped at 16: the last one yields)."""
    if flag in report.flags:
        return report
    return dataclasses.replace(report, flags=(*report.flags[: MAX_FLAGS - 1], flag))


__all__ = ["MAX_FLAGS", "Uplink", "agent_version", "with_flag"]
