"""The reconciler's plan (pure): desired against reported state per device, the
device-twin pattern.

From each desired state beside its device (:class:`~hub.store.rows.Twin`), ``now_ms``
and the settings, :func:`plan` decides, per active device with a desired state:

- **publish**: the desired state was never published (stored by the CLI without a
  broker, or the broker was out of reach), or its assignment is past half its lifetime
  and must be re-signed (:func:`hub.fleet.releases.needs_reissue`);
- **nudge**: the reported active model differs from the desired one, the device was
  heard from within ``offline_after_s``, and nothing was published or nudged for
  ``nudge_every_s``: republish the desired state and send ``Nudge("desired")``;
- **stuck**: still lagging ``stuck_after_s`` after the desired state was set, although
  the device has been heard from since, and not in a stuck episode yet
  (``desired.stuck_at`` remembers one, so it is marked and audited once);
- **recovered**: in sync again during a stuck episode: end it.

It also notices a signed release list the broker has not been given yet. The shell,
:mod:`hub.fleet.reconciler`, carries the plan out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from hub.fleet.releases import needs_reissue
from hub.store.rows import Twin

if TYPE_CHECKING:  # the settings only as values: hub.settings holds paths
    from hub.settings import HubSettings


@dataclass(frozen=True)
class Actions:
    """One reconciliation's decisions; device ids in id order."""

    publish: tuple[str, ...] = ()
    nudge: tuple[str, ...] = ()
    stuck: tuple[str, ...] = ()
    recovered: tuple[str, ...] = ()
    publish_release: bool = False


def plan(
    twins: Sequence[Twin],
    *,
    now_ms: int,
    settings: HubSettings,
    release_version: int,
    release_published: int,
) -> Actions:
    """Decide (see the module docstring); ``twins`` in device id order.

    ``release_version`` is the current signed release list's version (0: none) and
    ``release_published`` the one the broker last received.
    """
    publish, nudge, stuck, recovered = [], [], [], []
    nudge_ms = int(settings.nudge_every_s * 1000)
    lifetime_ms = int(settings.assignment_expiry_s * 1000)
    for twin in twins:
        desired, device = twin.desired, twin.device
        if device.status != "active":
            continue
        due = desired.published_at is None or needs_reissue(
            desired.assignment_expires, now_ms=now_ms, lifetime_ms=lifetime_ms
        )
        lagging = (device.active_name, device.active_version) != (
            desired.model_name,
            desired.model_version,
        )
        heard = device.last_seen is not None and now_ms - device.last_seen < int(
            settings.offline_after_s * 1000
        )
        last_contact = max(desired.published_at or 0, desired.nudged_at or 0)
        if (
            lagging
            and heard
            and desired.published_at is not None
            and now_ms - last_contact >= nudge_ms
        ):
            nudge.append(device.id)
        elif due:
            publish.append(device.id)
        if lagging and _stuck(twin, now_ms, settings):
            stuck.append(device.id)
        elif not lagging and desired.stuck_at is not None:
            recovered.append(device.id)
    return Actions(
        publish=tuple(publish),
        nudge=tuple(nudge),
        stuck=tuple(stuck),
        recovered=tuple(recovered),
        publish_release=release_version > release_published,
    )


def _stuck(twin: Twin, now_ms: int, settings: HubSettings) -> bool:
    """Lagging past the timeout, heard from since the desired state was set, and not in
    a stuck episode yet."""
    desired, last_seen = twin.desired, twin.device.last_seen
    overdue = now_ms - desired.set_at >= int(settings.stuck_after_s * 1000)
    heard_since = last_seen is not None and last_seen > desired.set_at
    return overdue and heard_since and desired.stuck_at is None
