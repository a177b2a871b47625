"""Presence: a device that has gone silent is marked offline (a scheduler job).

Its own module because it reads no frame: ingest marks devices online as their frames
arrive, and this job takes them offline when nothing has arrived for a while.
"""

from __future__ import annotations

from hub.context import HubContext


def mark_offline(ctx: HubContext) -> list[str]:
    """Mark offline every online device not heard from for ``offline_after_s``; their ids.

    The scheduler calls this every ``offline_check_interval_s``; the last will (a state
    report flagged ``offline``) marks a device offline sooner.
    """
    silent_ms = round(ctx.settings.offline_after_s * 1000)
    return ctx.store.devices.mark_offline(seen_before_ms=ctx.now_ms() - silent_ms)
