"""The device's trust core: which root, release list, heartbeat and assignment to believe.

Shaped like python-tuf's ``TrustedMetadataSet``: pure functions from a
:class:`TrustedState` and a document to a new ``TrustedState`` (or an error, and then
the caller keeps the old state untouched). The agent persists the state after each
accepted step (:meth:`TrustedState.to_bytes`, atomically) and installs nothing the core
has not accepted. Every check of expiry takes ``now`` (ms), captured once per update
cycle, and first lifts it to the time floor (:func:`effective_now`, threat-model T15), so
a caller passing the raw system clock still cannot revive expired documents.

Rules, in the order they are checked:

* **root** (:func:`update_root`): the chain is walked from the trusted version N to
  N+1, N+2... (at most :data:`MAX_ROOT_ROTATIONS` steps per call). Step N+1 must be
  signed by a threshold of root-role keys of root N *and* of its own root role. Roots at
  or below N are history and ignored; a chain holding versions above N but not N+1 is a
  :class:`VersionGap`. Root expiry is not checked here (intermediate roots may have
  expired); everything that later uses the root is. When a step changes the keyids of a
  role, the state that role vouched for is dropped (fast-forward recovery, T7): rollout
  → the assignment high-water mark; heartbeat → the trusted heartbeat; release → the
  trusted release list. ``counter_floor`` and ``time_floor`` are never reset.
* **release list** (:func:`update_release_list`): trusted root unexpired; release-role
  threshold; payload type and schema; version not below the trusted one (``Rollback``),
  and an equal version is accepted only with identical bytes (unchanged; different
  bytes: :class:`EqualVersionConflict`, the trusted one is kept); unexpired; not older
  than, nor different at the same version from, what the trusted heartbeat pins
  (``MixAndMatch``). A list *newer* than the heartbeat's pin is accepted: it is signed by
  the release role, and the next heartbeat catches up. Its rollback floor
  (``min_counter``) may not be below the floor already trusted (``Rollback``); the
  device's ``counter_floor`` rises to it.
* **heartbeat** (:func:`update_heartbeat`): trusted root unexpired; heartbeat-role
  threshold; version monotonic (equal: as for release lists); unexpired; if it pins the
  trusted release list's version it must pin the same sha256 (``MixAndMatch``). It
  raises the time floor to ``issued_at``.
* **assignment** (:func:`verify_assignment`): trusted root unexpired; rollout-role
  threshold; bound to this device (``DeviceMismatch``); version not below the
  high-water mark (equal: ``"unchanged"`` with identical bytes); unexpired; built on a
  release list no newer than the trusted one (``MixAndMatch``: the device must see that
  list first), and at the trusted version with the trusted payload sha256; the trusted
  list is unexpired; a fresh heartbeat (``Expired``: freeze suspected, T3) that pins no
  newer release list than the trusted one (``MixAndMatch``: a stale broker); the entry is
  in the *trusted* release list exactly as signed by the release role (``NotReleased``: a
  compromised online key cannot ship unreleased or withdrawn bytes, T1c); its release
  counter is not below the rollback floor (``Rollback``).
* **artifact** (:func:`check_artifact`, :func:`check_compat`): length, then sha256,
  before anything parses the bytes; then compatibility ids against the runtime.

Why an assignment may rest on an *older* release list than the trusted one: the
entry is checked against the newer, trusted list, so nothing unreleased can pass, and
the hub need not re-sign every device's assignment each time a model is released. Why
rollbacks are bounded by a floor rather than by the installed counter: a rollback is a
new assignment pointing at an older release (docs/decisions.md), which a strictly
increasing installed counter would forbid; the floor, signed by the release role, keeps
the Uptane guarantee where it matters (a compromised online key cannot bring back a
release the humans holding the release key have ruled out). See docs/decisions.md.

What the hub must do in return: keep heartbeats' ``issued_at`` honest, since a device's
time floor never goes down.

What this module does not do: fetch, store or persist anything, read a clock, parse
ONNX, or decide *when* to install. It trusts the ``TrustedState`` it is given (the
agent's own disk). A compromise of the offline release key is not recoverable here: a
release counter it signed stays the floor (Uptane's stance; reprovision out of band).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal

from protocol import canonical, metadata, schema
from protocol.documents import SignedDocument, verify_threshold
from protocol.errors import (
    ContentMismatch,
    DeviceMismatch,
    EqualVersionConflict,
    Expired,
    Incompatible,
    Malformed,
    MixAndMatch,
    NotReleased,
    ProtocolError,
    Rollback,
    VersionGap,
)
from protocol.messages import TrustVersions
from protocol.metadata import Assignment, Heartbeat, M, ReleaseEntry, ReleaseList, Root
from protocol.schema import check_range, check_sha256

MAX_ROOT_ROTATIONS = metadata.MAX_ROOT_CHAIN


@dataclass(frozen=True)
class TrustedState:
    """Everything a device trusts, as plain values it can persist and reload.

    ``release``/``release_sha256`` and ``heartbeat`` are ``None`` until one is accepted
    (or after the keys that signed them are rotated out); the heartbeat's version is its
    high-water mark. ``assignment_version`` is the highest assignment accepted (0: none,
    or reset by a rollout key rotation), ``counter_floor`` the highest rollback floor seen
    in a trusted release list and ``time_floor`` the latest hub time seen in a heartbeat:
    these two only ever grow.

    Round-trip law: ``TrustedState.from_bytes(s.to_bytes()) == s``.
    """

    root: Root
    release: ReleaseList | None = None
    release_sha256: str | None = None
    heartbeat: Heartbeat | None = None
    assignment_version: int = 0
    assignment_sha256: str | None = None
    counter_floor: int = 0
    time_floor: int = 0
    shadow_version: int = 0
    shadow_sha256: str | None = None
    """The highest *shadow* assignment accepted (``DesiredState.shadow``): its own mark, so
    a served assignment and a shadow one never refuse each other as rollbacks."""

    def __post_init__(self) -> None:
        if (self.release is None) != (self.release_sha256 is None):
            raise Malformed("a release list and its sha256 go together")
        if self.release_sha256 is not None:
            check_sha256(self.release_sha256, "release_sha256")
        check_range(self.assignment_version, "assignment_version", 0)
        if (self.assignment_version == 0) != (self.assignment_sha256 is None):
            raise Malformed("an assignment version and its sha256 go together")
        if self.assignment_sha256 is not None:
            check_sha256(self.assignment_sha256, "assignment_sha256")
        check_range(self.shadow_version, "shadow_version", 0)
        if (self.shadow_version == 0) != (self.shadow_sha256 is None):
            raise Malformed("a shadow version and its sha256 go together")
        if self.shadow_sha256 is not None:
            check_sha256(self.shadow_sha256, "shadow_sha256")
        check_range(self.counter_floor, "counter_floor", 0)
        check_range(self.time_floor, "time_floor", 0)

    @classmethod
    def initial(
        cls, root_doc: SignedDocument, *, counter_floor: int = 0, time_floor: int = 0
    ) -> TrustedState:
        """The state of a freshly provisioned device, from its pinned root.

        ``counter_floor`` and ``time_floor`` let a factory image start above zero (the
        counter of the model it ships with, the build time).

        Raises:
            WrongKind: not a root document.
            ThresholdNotMet: not signed by a threshold of its own root-role keys.
            Malformed: not a valid root.
        """
        root = metadata.parse(Root, root_doc)
        verify_threshold(root_doc, "root", root.role_keys("root"), root.threshold("root"))
        return cls(root, counter_floor=counter_floor, time_floor=time_floor)

    def to_bytes(self) -> bytes:
        """Canonical JSON, for the agent to write atomically."""
        return canonical.dumps(schema.to_json(self))

    @classmethod
    def from_bytes(cls, data: bytes) -> TrustedState:
        """Reload a persisted state.

        Raises:
            Malformed: not a valid persisted state.
        """
        return schema.from_json(cls, canonical.loads(data), path="trusted")

    def versions(self) -> TrustVersions:
        """The high-water marks a device reports (0 = none)."""
        return TrustVersions(
            root=self.root.version,
            release=self.release.version if self.release else 0,
            assignment=self.assignment_version,
            heartbeat=self.heartbeat.version if self.heartbeat else 0,
        )


@dataclass(frozen=True)
class AssignmentVerdict:
    """An accepted assignment. ``"unchanged"``: the one already accepted, seen again."""

    status: Literal["new", "unchanged"]
    assignment: Assignment
    state: TrustedState


def effective_now(state: TrustedState, system_now: int) -> int:
    """The cycle's ``now``: the system clock, never below hub time already attested (T15)."""
    return max(system_now, state.time_floor)


