"""The rollouts' branch of the hub's exception tree: ``RolloutError`` and its three
refusals (an invalid spec, a conflicting rollout, impossible gate input; an illegal move in
a state table is the hub's one :class:`~hub.errors.IllegalTransition`), drawn with the rest
of the tree, once, in :mod:`hub.errors`.

``InvalidRolloutSpec`` is also a ``ValueError``, so :func:`protocol.schema.from_json`
turns it into ``Malformed`` with the JSON path of the offending value; the spec's own
:meth:`~hub.rollouts.spec.RolloutSpec.from_json` turns that back into an
``InvalidRolloutSpec`` whose message starts with the path.
"""

from __future__ import annotations

from hub.errors import HubError


class RolloutError(HubError):
    """Root of the errors the rollout core raises."""

    reason = "rollout"
    status_hint = 409


class InvalidRolloutSpec(RolloutError, ValueError):
    """A rollout spec that cannot run as written (stages out of order, a gate with no
    control group to compare against, ...); the message names the field."""

    reason = "invalid_rollout"
    status_hint = 422


class RolloutConflict(RolloutError):
    """A rollout of the same model is already active on some of these devices."""

    reason = "rollout_conflict"
    status_hint = 409


class InvalidGateInput(RolloutError, ValueError):
    """Metrics no device could have reported (more errors than inferences, a negative
    count, a non-finite latency): the caller's data is wrong, not the rollout."""

    reason = "invalid_gate_input"
    status_hint = 422
