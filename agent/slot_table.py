"""The install state machine of the model slots, as a table: pure, no disk I/O.

Two slots: *active* (serving) and *standby* (``previous`` after a swap, the candidate
during an install). Events are small frozen dataclasses; :data:`TRANSITIONS` says which
state each event moves to (h11-style), :func:`step` applies one event to a
:class:`SlotState` and raises :class:`IllegalTransition` for a move the table does not
hold, and :func:`recover` decides what to resume from after a restart. Nothing here
reads or writes a file: :mod:`agent.slots` persists every step (one atomic rewrite of
``slots.json``) and hashes the packages :func:`recover` asks about::

    idle/committed/rolled_back/refused/failed --Assign--> downloading --Downloaded--> verifying
    verifying --Verified--> staged --Check--> checking --Swap--> watching --Commit--> committed
    downloading, verifying --Refuse--> refused;  --Fail--> failed
    checking --Unhealthy--> rolled_back;  watching --Rollback--> rolled_back
    any at-rest state, downloading --Adopt--> committed   (assigned what already runs)

**Restart after a crash** (:func:`recover`), state by state: ``downloading`` resumes;
``verifying`` fails as ``interrupted`` (the hub's next desired state retries);
``staged`` runs its health check again; ``checking`` and ``watching`` roll back. A crash
while the candidate is being checked or watched cannot be told apart from the candidate
crashing the process (an onnxruntime kernel fault), and retrying it would crash-loop the
device, so it is counted against the candidate. Then a previous or active package that is
missing or corrupt is dropped from the record (the active one replaced by the previous).

A recovery decision is only sound when no other process is using the slots: the agent
holds the state directory's lock (:mod:`edgefleet.lock`) before it builds
:class:`agent.slots.Slots`, and a second agent on the same directory exits first.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Literal

from agent.errors import IllegalTransition
from protocol import canonical, schema
from protocol.messages import MAX_REASON, InstallOutcome, InstallStatus, ModelRef
from protocol.metadata import ReleaseEntry

InstallState = Literal[
    "idle",
    "downloading",
    "verifying",
    "staged",
    "checking",
    "watching",
    "committed",
    "rolled_back",
    "refused",
    "failed",
]


def ref_of(entry: ReleaseEntry) -> ModelRef:
    """The model reference both sides use for a release entry."""
    return ModelRef(entry.name, entry.version, entry.sha256)


# ---------------------------------------------------------------- events


@dataclass(frozen=True)
class Assign:
    """Install ``entry``, named by an accepted assignment of ``assignment_version``."""

    entry: ReleaseEntry
    assignment_version: int


@dataclass(frozen=True)
class Adopt:
    """An accepted assignment names the model already active: nothing to install."""

    entry: ReleaseEntry
    assignment_version: int


@dataclass(frozen=True)
class Downloaded:
    """Every byte of the candidate is on disk (or was already stored)."""


@dataclass(frozen=True)
class Verified:
    """Hash, package and model checks passed; the candidate is stored by its hash."""


@dataclass(frozen=True)
class Check:
    """The health check of the candidate starts."""


@dataclass(frozen=True)
class Swap:
    """The candidate passed its health check and becomes active; the watch starts."""

    now_ms: int


@dataclass(frozen=True)
class Commit:
    """The watch window passed: the candidate stays."""


@dataclass(frozen=True)
class Refuse:
    """The candidate's bytes or model were refused; ``reason`` starts with the code."""

    reason: str


@dataclass(frozen=True)
class Fail:
    """The install could not finish (slow retrieval, interrupted); it may be retried."""

    reason: str


@dataclass(frozen=True)
class Unhealthy:
    """The candidate failed its health check; the active model never changed."""

    reason: str


@dataclass(frozen=True)
class Rollback:
    """The watched candidate failed; the previous model becomes active again."""

    reason: str


Event = (
    Assign
    | Adopt
    | Downloaded
    | Verified
    | Check
    | Swap
    | Commit
    | Refuse
    | Fail
    | Unhealthy
    | Rollback
)

_AT_REST: tuple[InstallState, ...] = ("idle", "committed", "rolled_back", "refused", "failed")

TRANSITIONS: dict[InstallState, dict[type[Event], InstallState]] = {
    **{state: {Assign: "downloading", Adopt: "committed"} for state in _AT_REST},
    "downloading": {
        Assign: "downloading",
        Adopt: "committed",
        Downloaded: "verifying",
        Refuse: "refused",
        Fail: "failed",
    },
    "verifying": {Verified: "staged", Refuse: "refused", Fail: "failed"},
    "staged": {Check: "checking"},
    "checking": {Swap: "watching", Unhealthy: "rolled_back"},
    "watching": {Commit: "committed", Rollback: "rolled_back"},
}