def _verified(cls: type[M], doc: SignedDocument, root: Root) -> M:
    role = metadata.ROLE[cls]
    verify_threshold(doc, metadata.KIND[cls], root.role_keys(role), root.threshold(role))
    return metadata.parse(cls, doc)


def _check_root_fresh(state: TrustedState, now: int) -> None:
    if now >= state.root.expires:
        raise Expired(f"trusted root v{state.root.version} has expired")


def update_root(state: TrustedState, chain: Sequence[SignedDocument]) -> TrustedState:
    """Walk the trusted root forward along ``chain`` (any order, history included).

    Applies every step it can verify, up to :data:`MAX_ROOT_ROTATIONS`; it raises only
    when it cannot take even the first one, so a bad document after good ones is
    reported by the next call, from the new root. Two candidates for the same version:
    the first that verifies wins.

    Raises:
        ThresholdNotMet: the next root is not signed by a threshold of the trusted root's
            root-role keys, or of its own.
        VersionGap: the chain holds newer roots but not the next one.
        WrongKind: a document in the chain is not a root.
        Malformed: a document in the chain is not a valid root.
    """
    unreadable: list[ProtocolError] = []
    candidates: dict[int, list[tuple[SignedDocument, Root]]] = {}
    for doc in chain:
        try:
            root = metadata.parse(Root, doc)
        except ProtocolError as e:
            unreadable.append(e)
            continue
        candidates.setdefault(root.version, []).append((doc, root))
    current, refused = state, None
    for _ in range(MAX_ROOT_ROTATIONS):
        step = candidates.get(current.root.version + 1, [])
        if not step:
            break
        try:
            current = _step(current, step)
        except ProtocolError as e:
            refused = e
            break
    if current is not state:
        return current
    if refused is not None:
        raise refused
    newest = max(candidates, default=0)
    if newest > state.root.version:
        raise VersionGap(f"root v{state.root.version + 1} is missing; chain goes to v{newest}")
    if unreadable:
        raise unreadable[0]
    return state


