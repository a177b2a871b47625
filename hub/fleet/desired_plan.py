"""Desired state, decided (pure): what setting or publishing a device's desired model means.

:func:`plan_set` refuses what a device would refuse anyway, with a message an operator
can act on, and otherwise says which release entry to assign:

- the device must be known and **active** (not pending or revoked);
- the model version must be registered, and named by the current **signed** release
  list (a device installs only what that list names);
- its release counter must be at or above the list's **rollback floor**
  (``min_counter``). A rollback is a new assignment pointing at an older entry, never
  an older assignment replayed; devices accept it above the floor (docs/decisions.md);
- an application that feeds the model the device last reported active must be able to
  feed the new one: the same number of inputs with the same dtypes and shapes (names
  matter only between several inputs), :func:`protocol.manifest.inputs_differ`, the
  check the device makes before it installs (``incompatible``). A device whose active
  model the registry does not hold is not checked here; the device still checks.

:func:`plan_publish` decides how to (re)publish a stored desired state: as it is, or
with a re-signed assignment first when less than half of its lifetime is left or the
rollout key was rotated (``reissue``: the old key's signature no longer verifies on any
device that saw the new root), same entry, next version; or not at all (nothing to
publish, no signed list yet, or the assigned entry left the release list).

Refusals are values (:class:`Refusal`, with a ``reason`` code) that the shell,
:mod:`hub.fleet.desired`, raises as the matching hub error; nothing here reads the
store, signs or publishes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from hub.errors import Conflict, HubError
from hub.fleet.releases import SignedRelease, needs_reissue
from hub.health import Health
from hub.store import NotFound
from hub.store.rows import Desired, Device
from protocol.manifest import ModelManifest, inputs_differ
from protocol.metadata import ReleaseEntry

RefusalReason = Literal[
    "unknown_device",
    "inactive_device",
    "unknown_version",
    "unsigned",
    "unreleased",
    "below_floor",
    "incompatible",
]


@dataclass(frozen=True)
class Refusal:
    """Why a desired state cannot be set; :meth:`error` is what the operator is told."""

    reason: RefusalReason
    message: str

    def error(self) -> HubError:
        """NotFound for what does not exist, Conflict for what the state forbids."""
        missing = self.reason in ("unknown_device", "unknown_version")
        return NotFound(self.message) if missing else Conflict(self.message)


@dataclass(frozen=True)
class Assign:
    """Sign an assignment to ``entry`` on ``release`` and store it as desired."""

    entry: ReleaseEntry
    release: SignedRelease
    ends_stuck_episode: bool
    """The device was stuck: its health is derived afresh (a new desired state starts a
    new episode)."""


def plan_set(
    device: Device | None,
    *,
    device_id: str,
    model_name: str,
    model_version: int,
    registered: bool,
    current: SignedRelease | None,
    previous: Desired | None,
    active: ModelManifest | None = None,
    candidate: ModelManifest | None = None,
) -> Assign | Refusal:
    """Decide whether ``model_name`` v``model_version`` may become the device's desired
    model (``registered``: the registry holds that version; ``current``: the signed
    release list; ``previous``: the device's desired state now; ``active`` and
    ``candidate``: the manifests of the model the device last reported active, if the
    registry holds it, and of the one asked for)."""
    if device is None:
        return Refusal("unknown_device", f"no device {device_id[:64]!r}")
    if device.status != "active":
        return Refusal("inactive_device", f"device {device_id} is {device.status}, not active")
    if not registered:
        return Refusal(
            "unknown_version", f"no version {model_version} of model {model_name[:64]!r}"
        )
    if current is None:
        return Refusal("unsigned", "no release list has been signed yet")
    entry = current.entry(model_name, model_version)
    if entry is None:
        return Refusal("unreleased", f"version {model_version} of {model_name} is not released yet")
    floor = current.release.min_counter
    if entry.release_counter < floor:
        return Refusal(
            "below_floor",
            f"{model_name} v{model_version} (release counter {entry.release_counter}) is "
            f"below the rollback floor {floor} the release key has set",
        )
    if active is not None and candidate is not None:
        why = inputs_differ(active.inputs, candidate.inputs)
        if why is not None:
            return Refusal(
                "incompatible",
                f"incompatible: device {device_id} runs {active.name} v{active.version}, and "
                f"{model_name} v{model_version} would be refused there: its inputs differ "
                f"from the active model's: {why}",
            )
    stuck = previous is not None and previous.stuck_at is not None
    return Assign(entry, current, ends_stuck_episode=stuck or device.health == Health.STUCK)


@dataclass(frozen=True)
class Publish:
    """Publish the stored desired state as it is, with ``release`` beside it."""

    release: SignedRelease


@dataclass(frozen=True)
class Reissue:
    """Re-sign the assignment (same ``entry``, next version) on ``release``, then publish."""

    entry: ReleaseEntry
    release: SignedRelease


@dataclass(frozen=True)
class Skip:
    """Publish nothing, and why."""

    reason: Literal["no_desired_state", "unsigned", "left_release_list"]


def plan_publish(
    desired: Desired | None,
    current: SignedRelease | None,
    *,
    now_ms: int,
    lifetime_ms: int,
    reissue: bool = False,
) -> Publish | Reissue | Skip:
    """How to publish ``desired`` with the ``current`` signed release list (devices
    check an assignment built on an older list against the newest they trust, so a new
    release needs no new assignments); ``lifetime_ms``: an assignment's lifetime;
    ``reissue``: re-sign whatever the expiry (a rotated rollout key)."""
    if desired is None:
        return Skip("no_desired_state")
    if current is None:
        return Skip("unsigned")
    due = needs_reissue(desired.assignment_expires, now_ms=now_ms, lifetime_ms=lifetime_ms)
    if not (due or reissue):
        return Publish(current)
    entry = current.entry(desired.model_name, desired.model_version)
    if entry is None:
        return Skip("left_release_list")
    return Reissue(entry, current)
