"""An in-memory hub and device for trust tests, after python-tuf's RepositorySimulator.

:class:`TrustSim` holds the role keys and one editable draft of every document, and
signs a draft whenever a test asks for the document. Tests publish a bad repository
state by editing a draft, exactly as python-tuf's tests do::

    sim = TrustSim()
    device = Device(sim)
    device.refresh()                        # root, heartbeat, release list v1
    device.install()                        # assignment v1: vision v1
    sim.assignment.version += 1
    sim.assignment.device_id = "dev-2"      # someone else's assignment
    with refused(device, DeviceMismatch):   # fails, and the trusted state is unchanged
        device.install()

A good state moves forward with :meth:`TrustSim.add_release`, :meth:`~TrustSim.assign`
(a new assignment on the current release list), :meth:`~TrustSim.beat` (a new
heartbeat pinning it) and :meth:`~TrustSim.rotate` (root N+1 with a fresh key for a
role); :meth:`~TrustSim.set_role` and ``publish_root(signers=...)`` build any root,
well or badly signed. :meth:`~TrustSim.desired` wraps the pair the hub retains for a
device.

:class:`Device` is the agent's update cycle in miniature: one ``now`` per cycle, and
its ``state`` changes only when a step is accepted, so a test compares whole states
before and after an attack. Nothing here touches the disk, the network or a real clock:
``sim.now`` is the hub's fake clock and ``device.skew`` sets the device's clock apart.
Keys are derived from fixed labels, so every run signs the same bytes.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Generic, TypeVar

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from protocol import keys, metadata, trust
from protocol.documents import SignedDocument
from protocol.messages import DesiredState, DeviceConfig
from protocol.metadata import (
    Assignment,
    Compat,
    Heartbeat,
    KeySpec,
    ReleaseEntry,
    ReleaseList,
    Role,
    RoleSpec,
    make_root,
)

T0 = 1_795_000_000_000  # 2026-11-18T08:53:20Z
MINUTE = 60_000
DAY = 86_400_000
YEAR = 365 * DAY
ROOT_TTL = YEAR
RELEASE_TTL = 90 * DAY
ASSIGNMENT_TTL = 7 * DAY
HEARTBEAT_TTL = 10 * MINUTE
COMPAT = Compat(opset=17, io_signature="in:x:float32[?,4];out:probs:float32[?,3]")

D = TypeVar("D")


def fixed_key(label: str) -> Ed25519PrivateKey:
    """A deterministic Ed25519 key for ``label``."""
    return Ed25519PrivateKey.from_private_bytes(hashlib.sha256(label.encode()).digest())


def artifact_bytes(name: str, version: int) -> bytes:
    """Stand-in package bytes, distinct per (name, version)."""
    return hashlib.sha256(f"{name}-{version}".encode()).digest() * 8


class Draft(Generic[D]):
    """A mutable copy of a frozen document: edit its fields, then :meth:`build` it.

    ``build`` runs the document's own validation, so a draft cannot sign an invalid one.
    """

    def __init__(self, value: D) -> None:
        fields = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}  # type: ignore[arg-type]
        object.__setattr__(self, "_cls", type(value))
        object.__setattr__(self, "_fields", fields)

    def __getattr__(self, name: str) -> Any:
        try:
            return self._fields[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name: str, value: Any) -> None:
        if name not in self._fields:
            raise AttributeError(f"{self._cls.__name__} has no field {name}")
        self._fields[name] = value

    def build(self) -> D:
        built: D = self._cls(**copy.deepcopy(self._fields))
        return built


class TrustSim:
    """The hub's side: role keys, the published root chain and the document drafts.

    Starts with root v1 (``root_keys`` root keys, ``root_threshold`` of them needed, one
    key per other role), release list v1 holding ``vision`` v1 (counter 1), an assignment
    v1 of it to ``device_id`` and heartbeat v1, all pinning release list v1.
    """

    def __init__(
        self,
        *,
        now: int = T0,
        device_id: str = "dev-1",
        root_keys: int = 1,
        root_threshold: int = 1,
    ) -> None:
        self.now = now
        self.device_id = device_id
        self._serial = 0
        self.signers: dict[Role, list[Ed25519PrivateKey]] = {
            "root": [self.new_key("root") for _ in range(root_keys)],
            "release": [self.new_key("release")],
            "rollout": [self.new_key("rollout")],
            "heartbeat": [self.new_key("heartbeat")],
        }
        thresholds = {"root": root_threshold, "release": 1, "rollout": 1, "heartbeat": 1}
        self.root = Draft(
            make_root(
                version=1,
                expires=now + ROOT_TTL,
                roles={
                    role: ([k.public_key() for k in signers], thresholds[role])
                    for role, signers in self.signers.items()
                },
            )
        )
        self.root_chain: list[SignedDocument] = []
        self._last_root_signers: list[Ed25519PrivateKey] = []
        self.publish_root()
        self.artifacts: dict[str, bytes] = {}
        first = self._entry("vision", 1, 1)
        self.release = Draft(ReleaseList(version=1, expires=now + RELEASE_TTL, entries=(first,)))
        self.heartbeat = Draft(Heartbeat(1, now, now + HEARTBEAT_TTL, *self._release_pin()))
        self.assignment = Draft(
            Assignment(device_id, 1, now + ASSIGNMENT_TTL, *self._release_pin(), entry=first)
        )

    # ------------------------------------------------------------------ keys and root

    def new_key(self, role: str) -> Ed25519PrivateKey:
        self._serial += 1
        return fixed_key(f"{role}-{self._serial}")

    def set_role(
        self, role: Role, signers: Sequence[Ed25519PrivateKey], threshold: int = 1
    ) -> None:
        """Make ``signers`` the role's keys in the root draft (not yet published)."""
        self.signers[role] = list(signers)
        roles = dict(self.root.roles)
        roles[role] = RoleSpec(tuple(keys.keyid(k.public_key()) for k in signers), threshold)
        known = {
            **self.root.keys,
            **{keys.keyid(k.public_key()): KeySpec.of(k.public_key()) for k in signers},
        }
        used = {k for spec in roles.values() for k in spec.keyids}
        self.root.roles = roles
        self.root.keys = {k: v for k, v in known.items() if k in used}

    def publish_root(self, signers: Sequence[Ed25519PrivateKey] | None = None) -> SignedDocument:
        """Sign the root draft and add it to the published chain.

        By default it is signed by the root keys of the previous published root and of
        this one (a rotation ceremony); pass ``signers`` to sign otherwise.
        """
        if signers is None:
            signers = _unique([*self._last_root_signers, *self.signers["root"]])
        doc = metadata.sign(self.root.build(), signers)
        self.root_chain.append(doc)
        self._last_root_signers = list(self.signers["root"])
        return doc

    def rotate(self, role: Role) -> SignedDocument:
        """Replace every key of ``role`` (same count and threshold); publish root N+1."""
        count, threshold = len(self.signers[role]), self.root.roles[role].threshold
        self.set_role(role, [self.new_key(role) for _ in range(count)], threshold)
        self.root.version += 1
        return self.publish_root()

    # ------------------------------------------------------------------ releases

    def _entry(self, name: str, version: int, counter: int) -> ReleaseEntry:
        data = artifact_bytes(name, version)
        sha = hashlib.sha256(data).hexdigest()
        self.artifacts[sha] = data
        return ReleaseEntry(name, version, counter, sha, len(data), COMPAT)

    def add_release(self, name: str = "vision", version: int | None = None) -> ReleaseEntry:
        """Append a release with the next counter and bump the release list version."""
        entries: tuple[ReleaseEntry, ...] = self.release.entries
        if version is None:
            version = 1 + max((e.version for e in entries if e.name == name), default=0)
        counter = 1 + max((e.release_counter for e in entries), default=0)
        entry = self._entry(name, version, counter)
        self.release.entries = (*entries, entry)
        self.release.version += 1
        return entry

    def _release_pin(self) -> tuple[int, str]:
        return self.release.version, metadata.payload_sha256(self.release_doc())

    def assign(self, entry: ReleaseEntry | None = None) -> None:
        """A new assignment (version + 1) of ``entry``, built on the current release list."""
        self.assignment.version += 1
        self.assignment.expires = self.now + ASSIGNMENT_TTL
        self.assignment.release_version, self.assignment.release_sha256 = self._release_pin()
        if entry is not None:
            self.assignment.entry = entry

    def beat(self) -> None:
        """A new heartbeat (version + 1), issued now, pinning the current release list."""
        self.heartbeat.version += 1
        self.heartbeat.issued_at = self.now
        self.heartbeat.expires = self.now + HEARTBEAT_TTL
        self.heartbeat.release_version, self.heartbeat.release_sha256 = self._release_pin()

    # ------------------------------------------------------------------ documents

    def release_doc(self) -> SignedDocument:
        return metadata.sign(self.release.build(), self.signers["release"])

    def assignment_doc(self) -> SignedDocument:
        return metadata.sign(self.assignment.build(), self.signers["rollout"])

    def heartbeat_doc(self) -> SignedDocument:
        return metadata.sign(self.heartbeat.build(), self.signers["heartbeat"])

    def desired(self, config: DeviceConfig | None = None) -> DesiredState:
        """The device's retained desired state: the assignment with its release list."""
        return DesiredState(
            config=config or DeviceConfig(),
            assignment=self.assignment_doc(),
            release_list=self.release_doc(),
        )


