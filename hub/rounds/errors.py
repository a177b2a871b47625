"""The rounds branch of the hub's exception tree.

Peer input never raises here: a delta the hub refuses is a :class:`~hub.rounds.screening.
Verdict` with a reason code, because a device's mistake (or attack) is an ordinary outcome
that ingest audits and carries on from. These errors are the operator's and the program's::

    HubError (hub.errors)
    ├─ InvalidRequest
    │  └─ InvalidPolicy          a round/aggregation policy that cannot work (422)
    └─ Conflict
       └─ NothingToAggregate     a round or buffer closed with no usable delta (409)

A round event the lifecycle table does not allow raises the hub's one
:class:`~hub.errors.IllegalTransition`.
"""

from __future__ import annotations

from hub.errors import Conflict, IllegalTransition, InvalidRequest


class InvalidPolicy(InvalidRequest):
    """A policy whose numbers contradict each other or the maths (``min_deltas`` above
    ``target_deltas``, a trimmed mean that trims everything); the message names the field."""

    reason = "invalid_policy"


class NothingToAggregate(Conflict):
    """Aggregation was asked for with no accepted delta (every one refused or flagged)."""

    reason = "nothing_to_aggregate"


__all__ = ["IllegalTransition", "InvalidPolicy", "NothingToAggregate"]
