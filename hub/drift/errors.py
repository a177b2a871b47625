"""The drift core's branch of the hub's exception tree (who is at fault decides where)::

    HubError (hub.errors)
    ├─ InvalidRequest (hub.errors)
    │  ├─ IncompatibleWindow    a window that does not fit its reference (names, bins) (422)
    │  └─ UnusableReference     a profile the drift tests cannot use (no rows, a name clash) (422)
    └─ Conflict (hub.errors)
       └─ OverlappingParts      two aggregates sharing some windows but not all (409)

An alert event its lifecycle table does not allow raises the hub's one
:class:`~hub.errors.IllegalTransition`.

A window's shape is checked against the reference when it is merged: a device that sends
sketches over other bins is refused like any other bad input, never half-merged.
"""

from __future__ import annotations

from hub.errors import Conflict, IllegalTransition, InvalidRequest


class IncompatibleWindow(InvalidRequest):
    """A window whose features, bins or prediction shape differ from its reference."""

    reason = "incompatible_window"


class UnusableReference(InvalidRequest):
    """A reference profile the drift tests cannot use."""

    reason = "unusable_reference"


class OverlappingParts(Conflict):
    """Two aggregates share some windows but not all: their union cannot be computed.

    Aggregates are sums over disjoint windows; a window already inside is skipped, but
    a partial overlap means one side holds windows the other lacks *and* some in common,
    and the common ones cannot be subtracted out.
    """

    reason = "overlapping_parts"


__all__ = ["IllegalTransition", "IncompatibleWindow", "OverlappingParts", "UnusableReference"]