def _step(state: TrustedState, step: list[tuple[SignedDocument, Root]]) -> TrustedState:
    old = state.root
    errors: list[ProtocolError] = []
    for doc, new in step:
        try:
            verify_threshold(doc, "root", old.role_keys("root"), old.threshold("root"))
            verify_threshold(doc, "root", new.role_keys("root"), new.threshold("root"))
        except ProtocolError as e:
            errors.append(e)
            continue
        return _rotate(state, new)
    raise errors[0]


def _rotate(state: TrustedState, new: Root) -> TrustedState:
    """Adopt ``new``, dropping what rotated-out keys vouched for (fast-forward recovery)."""

    def rotated(role: metadata.Role) -> bool:
        return set(state.root.roles[role].keyids) != set(new.roles[role].keyids)

    result = replace(state, root=new)
    if rotated("release"):
        result = replace(result, release=None, release_sha256=None)
    if rotated("rollout"):
        result = replace(
            result,
            assignment_version=0,
            assignment_sha256=None,
            shadow_version=0,
            shadow_sha256=None,
        )
    if rotated("heartbeat"):
        result = replace(result, heartbeat=None)
    return result


def update_release_list(state: TrustedState, doc: SignedDocument, now: int) -> TrustedState:
    """Trust a new release list, or return ``state`` unchanged for the same one again.

    Raises:
        Expired: the trusted root or the release list has expired.
        WrongKind: not a release list.
        ThresholdNotMet: too few release-role signatures.
        Malformed: not a valid release list.
        Rollback: older than the trusted release list, or lowering the rollback floor.
        EqualVersionConflict: the trusted version, with different content.
        MixAndMatch: older than, or different from, the release list the heartbeat pins.
    """
    now = effective_now(state, now)
    _check_root_fresh(state, now)
    new = _verified(ReleaseList, doc, state.root)
    sha = metadata.payload_sha256(doc)
    if state.release is not None:
        if new.version < state.release.version:
            raise Rollback(f"release list v{new.version} after v{state.release.version}")
        if new.version == state.release.version:
            if sha == state.release_sha256:
                return state
            raise EqualVersionConflict(f"release list v{new.version} with other content")
    if new.min_counter < state.counter_floor:
        raise Rollback(f"release list lowers the rollback floor below {state.counter_floor}")
    if now >= new.expires:
        raise Expired(f"release list v{new.version} has expired")
    beat = state.heartbeat
    if beat is not None and (
        new.version < beat.release_version
        or (new.version == beat.release_version and sha != beat.release_sha256)
    ):
        raise MixAndMatch(
            f"heartbeat v{beat.version} pins release list v{beat.release_version} "
            f"({beat.release_sha256[:12]}), not this v{new.version} ({sha[:12]})"
        )
    floor = max(state.counter_floor, new.min_counter)
    return replace(state, release=new, release_sha256=sha, counter_floor=floor)


