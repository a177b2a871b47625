"""Device health: one vocabulary, one derivation (pure).

A device's health is derived from two sources, and :func:`derive` is the only place
they meet:

- what the **device reports**: the ``flags`` of its last state report;
- what the **hub derives** about it: ``cloned_device``, sessions with its id keep
  replacing each other (ingest counts its last wills, :mod:`hub.ingest.security`), and
  ``stuck``, a device still short of its desired model ``stuck_after_s`` after the
  desired state was set although it has been heard from since
  (:mod:`hub.fleet.reconcile_plan` decides, ``desired.stuck_at`` remembers).

The store keeps the result in ``devices.health``, written by one method,
``store.devices.set_health``; ingest (a state report), the reconciler (stuck,
recovered) and desired state (a new desired state ends a stuck episode) call it with
what :func:`derive` returns, never with a value of their own.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from enum import StrEnum


class Health(StrEnum):
    """A device's health, most serious first; precedence is top to bottom.

    ``CLONED_DEVICE`` comes first: two devices share one identity (or one restarts in a
    loop), so nothing else it reports can be taken at its word. It lasts while ingest
    sees takeovers, and only ingest derives it (the reconciler and desired state, which
    re-derive health on a stuck episode, do not know it; the next will restores it).
    ``STUCK`` (the hub's finding) outranks everything the device says about itself: a
    device may report ``ok`` and still not converge, and only the hub can see that. The
    flags it reports stay readable in its last report (``devices.reported``), so the
    cause of a stuck episode (``freeze_suspected``, say) is not lost. Below it come the
    device's own health flags, most serious first, then ``DEGRADED`` for any other flag
    it raises, ``OK`` for a report with no flag, and ``UNKNOWN`` before its first state
    report (``offline``, the last will's flag, says nothing about health).
    """

    CLONED_DEVICE = "cloned_device"
    STUCK = "stuck"
    FREEZE_SUSPECTED = "freeze_suspected"
    CLOCK_SUSPECT = "clock_suspect"
    MODEL_UNHEALTHY = "model_unhealthy"
    OUTBOX_DROPPED = "outbox_dropped"
    DEGRADED = "degraded"
    OK = "ok"
    UNKNOWN = "unknown"


OFFLINE_FLAG = "offline"
"""The flag of the last will: a presence signal, not a health one."""
DEVICE_FLAGS = (
    Health.FREEZE_SUSPECTED,
    Health.CLOCK_SUSPECT,
    Health.MODEL_UNHEALTHY,
    Health.OUTBOX_DROPPED,
)
"""Flags that name a device's health, most serious first; any other flag is ``DEGRADED``."""


def derive(flags: Sequence[str] | None, *, stuck: bool, cloned: bool = False) -> Health:
    """The device's health from its last reported ``flags`` (None: no state report
    yet) and whether the hub finds it ``cloned`` or ``stuck``; see :class:`Health` for
    the order."""
    if cloned:
        return Health.CLONED_DEVICE
    if stuck:
        return Health.STUCK
    if flags is None:
        return Health.UNKNOWN
    raised = set(flags) - {OFFLINE_FLAG}
    for flag in DEVICE_FLAGS:
        if flag.value in raised:
            return flag
    return Health.DEGRADED if raised else Health.OK


def reported_flags(reported: str | None) -> tuple[str, ...] | None:
    """The flags of a stored state report (its canonical JSON), None when there is none
    or it holds no list of flags (never a crash on a damaged row)."""
    if not reported:
        return None
    try:
        flags = json.loads(reported).get("flags", ())
    except (ValueError, AttributeError):
        return None
    if not isinstance(flags, list):
        return None
    return tuple(str(flag) for flag in flags)
