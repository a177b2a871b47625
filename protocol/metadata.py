"""The trust documents: root, release list, assignment, heartbeat.

Four frozen dataclasses, each the payload of a DSSE envelope
(:class:`~protocol.documents.SignedDocument`) of its own kind, signed by one role:

- :class:`Root` (kind ``root``, role root): which keys, and how many of them, each role
  needs;
- :class:`ReleaseList` (``release``, role release, may be offline): every released model
  package, with its bytes' hash and length, release counter and compatibility ids;
- :class:`Assignment` (``assignment``, role rollout, online): "device D runs entry E of
  release list vN, whose payload hashes to S";
- :class:`Heartbeat` (``heartbeat``, role heartbeat, online, short-lived): "at
  ``issued_at``, release list vN (hash S) is current".

Times are integer milliseconds since the Unix epoch and a document is expired when
``now >= expires``. Documents hold ints and strings only, never floats, so their
canonical JSON (and its sha256) is one fixed byte string per value.

Round-trip law, for every document ``m``: ``parse(type(m), sign(m, signers)) == m``.

This module builds, signs and reads documents; it does not decide whether to trust
one. :mod:`protocol.trust` does, against the keys of a trusted root.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final, Literal, TypeVar

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from protocol import canonical, keys, schema
from protocol.documents import MAX_DOCUMENT_BYTES, SignedDocument, document_type, sign_document
from protocol.errors import Malformed, Oversize, WrongKind
from protocol.schema import check_name, check_range, check_sha256

ROLES: Final = ("root", "release", "rollout", "heartbeat")
MAX_ROLE_KEYS = 16  # a document carries at most 16 signatures (protocol.documents)
MAX_ENTRIES = 512
MAX_COMPAT_LEN = 4096
MAX_ROOT_CHAIN = 32  # root versions on fleet/root: how far a device can catch up at once
MAX_CHAIN_BYTES = MAX_ROOT_CHAIN * MAX_DOCUMENT_BYTES

Role = Literal["root", "release", "rollout", "heartbeat"]


def _check_time(value: int, what: str) -> None:
    check_range(value, what, 0)


@dataclass(frozen=True)
class KeySpec:
    """A public key as the root lists it: 64 lowercase hex digits of a raw Ed25519 key."""

    keytype: Literal["ed25519"]
    public: str

    def __post_init__(self) -> None:
        if not isinstance(self.public, str) or schema.HEX64.fullmatch(self.public) is None:
            raise Malformed("public key must be 64 lowercase hex digits")

    def key(self) -> Ed25519PublicKey:
        return keys.public_from_hex(self.public)

    @classmethod
    def of(cls, public: Ed25519PublicKey) -> KeySpec:
        return cls("ed25519", keys.public_hex(public))


@dataclass(frozen=True)
class RoleSpec:
    """The keys a role may sign with and how many distinct ones must sign."""

    keyids: tuple[str, ...]
    threshold: int

    def __post_init__(self) -> None:
        for keyid in self.keyids:
            check_sha256(keyid, "role keyid")
        if len(set(self.keyids)) != len(self.keyids):
            raise Malformed("a role lists a keyid twice")
        check_range(len(self.keyids), "keys in a role", 1, MAX_ROLE_KEYS)
        check_range(self.threshold, "threshold", 1, len(self.keyids))


@dataclass(frozen=True)
class Root:
    """The root of trust: every role's keys and threshold, versioned and expiring.

    Exactly the four roles of :data:`ROLES`; every key is listed under its own keyid
    (sha256 of the raw public key) and used by at least one role. A role may share a key
    with another: the payload type keeps their signatures apart.
    """

    version: int
    expires: int
    keys: dict[str, KeySpec]
    roles: dict[str, RoleSpec]

    def __post_init__(self) -> None:
        check_range(self.version, "root version", 1)
        _check_time(self.expires, "root expires")
        if set(self.roles) != set(ROLES):
            raise Malformed(f"root must define exactly the roles {', '.join(ROLES)}")
        for keyid, spec in self.keys.items():
            if keys.keyid(spec.key()) != keyid:
                raise Malformed(f"key listed as {keyid[:16]} has another keyid")
        used = {k for spec in self.roles.values() for k in spec.keyids}
        if not used <= self.keys.keys():
            raise Malformed(f"a role names unknown key {sorted(used - self.keys.keys())[0][:16]}")
        if used != self.keys.keys():
            raise Malformed("root lists a key that no role uses")

    def role_keys(self, role: Role) -> dict[str, Ed25519PublicKey]:
        """The keys ``role`` may sign with, by keyid (what ``verify_threshold`` expects)."""
        return {k: self.keys[k].key() for k in self.roles[role].keyids}

    def threshold(self, role: Role) -> int:
        return self.roles[role].threshold


def make_root(
    *,
    version: int,
    expires: int,
    roles: Mapping[str, tuple[Sequence[Ed25519PublicKey], int]],
) -> Root:
    """Build a root from public keys: ``roles[role] = (keys, threshold)``.

    Raises:
        Malformed: a role missing or extra, or a threshold the keys cannot meet.
    """
    return Root(
        version=version,
        expires=expires,
        keys={keys.keyid(k): KeySpec.of(k) for pubs, _ in roles.values() for k in pubs},
        roles={
            role: RoleSpec(tuple(keys.keyid(k) for k in pubs), threshold)
            for role, (pubs, threshold) in roles.items()
        },
    )


@dataclass(frozen=True)
class Compat:
    """Compatibility ids a runtime compares with its own before activating a model.

    ``opset`` is the model's ONNX default-domain opset; ``io_signature`` is
    :meth:`protocol.manifest.ModelManifest.io_signature`.
    """

    opset: int
    io_signature: str

    def __post_init__(self) -> None:
        check_range(self.opset, "opset", 1, 1000)
        if not 0 < len(self.io_signature) <= MAX_COMPAT_LEN:
            raise Malformed(f"io_signature must be 1-{MAX_COMPAT_LEN} characters")


@dataclass(frozen=True)
class ReleaseEntry:
    """One released model package (:mod:`protocol.package`), pinned by hash and length.

    ``release_counter`` orders every release ever made: a device never installs an entry
    with a counter below the one it runs (Uptane's release counter). Rolling a model back
    means releasing the old bytes again, under a new counter.
    """

    name: str
    version: int
    release_counter: int
    sha256: str
    length: int
    compat: Compat

    def __post_init__(self) -> None:
        check_name(self.name, "model name")
        check_range(self.version, "model version", 1)
        check_range(self.release_counter, "release_counter", 1)
        check_sha256(self.sha256, "package sha256")
        check_range(self.length, "package length", 1)


@dataclass(frozen=True)
class ReleaseList:
    """Every model the release role (possibly offline) let out, by increasing counter.

    Entries are sorted by strictly increasing ``release_counter`` (so no two share one)
    and no two share a ``(name, version)``. ``min_counter`` is the rollback floor: a
    device refuses any entry whose counter is below the highest floor it has seen, so the
    release role (a human with the offline key) decides which old releases may never run
    again, while the online rollout role can still move devices back to any release at or
    above the floor (a rollback is a new assignment pointing at an older release).
    """

    version: int
    expires: int
    entries: tuple[ReleaseEntry, ...]
    min_counter: int = 0

    def __post_init__(self) -> None:
        check_range(self.version, "release list version", 1)
        _check_time(self.expires, "release list expires")
        check_range(len(self.entries), "entries", 0, MAX_ENTRIES)
        check_range(self.min_counter, "min_counter", 0)
        counters = [e.release_counter for e in self.entries]
        if any(b <= a for a, b in itertools.pairwise(counters)):
            raise Malformed("release counters must strictly increase along the list")
        if len({(e.name, e.version) for e in self.entries}) != len(self.entries):
            raise Malformed("a (name, version) is released twice")


@dataclass(frozen=True)
class Assignment:
    """What the rollout role (online) wants one device to run.

    ``release_version`` and ``release_sha256`` name the release list the choice was made
    from (sha256 of its payload, :func:`payload_sha256`); ``entry`` is copied from it.
    A rollback is a new assignment, with a higher ``version``, never an old one replayed.
    """

    device_id: str
    version: int
    expires: int
    release_version: int
    release_sha256: str
    entry: ReleaseEntry

    def __post_init__(self) -> None:
        check_name(self.device_id, "device_id")
        check_range(self.version, "assignment version", 1)
        _check_time(self.expires, "assignment expires")
        check_range(self.release_version, "release_version", 1)
        check_sha256(self.release_sha256, "release_sha256")


@dataclass(frozen=True)
class Heartbeat:
    """The hub's short-lived word that ``release_version`` (sha ``release_sha256``) is current.

    ``issued_at`` is hub time: a device never lets its idea of "now" fall below it.
    """

    version: int
    issued_at: int
    expires: int
    release_version: int
    release_sha256: str

    def __post_init__(self) -> None:
        check_range(self.version, "heartbeat version", 1)
        _check_time(self.issued_at, "issued_at")
        check_range(self.expires, "heartbeat expires", self.issued_at + 1)
        check_range(self.release_version, "release_version", 1)
        check_sha256(self.release_sha256, "release_sha256")


Meta = Root | ReleaseList | Assignment | Heartbeat
M = TypeVar("M", bound=Meta)

KIND: Final[Mapping[type, str]] = {
    Root: "root",
    ReleaseList: "release",
    Assignment: "assignment",
    Heartbeat: "heartbeat",
}
ROLE: Final[Mapping[type, Role]] = {
    Root: "root",
    ReleaseList: "release",
    Assignment: "rollout",
    Heartbeat: "heartbeat",
}


def sign(meta: Meta, signers: Iterable[Ed25519PrivateKey]) -> SignedDocument:
    """``meta`` as a DSSE envelope of its kind, signed by every key in ``signers``.

    With no signers the envelope carries no signature: a pending document for an
    offline key to sign (:func:`protocol.documents.add_signature`).
    """
    return sign_document(schema.to_json(meta), KIND[type(meta)], signers)


def parse(cls: type[M], doc: SignedDocument) -> M:
    """Read a document's payload WITHOUT verifying any signature.

    For the hub reading its own documents and for :mod:`protocol.trust` after it has
    verified the signatures. The payload must be canonical JSON, so one value has
    exactly one payload (and one :func:`payload_sha256`).

    Raises:
        WrongKind: the envelope's payload type is not ``cls``'s kind.
        Malformed: the payload is not base64 canonical JSON of a valid ``cls``.
        NonFinite: a NaN or infinite number in the payload.
    """
    kind = KIND[cls]
    if doc.payloadType != document_type(kind):
        raise WrongKind(f"{doc.payloadType[:80]!r} presented as {kind}")
    body = doc.payload_bytes()
    values = canonical.loads(body)
    if canonical.dumps(values) != body:
        raise Malformed(f"{kind} payload is not canonical JSON")
    return schema.from_json(cls, values, path=kind)


def payload_sha256(doc: SignedDocument) -> str:
    """sha256 (hex) of the document's payload bytes: what assignments and heartbeats pin.

    It covers the content, not the signatures, so re-signing with a new key keeps it.

    Raises:
        Malformed: the payload is not base64.
    """
    return hashlib.sha256(doc.payload_bytes()).hexdigest()


def encode_root_chain(docs: Sequence[SignedDocument]) -> bytes:
    """The ``fleet/root`` payload: canonical JSON list of the last ``MAX_ROOT_CHAIN`` roots.

    Oldest first, so a device N versions behind walks forward through it (TUF's
    one-step-at-a-time root update) without asking for anything.
    """
    return canonical.dumps([schema.to_json(doc) for doc in docs[-MAX_ROOT_CHAIN:]])


def decode_root_chain(payload: bytes) -> list[SignedDocument]:
    """Read a ``fleet/root`` payload; signatures are :func:`protocol.trust.update_root`'s job.

    Raises:
        Oversize: longer than :data:`MAX_CHAIN_BYTES`, or more than ``MAX_ROOT_CHAIN``
            documents.
        Malformed: not a JSON list of DSSE envelopes.
    """
    if len(payload) > MAX_CHAIN_BYTES:
        raise Oversize(f"root chain of {len(payload)} bytes exceeds {MAX_CHAIN_BYTES}")
    values = canonical.loads(payload)
    if not isinstance(values, list):
        raise Malformed("the root chain is not a list")
    if len(values) > MAX_ROOT_CHAIN:
        raise Oversize(f"root chain of {len(values)} documents")
    return [schema.from_json(SignedDocument, v, path=f"root[{i}]") for i, v in enumerate(values)]