@dataclass(frozen=True)
class SlotState:
    """Everything ``slots.json`` holds.

    ``candidate`` is the entry being installed (``None`` at rest); ``outcome`` the last
    install outcome, reported to the hub; ``watch_started_ms`` is set while watching.

    Round-trip law: ``SlotState.from_bytes(s.to_bytes()) == s``.
    """

    state: InstallState = "idle"
    active: ModelRef | None = None
    previous: ModelRef | None = None
    candidate: ReleaseEntry | None = None
    assignment_version: int = 0
    outcome: InstallOutcome | None = None
    watch_started_ms: int | None = None

    def to_bytes(self) -> bytes:
        return canonical.dumps(schema.to_json(self))

    @classmethod
    def from_bytes(cls, data: bytes) -> SlotState:
        """Raises: Malformed (a ProtocolError) when ``data`` is not a valid state."""
        return schema.from_json(cls, canonical.loads(data), path="slots")


def step(state: SlotState, event: Event) -> SlotState:
    """The state after ``event``: the table decides the move, the event its effects.

    Raises:
        IllegalTransition: the table holds no move for ``event`` in ``state.state``.
    """
    target = TRANSITIONS.get(state.state, {}).get(type(event))
    if target is None:
        raise IllegalTransition(state.state, type(event).__name__)
    moved = replace(state, state=target)
    candidate = state.candidate
    match event:
        case Assign(entry, version):
            return replace(
                moved,
                candidate=entry,
                assignment_version=version,
                outcome=_outcome(version, ref_of(entry), "downloading"),
            )
        case Adopt(entry, version):
            return replace(
                moved,
                candidate=None,
                assignment_version=version,
                outcome=_outcome(version, ref_of(entry), "unchanged"),
            )
        case Swap(now_ms):
            assert candidate is not None  # only staged candidates are checked
            return replace(
                moved,
                active=ref_of(candidate),
                previous=state.active,
                watch_started_ms=now_ms,
                outcome=_outcome(
                    state.assignment_version, ref_of(candidate), "installed", "watching"
                ),
            )
        case Commit():
            return replace(
                moved,
                candidate=None,
                watch_started_ms=None,
                outcome=replace(state.outcome, reason="") if state.outcome else None,
            )
        case Rollback(reason):
            return replace(
                moved,
                active=state.previous,
                previous=None,
                candidate=None,
                watch_started_ms=None,
                outcome=_ended(state, "rolled_back", reason),
            )
        case Refuse(reason):
            return replace(moved, candidate=None, outcome=_ended(state, "refused", reason))
        case Fail(reason):
            return replace(moved, candidate=None, outcome=_ended(state, "failed", reason))
        case Unhealthy(reason):
            return replace(moved, candidate=None, outcome=_ended(state, "rolled_back", reason))
    return moved


def _outcome(
    version: int, ref: ModelRef, status: InstallStatus, reason: str = ""
) -> InstallOutcome:
    return InstallOutcome(version, ref, status, reason[:MAX_REASON])


def _ended(state: SlotState, status: InstallStatus, reason: str) -> InstallOutcome | None:
    """The outcome for the install ``state`` is in, ending with ``status``."""
    ref = ref_of(state.candidate) if state.candidate else state.active
    if ref is None:
        return None
    return _outcome(state.assignment_version, ref, status, reason)


def recover(state: SlotState, intact: Callable[[ModelRef], bool]) -> tuple[SlotState, list[str]]:
    """The state to resume from after a restart (module docstring), with notes on repairs.

    ``intact(ref)`` says whether the package of ``ref`` is on disk with its sha256.
    """
    notes: list[str] = []
    match state.state:
        case "verifying":
            state = step(state, Fail("interrupted: restarted while verifying"))
        case "checking":
            state = step(state, Unhealthy("model_unhealthy: restarted during its health check"))
        case "watching":
            state = step(state, Rollback("model_unhealthy: restarted while being watched"))
    if state.previous is not None and not intact(state.previous):
        notes.append(f"previous package {state.previous.sha256[:12]} missing or corrupt")
        state = replace(state, previous=None)
    if state.active is not None and not intact(state.active):
        notes.append(f"active package {state.active.sha256[:12]} missing or corrupt")
        state = replace(state, active=state.previous, previous=None)
    return state, notes


__all__ = [
    "TRANSITIONS",
    "Adopt",
    "Assign",
    "Check",
    "Commit",
    "Downloaded",
    "Event",
    "Fail",
    "IllegalTransition",
    "InstallState",
    "Refuse",
    "Rollback",
    "SlotState",
    "Swap",
    "Unhealthy",
    "Verified",
    "recover",
    "ref_of",
    "step",
]
