"""Topic names: one versioned prefix, device ids that can never be wildcards or paths.

=====================================  =========  ===============================  ========
topic                                  direction  payload                          retained
=====================================  =========  ===============================  ========
``ef/v1/d/{device}/up/{kind}``         device→hub frame (hello, state, telemetry,  no
                                                  delta, data, ack, fetch)
``ef/v1/d/{device}/down/{kind}``       hub→device frame (desired, ack, chunk,      desired
                                                  nudge)                           only
``ef/v1/fleet/{kind}``                 hub→all    signed document (root, release,  yes
                                                  heartbeat)
=====================================  =========  ===============================  ========

``Topics(prefix="ef")`` builds and parses them; tests give every case its own prefix so
runs never see each other's retained messages.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from protocol.errors import Malformed
from protocol.schema import check_name

UP_KINDS = frozenset({"hello", "state", "telemetry", "delta", "data", "ack", "fetch"})
DOWN_KINDS = frozenset({"desired", "ack", "chunk", "nudge"})
FLEET_KINDS = frozenset({"root", "release", "heartbeat"})
WIRE_VERSION = "v1"
_PREFIX = re.compile(r"[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*")


@dataclass(frozen=True)
class Route:
    """A parsed topic: ``device_id`` is None for fleet-wide topics."""

    direction: Literal["up", "down", "fleet"]
    kind: str
    device_id: str | None

    @property
    def qualified_kind(self) -> str:
        return f"{self.direction}.{self.kind}"


@dataclass(frozen=True)
class Topics:
    """Topic builder and parser for one prefix."""

    prefix: str = "ef"

    def __post_init__(self) -> None:
        if _PREFIX.fullmatch(self.prefix) is None:
            raise Malformed(f"topic prefix {self.prefix!r} must be plain levels, no wildcards")

    @property
    def base(self) -> str:
        return f"{self.prefix}/{WIRE_VERSION}"

    def up(self, device_id: str, kind: str) -> str:
        check_name(device_id, "device_id")
        _check_kind(kind, UP_KINDS)
        return f"{self.base}/d/{device_id}/up/{kind}"

    def down(self, device_id: str, kind: str) -> str:
        check_name(device_id, "device_id")
        _check_kind(kind, DOWN_KINDS)
        return f"{self.base}/d/{device_id}/down/{kind}"

    def fleet(self, kind: str) -> str:
        _check_kind(kind, FLEET_KINDS)
        return f"{self.base}/fleet/{kind}"

    def all_up(self) -> str:
        """Subscription filter for every device's uplink (the hub's ingest)."""
        return f"{self.base}/d/+/up/#"

    def device_down(self, device_id: str) -> str:
        """Subscription filter for one device's downlink."""
        check_name(device_id, "device_id")
        return f"{self.base}/d/{device_id}/down/#"

    def all_fleet(self) -> str:
        return f"{self.base}/fleet/#"

    def parse(self, topic: str) -> Route:
        """Split a topic into direction, kind and device id.

        Raises:
            Malformed: not one of ours, an unknown kind, or an invalid device id.
        """
        base = self.base + "/"
        if not topic.startswith(base):
            raise Malformed(f"topic outside {base}")
        parts = topic[len(base) :].split("/")
        if len(parts) == 2 and parts[0] == "fleet":
            _check_kind(parts[1], FLEET_KINDS)
            return Route("fleet", parts[1], None)
        if len(parts) == 4 and parts[0] == "d" and parts[2] in ("up", "down"):
            check_name(parts[1], "device_id")
            direction: Literal["up", "down"] = "up" if parts[2] == "up" else "down"
            _check_kind(parts[3], UP_KINDS if direction == "up" else DOWN_KINDS)
            return Route(direction, parts[3], parts[1])
        raise Malformed("topic is not an edgefleet route")


def _check_kind(kind: str, allowed: frozenset[str]) -> None:
    if kind not in allowed:
        raise Malformed(f"unknown topic kind {kind[:40]!r}")