class Device:
    """The agent's cycle: ``state`` changes only when a step is accepted.

    ``skew`` (ms) sets the device's clock apart from the hub's ``sim.now``.
    """

    def __init__(self, sim: TrustSim, *, skew: int = 0) -> None:
        self.sim = sim
        self.skew = skew
        self.state = trust.TrustedState.initial(sim.root_chain[0])

    @property
    def now(self) -> int:
        return trust.effective_now(self.state, self.sim.now + self.skew)

    def refresh(self) -> None:
        """Root chain, then heartbeat, then release list, as the agent reads them."""
        now = self.now
        self.state = trust.update_root(self.state, self.sim.root_chain)
        self.state = trust.update_heartbeat(self.state, self.sim.heartbeat_doc(), now)
        self.state = trust.update_release_list(self.state, self.sim.release_doc(), now)

    def install(self, doc: SignedDocument | None = None) -> trust.AssignmentVerdict:
        """Verify the assignment and check the bytes; all or nothing."""
        doc = doc if doc is not None else self.sim.assignment_doc()
        verdict = trust.verify_assignment(self.state, doc, self.now, device_id=self.sim.device_id)
        entry = verdict.assignment.entry
        trust.check_artifact(entry, self.sim.artifacts.get(entry.sha256, b""))
        self.state = verdict.state
        return verdict


@contextmanager
def refused(device: Device, error: type[Exception]) -> Iterator[pytest.ExceptionInfo[Exception]]:
    """Expect ``error`` inside the block, and the device's trusted state byte-identical after.

    python-tuf's ``_assert_content_equals``: an attack must fail *and* change nothing.
    """
    before = device.state.to_bytes()
    with pytest.raises(error) as info:
        yield info
    assert device.state.to_bytes() == before


def _unique(signers: Sequence[Ed25519PrivateKey]) -> list[Ed25519PrivateKey]:
    seen: dict[str, Ed25519PrivateKey] = {}
    for key in signers:
        seen.setdefault(keys.keyid(key.public_key()), key)
    return list(seen.values())
