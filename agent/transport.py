"""The agent's seam to the broker: what the daemon needs of an MQTT session, and nothing more.

The daemon (agent/daemon.py) never touches paho. It talks to a :class:`Transport`:

- :meth:`~Transport.subscribe` the topics it reads (before :meth:`~Transport.connect`;
  a transport renews them on every connection, since sessions are clean);
- :meth:`~Transport.on_event` where inbound messages and connection events go;
- :meth:`~Transport.connect` starts connecting and keeps reconnecting by itself; it
  returns at once and asks ``will()`` for a fresh last will before each attempt;
- :meth:`~Transport.publish` one QoS 1 frame; ``False`` while no connection is up
  (the outbox keeps the frame; no transport queues across connections);
- :attr:`~Transport.connections` counts the connections that came up;
- :meth:`~Transport.disconnect` cleanly (no last will) and stop reconnecting.

The default is :class:`agent.link.Link`: one paho client per device with its own network
thread and a supervisor thread for backoff. Anything else with these methods may stand
in, for instance many agents' clients driven by one selector on paho's external-loop
API (``loop_read``/``loop_write``/``loop_misc``), as a simulator of a thousand devices
needs. The contract a replacement must keep:

- events are delivered in the order the broker delivered them, :class:`Connected`
  only once the broker acknowledged the subscriptions (a hub ack to a frame sent at once
  must find them in place);
- the sink is called from the transport's own thread and must not block; the daemon's
  puts the event on a bounded queue and returns;
- :meth:`publish` is callable from any thread.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class Inbound:
    """A message the broker delivered."""

    topic: str
    payload: bytes
    retained: bool


@dataclass(frozen=True)
class Connected:
    """A connection came up and the broker acknowledged its subscriptions."""


LinkEvent = Inbound | Connected
EventSink = Callable[[LinkEvent], None]
WillFactory = Callable[[], tuple[str, bytes]]
"""Returns the last will's (topic, frame): a signed ``offline`` state report."""


class Transport(Protocol):
    """One device's MQTT session, as the daemon uses it; see the module docstring."""

    @property
    def connected(self) -> bool:
        """True while a connection is up and subscribed."""
        ...

    @property
    def connections(self) -> int:
        """How many connections have come up, counted when :attr:`connected` turns true: a
        frame published while this reads ``n`` went out on connection ``n`` (after a
        reconnect the agent resends only what went out on an earlier one)."""
        ...

    def subscribe(self, *topics: str) -> None:
        """Read ``topics`` (QoS 1) on every connection from now on."""
        ...

    def on_event(self, sink: EventSink) -> None:
        """Deliver :class:`Inbound` and :class:`Connected` events to ``sink``."""
        ...

    def connect(self, *, will: WillFactory | None = None) -> None:
        """Start connecting (and reconnecting); returns at once."""
        ...

    def publish(self, topic: str, payload: bytes) -> bool:
        """Hand one QoS 1 frame to the current connection; False when none is up."""
        ...

    def disconnect(self) -> None:
        """Disconnect cleanly (the broker drops the last will) and stop reconnecting."""
        ...


__all__ = ["Connected", "EventSink", "Inbound", "LinkEvent", "Transport", "WillFactory"]
