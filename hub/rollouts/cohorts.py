"""Which devices each stage takes, and which devices they are compared with.

**Order.** Every device of the target gets a key ``blake2b(device_id, key=seed)``; the
rollout walks devices in key order, devices carrying every ``canary_tags`` pair (pinned
canaries) first. A device's key depends on nothing but the seed and its own id, so the
order is reproducible, two rollouts with different seeds pick independent canaries, and
a device that joins the target later slots into the same order without moving anyone.

**Stages are nested.** Stage ``k`` holds the first ``quota(k)`` devices of the order:
``ceil(percent × target size / 100)``, at least one, and never fewer than the pinned
canaries or the stage before. The planner tops a stage up to its quota with the earliest
devices not yet touched (skipping offline ones until they return), so a late joiner whose
key is early is taken by the current stage, and devices that left the target or already
updated are never counted twice.

**Control.** The devices of the target the rollout has not touched form the control group
(shadow devices included: they still serve the old model). With
``stratify_by`` tag keys, each device falls in a stratum (its values for those keys) and
the gates weight the control to the canaries' mix over strata
(:func:`hub.rollouts.sequential.stratified_difference`).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

from hub.rollouts.spec import COMPARATIVE, RolloutSpec


class Tagged(Protocol):
    """What the cohort logic needs of a device: its id and tags."""

    @property
    def device_id(self) -> str: ...

    @property
    def tags(self) -> Mapping[str, str]: ...


def order_key(seed: int, device_id: str) -> int:
    """The device's place in the order of a rollout seeded with ``seed`` (64 bits)."""
    digest = hashlib.blake2b(
        device_id.encode(), digest_size=8, key=seed.to_bytes(8, "big"), person=b"ef-rollout"
    )
    return int.from_bytes(digest.digest(), "big")


def pinned(spec: RolloutSpec, tags: Mapping[str, str]) -> bool:
    """True when the device carries every ``canary_tags`` pair (and some are set)."""
    return bool(spec.canary_tags) and all(tags.get(k) == v for k, v in spec.canary_tags.items())


def in_target(spec: RolloutSpec, devices: Iterable[Tagged]) -> list[Tagged]:
    """The devices ``spec.target`` names, in the rollout's order."""
    chosen = [d for d in devices if spec.target.matches(d.device_id, d.tags)]
    return sort_by_order(spec, chosen)


T = TypeVar("T", bound=Tagged)


def sort_by_order(spec: RolloutSpec, devices: Iterable[T]) -> list[T]:
    """``devices`` in the rollout's order: pinned canaries first, then by key."""
    seed = spec.seed
    if not spec.canary_tags:
        return sorted(devices, key=lambda d: (order_key(seed, d.device_id), d.device_id))
    return sorted(
        devices,
        key=lambda d: (not pinned(spec, d.tags), order_key(seed, d.device_id), d.device_id),
    )


def quota(percent: float, target_size: int) -> int:
    """Devices a stage at ``percent`` takes of ``target_size``: rounded up, at least one."""
    if target_size == 0:
        return 0
    return max(1, min(target_size, math.ceil(percent * target_size / 100.0 - 1e-9)))


def stage_quotas(spec: RolloutSpec, target_size: int, pinned_count: int) -> tuple[int, ...]:
    """Cumulative devices each stage holds; nested, the pinned canaries all in the first."""
    quotas: list[int] = []
    floor = min(pinned_count, target_size)
    for stage in spec.stages:
        floor = max(floor, quota(stage.percent, target_size))
        quotas.append(floor)
    return tuple(quotas)


def shadow_quota(spec: RolloutSpec, target_size: int, pinned_count: int) -> int:
    """Devices the shadow stage takes (the first canaries-to-be): 0 without one."""
    if spec.shadow is None:
        return 0
    return max(min(pinned_count, target_size), quota(spec.shadow.percent, target_size))


def stratum(spec: RolloutSpec, tags: Mapping[str, str]) -> tuple[str, ...]:
    """The device's stratum: its values of ``stratify_by`` ("" where unset)."""
    return tuple(tags.get(key, "") for key in spec.stratify_by)


@dataclass(frozen=True)
class DryRun:
    """Which devices each stage would add if every device were online and updated at
    once: ``shadow`` the shadow stage's devices, ``stages[k]`` the devices stage ``k``
    adds to those before it (their union is the target, in order). ``warnings``: stages
    too small (or leaving too small a control) for a gate's ``min_devices``, which will
    stay inconclusive and pause for a human unless more devices join."""

    shadow: tuple[str, ...]
    stages: tuple[tuple[str, ...], ...]
    target_size: int
    pinned: int
    warnings: tuple[str, ...] = ()


def dry_run(spec: RolloutSpec, devices: Sequence[Tagged]) -> DryRun:
    """What :class:`DryRun` says, for the devices there are now."""
    ordered = [d.device_id for d in in_target(spec, devices)]
    pinned_count = sum(1 for d in devices if pinned(spec, d.tags) and _targets(spec, d))
    quotas = stage_quotas(spec, len(ordered), pinned_count)
    starts = (0, *quotas[:-1])
    shadow = tuple(ordered[: shadow_quota(spec, len(ordered), pinned_count)])
    return DryRun(
        shadow=shadow,
        stages=tuple(tuple(ordered[a:b]) for a, b in zip(starts, quotas, strict=True)),
        target_size=len(ordered),
        pinned=pinned_count,
        warnings=_warnings(spec, len(ordered), quotas, len(shadow)),
    )


def _warnings(
    spec: RolloutSpec, size: int, quotas: tuple[int, ...], shadows: int
) -> tuple[str, ...]:
    found: list[str] = []
    if spec.shadow is not None:
        for gate in spec.shadow.gates:
            if shadows < gate.min_devices:
                found.append(
                    f"the shadow stage takes {shadows} devices; {gate.metric} needs "
                    f"{gate.min_devices}: it will pause for a human"
                )
    for k, (stage, held) in enumerate(zip(spec.stages, quotas, strict=True)):
        for gate in stage.gates:
            control = size - held if gate.metric in COMPARATIVE else gate.min_devices
            if held < gate.min_devices or control < gate.min_devices:
                found.append(
                    f"stage {k + 1} ({stage.percent:g}%) holds {held} devices and leaves "
                    f"{size - held} for control; {gate.metric} needs {gate.min_devices} "
                    "on each side: it will pause for a human"
                )
    return tuple(found)


def _targets(spec: RolloutSpec, device: Tagged) -> bool:
    return spec.target.matches(device.device_id, device.tags)
