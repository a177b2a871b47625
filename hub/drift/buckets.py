"""Time buckets and cohorts: where each window is added, and when a bucket may be scored.

Buckets. A window belongs to the bucket holding its ``window_start`` (the time the data
was observed, not when it arrived: a device that was offline for an hour fills the
buckets of that hour when its outbox drains). Base buckets are ``policy.bucket_ms`` wide
(5 min by default) and roll up to 1 h and 1 day; widths divide one another and buckets
are aligned to the Unix epoch, so a bucket has exactly one parent.

Cohorts. A device counts in the fleet-wide cohort, in its model version's cohort and in
one cohort per tag (``region=eu``, ``hw=rk3588``). Cohorts of different tags overlap;
:mod:`hub.drift.attribution` decides which of them carries a drift.

The store keeps a device's own buckets for a short time and each cohort's for longer
(:class:`Retention`): scoring a bucket reads the device buckets (the drifting-device
fraction and attribution need them), while trends over weeks read the cohort buckets.
A bucket is scored once it is *closed*, ``grace_ms`` after its end, so windows still
in flight on the wire get in; windows arriving later update the device bucket and mark
the cohort bucket for a re-score while the device buckets are kept.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

MINUTE_MS = 60_000
HOUR_MS = 60 * MINUTE_MS
DAY_MS = 24 * HOUR_MS
BASE_MS = 5 * MINUTE_MS
ROLLUPS_MS = (HOUR_MS, DAY_MS)


@dataclass(frozen=True, order=True)
class Cohort:
    """A set of devices: ``fleet``, ``version=3`` or a tag ``region=eu``."""

    dimension: str
    value: str

    def __str__(self) -> str:
        return "fleet" if self == FLEET else f"{self.dimension}={self.value}"


FLEET = Cohort("fleet", "*")


def cohorts_of(version: int, tags: Mapping[str, str]) -> tuple[Cohort, ...]:
    """The cohorts a device running ``version`` with ``tags`` counts in, fleet first.

    A tag named ``version`` or ``fleet`` is prefixed ``tag.`` so it cannot pose as the
    version or fleet dimension.
    """
    dims = [Cohort("version", str(version))]
    for key in sorted(tags):
        name = f"tag.{key}" if key in ("version", "fleet") else key
        dims.append(Cohort(name, tags[key]))
    return (FLEET, *dims)


def bucket_start(t_ms: int, width_ms: int) -> int:
    """Start of the epoch-aligned bucket of width ``width_ms`` holding ``t_ms``."""
    return t_ms - t_ms % width_ms


@dataclass(frozen=True, order=True)
class BucketKey:
    """One cohort's bucket: scope (reference digest), cohort, width and start."""

    scope: str
    cohort: Cohort
    width_ms: int
    start_ms: int

    @property
    def end_ms(self) -> int:
        return self.start_ms + self.width_ms


@dataclass(frozen=True, order=True)
class DeviceBucketKey:
    """One device's bucket in a scope."""

    scope: str
    device_id: str
    width_ms: int
    start_ms: int

    @property
    def end_ms(self) -> int:
        return self.start_ms + self.width_ms


def route(
    window_start_ms: int,
    *,
    scope: str,
    device_id: str,
    width_ms: int = BASE_MS,
) -> DeviceBucketKey:
    """The device bucket a window is added to, in the transaction that stores it."""
    return DeviceBucketKey(scope, device_id, width_ms, bucket_start(window_start_ms, width_ms))


def parent(start_ms: int, width_ms: int) -> tuple[int, int] | None:
    """``(width, start)`` of the roll-up bucket holding a bucket, or None past a day."""
    for wider in ROLLUPS_MS:
        if wider > width_ms:
            if wider % width_ms:
                raise ValueError(f"{width_ms} ms buckets do not divide {wider} ms")
            return wider, bucket_start(start_ms, wider)
    return None


def children(start_ms: int, width_ms: int, child_ms: int) -> tuple[int, ...]:
    """Starts of the ``child_ms`` buckets inside a ``width_ms`` bucket."""
    if width_ms % child_ms:
        raise ValueError(f"{child_ms} ms buckets do not divide {width_ms} ms")
    return tuple(range(start_ms, start_ms + width_ms, child_ms))


def closed(end_ms: int, now_ms: int, *, grace_ms: int = 2 * MINUTE_MS) -> bool:
    """A bucket ending at ``end_ms`` may be scored at ``now_ms``."""
    return now_ms >= end_ms + grace_ms


@dataclass(frozen=True)
class Retention:
    """How long buckets are kept after they end, per kind and width (milliseconds)."""

    device_base_ms: int = 2 * DAY_MS
    device_hour_ms: int = 14 * DAY_MS
    cohort_base_ms: int = 14 * DAY_MS
    cohort_hour_ms: int = 90 * DAY_MS
    cohort_day_ms: int = 730 * DAY_MS

    def keep_ms(self, *, device: bool, width_ms: int) -> int:
        """Retention of a bucket kind; device day buckets are not kept (0)."""
        if device:
            return {HOUR_MS: self.device_hour_ms, DAY_MS: 0}.get(width_ms, self.device_base_ms)
        return {HOUR_MS: self.cohort_hour_ms, DAY_MS: self.cohort_day_ms}.get(
            width_ms, self.cohort_base_ms
        )

    def expired(self, key: BucketKey | DeviceBucketKey, now_ms: int) -> bool:
        """The bucket may be deleted at ``now_ms``."""
        keep = self.keep_ms(device=isinstance(key, DeviceBucketKey), width_ms=key.width_ms)
        return now_ms >= key.end_ms + keep


__all__ = [
    "BASE_MS",
    "DAY_MS",
    "FLEET",
    "HOUR_MS",
    "BucketKey",
    "Cohort",
    "DeviceBucketKey",
    "Retention",
    "bucket_start",
    "children",
    "closed",
    "cohorts_of",
    "parent",
    "route",
]
