"""The model slots on disk: which package is active, which one it replaced, and the install.

Layout under the slots directory (``<state_dir>/models``)::

    slots.json              SlotState: install state, active and previous refs, candidate
    packages/<sha256>.pkg   verified packages, named by their hash and never by a name
                            from a message (THREATS T17, B24)
    download/               the download in progress (agent/download.py)

There are two slots: *active* (serving) and *standby* (``previous`` after a swap, the
candidate during an install). A swap is one atomic rewrite of ``slots.json`` (temp file,
fsync, rename, directory fsync: :func:`write_atomic`), so after a power cut the file
names either the old active package or the new one, never a mix (B33).

The install is a state machine written as a table (:data:`TRANSITIONS`, h11-style):
events are small frozen dataclasses, :func:`step` moves a :class:`SlotState` and raises
:class:`~agent.errors.IllegalTransition` for a move the table does not hold::

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
device, so it is counted against the candidate. Then every named package is hashed: an
active package that is missing or corrupt is replaced by the previous one; packages no
slot names and stray temporary files are deleted.

What this module does not do: decide what to install, verify signatures, or parse a
package (agent/updater.py does, in that order, before anything is stored here).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

from agent.errors import IllegalTransition, StateCorrupt
from edgefleet.files import TEMP_SUFFIX, file_sha256, fsync_dir, write_atomic
from protocol import canonical, schema
from protocol.errors import ProtocolError
from protocol.messages import MAX_REASON, InstallOutcome, InstallStatus, ModelRef
from protocol.metadata import ReleaseEntry

logger = logging.getLogger(__name__)

SLOTS_FILE = "slots.json"
PACKAGES = "packages"
DOWNLOADS = "download"

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


# ---------------------------------------------------------------- files


class Slots:
    """The slot directory: load and repair on construction, then one persisted step at a time.

    Not thread-safe: the model manager serialises every call.

    Raises (constructor):
        StateCorrupt: ``slots.json`` exists but is not a valid slot state.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.packages = root / PACKAGES
        self.downloads = root / DOWNLOADS
        for directory in (root, self.packages, self.downloads):
            directory.mkdir(parents=True, exist_ok=True)
        for stray in (*root.glob(f"*{TEMP_SUFFIX}"), *self.packages.glob(f"*{TEMP_SUFFIX}")):
            stray.unlink()
        loaded = self._load()
        self._state, self.boot_notes = recover(loaded, self.intact)
        for note in self.boot_notes:
            logger.error("model slots: %s", note)
        if self._state != loaded:
            write_atomic(self.root / SLOTS_FILE, self._state.to_bytes())
        self.collect_garbage()

    @property
    def state(self) -> SlotState:
        return self._state

    def apply(self, event: Event) -> SlotState:
        """Take one step and persist it before returning.

        Raises:
            IllegalTransition: the table forbids ``event`` now; nothing is written.
        """
        new = step(self._state, event)
        write_atomic(self.root / SLOTS_FILE, new.to_bytes())
        self._state = new
        logger.info("model slots: %s -> %s", type(event).__name__, new.state)
        return new

    def package_path(self, sha256: str) -> Path:
        schema.check_sha256(sha256, "package sha256")
        return self.packages / f"{sha256}.pkg"

    def intact(self, ref: ModelRef) -> bool:
        """True when the package of ``ref`` is stored and hashes to its sha256."""
        try:
            return file_sha256(self.package_path(ref.sha256)) == ref.sha256
        except OSError:
            return False

    def read(self, sha256: str) -> bytes:
        """The stored package bytes (the caller checks them against the release entry).

        Raises:
            OSError: not stored.
        """
        return self.package_path(sha256).read_bytes()

    def store(self, sha256: str, source: Path) -> None:
        """Move a verified file into ``packages/`` under its hash, durably."""
        os.replace(source, self.package_path(sha256))
        fsync_dir(self.packages)

    def collect_garbage(self) -> None:
        """Delete packages no slot names; downloads other than the candidate's."""
        s = self._state
        keep = {ref.sha256 for ref in (s.active, s.previous) if ref is not None}
        if s.candidate is not None:
            keep.add(s.candidate.sha256)
        for path in self.packages.glob("*.pkg"):
            if path.stem not in keep:
                path.unlink()
        downloading = s.candidate.sha256 if s.state == "downloading" and s.candidate else None
        for path in self.downloads.iterdir():
            if path.name.split(".")[0] != downloading:
                path.unlink()

    def _load(self) -> SlotState:
        path = self.root / SLOTS_FILE
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return SlotState()
        try:
            return SlotState.from_bytes(data)
        except ProtocolError as e:
            raise StateCorrupt(f"{path} is not a valid slot state: {e}") from e