def update_heartbeat(state: TrustedState, doc: SignedDocument, now: int) -> TrustedState:
    """Trust a newer heartbeat and raise the time floor to its ``issued_at``.

    Raises:
        Expired: the trusted root or the heartbeat has expired.
        WrongKind: not a heartbeat.
        ThresholdNotMet: too few heartbeat-role signatures.
        Malformed: not a valid heartbeat.
        Rollback: older than the trusted heartbeat.
        EqualVersionConflict: the trusted version, with different content.
        MixAndMatch: it pins the trusted release list's version with another sha256.
    """
    now = effective_now(state, now)
    _check_root_fresh(state, now)
    new = _verified(Heartbeat, doc, state.root)
    if state.heartbeat is not None:
        if new.version < state.heartbeat.version:
            raise Rollback(f"heartbeat v{new.version} after v{state.heartbeat.version}")
        if new.version == state.heartbeat.version:
            if new == state.heartbeat:
                return state
            raise EqualVersionConflict(f"heartbeat v{new.version} with other content")
    if now >= new.expires:
        raise Expired(f"heartbeat v{new.version} has expired")
    release = state.release
    if (
        release is not None
        and new.release_version == release.version
        and new.release_sha256 != state.release_sha256
    ):
        raise MixAndMatch(f"heartbeat pins release list v{release.version} with another sha256")
    return replace(state, heartbeat=new, time_floor=max(state.time_floor, new.issued_at))


def freeze_suspected(state: TrustedState, now: int) -> bool:
    """True when no unexpired heartbeat is trusted: someone may be replaying stale state (T3)."""
    beat = state.heartbeat
    return beat is None or effective_now(state, now) >= beat.expires


def verify_assignment(
    state: TrustedState, doc: SignedDocument, now: int, *, device_id: str
) -> AssignmentVerdict:
    """Decide whether this device may act on an assignment; raise the high-water mark.

    Raises:
        Expired: the trusted root, the assignment, or the release list has expired, or
            no fresh heartbeat is trusted (freeze suspected).
        WrongKind: not an assignment.
        ThresholdNotMet: too few rollout-role signatures.
        Malformed: not a valid assignment.
        DeviceMismatch: addressed to another device.
        Rollback: older than the accepted assignment, or a release counter below the
            rollback floor.
        EqualVersionConflict: the accepted version, with different content.
        MixAndMatch: built on a newer release list than the trusted one, or on the
            trusted version with other content, or the heartbeat pins a newer list.
        NotReleased: the entry is not in the trusted release list exactly.
    """
    new, sha, unchanged = _checked(
        state, doc, now, device_id, state.assignment_version, state.assignment_sha256, "assignment"
    )
    if unchanged:
        return AssignmentVerdict("unchanged", new, state)
    raised = replace(state, assignment_version=new.version, assignment_sha256=sha)
    return AssignmentVerdict("new", new, raised)


