"""The hub context: what the hub's shells need to act, in one frozen value.

Built once where the hub is assembled (``hub serve`` in :mod:`hub.service`, the CLI,
a test) and passed whole to every shell that decides and then writes or publishes:
desired state, the reconciler, the fleet documents, the registry, the scheduler's jobs
(each a one-line shim, ``lambda: reconcile_job(ctx)``), the REST app. A new layer
(rounds, drift, rollouts) takes a ``HubContext`` too, instead of growing a positional
parameter list. Pure cores never see it: their shells hand them plain values.

The two publishers are optional, and ``None`` has one meaning for both: nothing is
published now, the change is stored, and the running hub publishes it (the CLI's
``--data`` mode, a test of the REST layer). Neither is the MQTT link itself: the downlink
signs and numbers device frames (:class:`hub.transport.downlink.Downlink`), and the
fleet publisher puts fleet documents retained on ``fleet/<kind>``
(:func:`hub.transport.mqtt.fleet_publisher`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol

from edgefleet.clock import Clock
from hub.keyring import Keys
from hub.settings import HubSettings
from hub.store import Store
from protocol.frame import Message


class Sender(Protocol):
    """What desired state, the reconciler and delivery need of the downlink."""

    def send(self, device_id: str, message: Message, *, retain: bool = False) -> int | None:
        """Sign ``message`` for ``device_id`` and publish it; its seq, or None if not
        published (link down, unknown or revoked device)."""
        ...


FleetPublisher = Callable[[str, bytes], bool]
"""``publish(kind, payload)``: publish ``payload`` retained on ``fleet/<kind>``; False
when the broker is out of reach (the caller retries later)."""


@dataclass(frozen=True)
class HubContext:
    """The store, keys, clock, settings and publishers a hub shell acts with."""

    store: Store
    keyring: Keys  # a loaded Keyring; the running hub's LiveKeyring follows rotations
    clock: Clock
    settings: HubSettings
    downlink: Sender | None = None
    fleet: FleetPublisher | None = None
    leading: Callable[[], bool] | None = None  # a replica's hub.leader; None: a lone hub leads

    @property
    def role(self) -> Literal["single", "leader", "follower"]:
        """``single`` (no replicas), or this replica's ``leader`` or ``follower``."""
        if self.leading is None:
            return "single"
        return "leader" if self.leading() else "follower"

    def now_ms(self) -> int:
        """The clock's time, milliseconds since the Unix epoch."""
        return self.clock.now_ms()