def verify_shadow(
    state: TrustedState, doc: SignedDocument, now: int, *, device_id: str
) -> AssignmentVerdict:
    """Decide whether this device may run an assignment as a *shadow* (beside the served
    model, never served): every rule of :func:`verify_assignment`, against the shadow's
    own high-water mark (``shadow_version``), which it raises.

    Raises: as :func:`verify_assignment`.
    """
    new, sha, unchanged = _checked(
        state, doc, now, device_id, state.shadow_version, state.shadow_sha256, "shadow assignment"
    )
    if unchanged:
        return AssignmentVerdict("unchanged", new, state)
    return AssignmentVerdict(
        "new", new, replace(state, shadow_version=new.version, shadow_sha256=sha)
    )


def _checked(
    state: TrustedState,
    doc: SignedDocument,
    now: int,
    device_id: str,
    mark: int,
    mark_sha256: str | None,
    what: str,
) -> tuple[Assignment, str, bool]:
    """The assignment rules against the high-water mark ``mark``; the assignment, its
    payload sha256, and whether it is the one accepted at ``mark``."""
    now = effective_now(state, now)
    _check_root_fresh(state, now)
    new = _verified(Assignment, doc, state.root)
    sha = metadata.payload_sha256(doc)
    if new.device_id != device_id:
        raise DeviceMismatch(f"{what} for {new.device_id}, this is {device_id}")
    if new.version < mark:
        raise Rollback(f"{what} v{new.version} after v{mark}")
    unchanged = new.version == mark
    if unchanged and sha != mark_sha256:
        raise EqualVersionConflict(f"{what} v{new.version} with other content")
    if now >= new.expires:
        raise Expired(f"{what} v{new.version} has expired")
    release = state.release
    if (
        release is None
        or new.release_version > release.version
        or (new.release_version == release.version and new.release_sha256 != state.release_sha256)
    ):
        trusted = f"v{release.version}" if release else "none"
        raise MixAndMatch(
            f"{what} built on release list v{new.release_version}, trusted is {trusted}"
        )
    if now >= release.expires:
        raise Expired(f"release list v{release.version} has expired")
    beat = state.heartbeat
    if beat is None or now >= beat.expires:
        raise Expired("no fresh heartbeat: freeze suspected")
    if beat.release_version > release.version:
        raise MixAndMatch(f"heartbeat pins release list v{beat.release_version}: a newer one")
    if new.entry not in release.entries:
        raise NotReleased(f"{new.entry.name} v{new.entry.version} is not in the release list")
    if new.entry.release_counter < state.counter_floor:
        raise Rollback(
            f"release counter {new.entry.release_counter} below the floor {state.counter_floor}"
        )
    return new, sha, unchanged


def check_artifact(entry: ReleaseEntry, data: bytes) -> None:
    """Check downloaded bytes against the signed entry: length first, then sha256.

    Call it before anything parses ``data`` (T1a, B21).

    Raises:
        ContentMismatch: the length or the sha256 differ.
    """
    if len(data) != entry.length:
        raise ContentMismatch(f"{len(data)} bytes where the release says {entry.length}")
    if hashlib.sha256(data).hexdigest() != entry.sha256:
        raise ContentMismatch(f"sha256 of {entry.name} v{entry.version} differs from release")


def check_compat(entry: ReleaseEntry, *, opset_range: tuple[int, int], io_signature: str) -> None:
    """Check the entry's compatibility ids against what the runtime serves (T9b).

    ``opset_range`` is inclusive; ``io_signature`` is the runtime's, compared exactly.

    Raises:
        Incompatible: an opset outside the range or another I/O signature.
    """
    low, high = opset_range
    if not low <= entry.compat.opset <= high:
        raise Incompatible(f"opset {entry.compat.opset} outside {low}-{high}")
    if entry.compat.io_signature != io_signature:
        raise Incompatible("I/O signature differs from the runtime's")
