"""The hub's key ring: role keys and the signed root chain, in one directory.

Layout (``HubSettings.keys_dir``)::

    root-1.pem ... root-N.pem        root keys: offline, each with its own holder
    release.pem                      release key: offline, signs release lists by hand
    rollout.pem  heartbeat.pem       online keys the hub signs with
    root/1.root.json  2.root.json    the signed root chain, one file per version
    retired/<name>.<keyid>.pem       keys rotated out: kept for the record, never loaded

Private keys are unencrypted PKCS#8 PEM (:func:`protocol.keys.private_to_pem`), created
0600 and written through a temporary file, fsync and rename, so a crash leaves the old
file or the new one, never half of one. Keys are matched to roles by keyid, not by file
name, so any key may be absent (moved offline) and the ring still loads. Loading a key
that group or others may read logs a warning naming the file (never the key).

Defaults: root 2-of-3, root expiry 365 days, one key for each other role. Release lists
expire after ``HubSettings.release_expiry_s`` (90 days), applied when the hub drafts one
(:func:`write_pending_release`).

A running hub holds a :class:`LiveKeyring`: the ring as loaded, reloaded by
:meth:`LiveKeyring.reload` when the directory's :func:`generation` changes (a scheduler job
polls it every ``keyring_check_interval_s``). Why polling the files rather than a signal or
a socket: ``edgefleet keys rotate`` runs wherever the key directory is (another process,
another container, an operator copying files by hand) and need not know which process to
tell; a stat of a dozen files every two seconds costs nothing, and the chain version plus the
key files' mtimes and sizes change with every rotation, every key moved offline or back.

What this module does not do: keep keys in hardware tokens, encrypt them at rest, or
decide when to rotate; it never deletes a key.
"""

from __future__ import annotations

import logging
import stat
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Protocol

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgefleet.files import fsync_dir, write_atomic
from protocol import keys, metadata, trust
from protocol.documents import SignedDocument, add_signature
from protocol.errors import EdgefleetError, ProtocolError
from protocol.metadata import ROLES, ReleaseList, Role, Root, make_root

logger = logging.getLogger(__name__)

DAY_MS = 86_400_000
ROOT_LIFETIME_MS = 365 * DAY_MS
ROOT_DIR = "root"
RETIRED_DIR = "retired"
ONLINE_ROLES: tuple[Role, ...] = ("rollout", "heartbeat")


class KeyringError(EdgefleetError):
    """The key ring cannot do what was asked: missing keys, a broken chain, a bad argument."""

    reason: ClassVar[str] = "keyring"
    status_hint: ClassVar[int] = 500


@dataclass(frozen=True)
class Keyring:
    """A loaded key ring: the root chain and whichever private keys are present.

    ``signers[role]`` holds the present private keys the latest root lists for ``role``
    (empty for keys kept offline); ``files`` maps each present keyid to its file.
    """

    path: Path
    chain: tuple[SignedDocument, ...]
    root: Root
    signers: Mapping[str, tuple[Ed25519PrivateKey, ...]]
    files: Mapping[str, Path]

    def signing_keys(self, role: Role) -> tuple[Ed25519PrivateKey, ...]:
        """The keys to sign ``role``'s documents with.

        Raises:
            KeyringError: fewer keys present than the role's threshold.
        """
        present = self.signers[role]
        if len(present) < self.root.threshold(role):
            raise KeyringError(
                f"{role} needs {self.root.threshold(role)} key(s); {len(present)} in {self.path}"
            )
        return present


class Keys(Protocol):
    """What the hub's shells use of a key ring: a loaded :class:`Keyring` or the running
    hub's :class:`LiveKeyring`."""

    @property
    def path(self) -> Path: ...

    @property
    def chain(self) -> tuple[SignedDocument, ...]: ...

    @property
    def root(self) -> Root: ...

    def signing_keys(self, role: Role) -> tuple[Ed25519PrivateKey, ...]: ...


Generation = tuple[tuple[str, int, int], ...]


def generation(path: Path) -> Generation:
    """What changes whenever the ring does: name, mtime and size of each root document and
    key file directly in ``path`` (``retired/`` is never loaded, so it does not count)."""
    files = [*path.glob("*.pem"), *(path / ROOT_DIR).glob("*.root.json")]
    stamps = []
    for file in files:
        try:
            info = file.stat()
        except FileNotFoundError:  # renamed while we looked: the next look sees it
            continue
        stamps.append((str(file.relative_to(path)), info.st_mtime_ns, info.st_size))
    return tuple(sorted(stamps))


class LiveKeyring:
    """The running hub's key ring: the latest that loaded, replaced by :meth:`reload`.

    Reads are lock-free (one reference), so a signer may see the ring before or after a
    reload, never half of one. Satisfies :class:`Keys`.
    """

    def __init__(self, ring: Keyring) -> None:
        self._ring = ring
        self._generation = generation(ring.path)
        self._lock = threading.Lock()

    @property
    def current(self) -> Keyring:
        return self._ring

    @property
    def path(self) -> Path:
        return self._ring.path

    @property
    def chain(self) -> tuple[SignedDocument, ...]:
        return self._ring.chain

    @property
    def root(self) -> Root:
        return self._ring.root

    def signing_keys(self, role: Role) -> tuple[Ed25519PrivateKey, ...]:
        """As :meth:`Keyring.signing_keys`, of the current ring."""
        return self._ring.signing_keys(role)

    def reload(self) -> tuple[Keyring, Keyring] | None:
        """Load the ring again if its files changed: ``(old, new)``, or None when nothing
        changed or the files do not load (yet: a rotation in progress); the current ring
        stays until they do. Files that changed under the same root (a rotation's renames,
        seen after its root) replace the ring and return None: nothing changed for the
        fleet, so nothing is republished or audited twice.

        A rotation that is interrupted between writing root N+1 and renaming the new key
        into place still loads: keys are matched by keyid, ``*.next.pem`` included.
        """
        with self._lock:
            now = generation(self._ring.path)
            if now == self._generation:
                return None
            try:
                new = load(self._ring.path)
            except KeyringError as e:
                logger.warning("key ring changed but does not load (kept the loaded one): %s", e)
                return None
            self._generation = now
            old, self._ring = self._ring, new
            if new.root.version == old.root.version:
                return None  # the same keys, in other files: the last step of a rotation
            logger.info("key ring reloaded: root v%d -> v%d", old.root.version, new.root.version)
            return old, new


def rotated_roles(old: Root, new: Root) -> frozenset[Role]:
    """The roles whose keys differ between ``old`` and ``new``."""
    return frozenset(
        role for role in ROLES if set(new.roles[role].keyids) != set(old.roles[role].keyids)
    )


def init(
    path: Path,
    *,
    now_ms: int,
    root_keys: int = 3,
    root_threshold: int = 2,
    root_lifetime_ms: int = ROOT_LIFETIME_MS,
) -> Keyring:
    """Create a key ring: fresh keys for every role and root v1 signed by all root keys.

    Raises:
        KeyringError: ``path`` already holds keys or a chain, or the threshold is not
            between 1 and ``root_keys`` (at most 16).
    """
    if not 1 <= root_threshold <= root_keys <= metadata.MAX_ROLE_KEYS:
        raise KeyringError(
            f"root threshold {root_threshold} of {root_keys} keys: need "
            f"1 <= threshold <= keys <= {metadata.MAX_ROLE_KEYS}"
        )
    if (path / ROOT_DIR).exists() or any(path.glob("*.pem")):
        raise KeyringError(f"{path} already holds a key ring")
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    new = {f"root-{i}": Ed25519PrivateKey.generate() for i in range(1, root_keys + 1)}
    new.update({role: Ed25519PrivateKey.generate() for role in ("release", *ONLINE_ROLES)})
    roots = [new[f"root-{i}"] for i in range(1, root_keys + 1)]
    root = make_root(
        version=1,
        expires=now_ms + root_lifetime_ms,
        roles={
            "root": ([k.public_key() for k in roots], root_threshold),
            **{role: ([new[role].public_key()], 1) for role in ("release", *ONLINE_ROLES)},
        },
    )
    for name, key in new.items():
        write_private_key(path / f"{name}.pem", key)
    _write_root(path, metadata.sign(root, roots), 1)
    logger.info("key ring created in %s: root v1, %d-of-%d", path, root_threshold, root_keys)
    return load(path)


def load(path: Path) -> Keyring:
    """Read the root chain (verified from v1 on) and the private keys present.

    Raises:
        KeyringError: no chain, a chain that does not verify, or an unreadable key file.
    """
    chain = _read_chain(path)
    try:
        state = trust.TrustedState.initial(chain[0])
        while (walked := trust.update_root(state, chain)) is not state:
            state = walked
        last = metadata.parse(Root, chain[-1])
    except ProtocolError as e:
        raise KeyringError(f"root chain in {path / ROOT_DIR} does not verify: {e}") from e
    root = state.root
    if root != last or root.version != len(chain):
        raise KeyringError(
            f"root chain in {path / ROOT_DIR} does not lead from v1 to its last file"
        )
    files: dict[str, Path] = {}
    present: dict[str, Ed25519PrivateKey] = {}
    for file in sorted(path.glob("*.pem")):
        key = read_private_key(file)
        keyid = keys.keyid(key.public_key())
        if keyid not in root.keys:
            logger.warning("%s holds a key root v%d does not list", file, root.version)
            continue
        files[keyid], present[keyid] = file, key
    signers = {
        role: tuple(present[k] for k in spec.keyids if k in present)
        for role, spec in root.roles.items()
    }
    return Keyring(path, chain, root, signers, files)


def _read_chain(path: Path) -> tuple[SignedDocument, ...]:
    folder = path / ROOT_DIR
    versions = sorted(
        int(f.name.split(".", 1)[0])
        for f in folder.glob("*.root.json")
        if f.name.split(".", 1)[0].isdecimal()
    )
    if not versions:
        raise KeyringError(f"no root chain in {folder}: run `edgefleet keys init` first")
    if versions != list(range(1, len(versions) + 1)):
        raise KeyringError(f"root chain in {folder} has gaps: versions {versions}")
    try:
        return tuple(
            SignedDocument.from_bytes((folder / f"{v}.root.json").read_bytes()) for v in versions
        )
    except ProtocolError as e:
        raise KeyringError(f"unreadable root in {folder}: {e}") from e


def rotate(
    path: Path,
    role: Role,
    *,
    now_ms: int,
    index: int | None = None,
    root_lifetime_ms: int = ROOT_LIFETIME_MS,
) -> Keyring:
    """Replace ``role``'s key (for ``root``: key ``index``, 1-based, or all of them).

    Writes root N+1 naming the new key, signed by every root key present of root N and
    of N+1, after checking that a device holding root N would accept it; root N+1
    expires ``root_lifetime_ms`` after ``now_ms``. The new key goes to ``<name>.pem``
    (0600); the one it replaces moves to ``retired/``. Order: new key files, then the
    root (the commit point), then the renames; a crash at any point leaves a ring that
    loads, since keys are matched by keyid.

    Raises:
        KeyringError: too few root keys present to meet the old and new thresholds, an
            ``index`` that does not name a root key, or an interrupted rotation to finish.
    """
    ring = load(path)
    pending = min(path.glob("*.next.pem"), default=None)
    if pending is not None:
        raise KeyringError(
            f"{pending} is left from an interrupted rotation: rename it to "
            f"{pending.name.removesuffix('.next.pem')}.pem if root v{ring.root.version} lists "
            "it (`edgefleet keys show`), else move it away"
        )
    old = ring.root
    names = _rotated_names(old, role, index)
    new_keys = {name: Ed25519PrivateKey.generate() for name in names}
    roles = {
        r: ([old.keys[k].key() for k in spec.keyids], spec.threshold)
        for r, spec in old.roles.items()
    }
    if role == "root":
        publics, threshold = roles["root"]
        for name, key in new_keys.items():
            publics[int(name.removeprefix("root-")) - 1] = key.public_key()
    else:
        threshold = 1
        publics = [new_keys[role].public_key()]
    roles[role] = (publics, threshold)
    new = make_root(version=old.version + 1, expires=now_ms + root_lifetime_ms, roles=roles)
    signers = list(ring.signers["root"])
    if role == "root":
        signers.extend(new_keys.values())
    doc = metadata.sign(new, signers)
    try:
        trust.update_root(trust.TrustedState(old), [doc])
    except ProtocolError as e:
        raise KeyringError(
            f"cannot sign root v{new.version}: {e} (root keys present: "
            f"{len(ring.signers['root'])} of {len(old.roles['root'].keyids)})"
        ) from e
    for name, key in new_keys.items():
        write_private_key(path / f"{name}.next.pem", key)
    _write_root(path, doc, new.version)
    (path / RETIRED_DIR).mkdir(mode=0o700, exist_ok=True)
    for keyid in sorted((set(old.keys) - set(new.keys)) & ring.files.keys()):
        file = ring.files[keyid]
        file.rename(path / RETIRED_DIR / f"{file.stem}.{keyid[:16]}.pem")
    for name in names:
        (path / f"{name}.next.pem").rename(path / f"{name}.pem")
    fsync_dir(path)
    logger.info("rotated %s: root v%d written to %s", role, new.version, path / ROOT_DIR)
    return load(path)


def _rotated_names(root: Root, role: Role, index: int | None) -> list[str]:
    if role != "root":
        if index is not None:
            raise KeyringError(f"a key index applies to root keys only, not {role}")
        return [role]
    count = len(root.roles["root"].keyids)
    if index is None:
        return [f"root-{i}" for i in range(1, count + 1)]
    if not 1 <= index <= count:
        raise KeyringError(f"root has keys 1 to {count}, not {index}")
    return [f"root-{index}"]


def write_pending_release(path: Path, release: ReleaseList) -> None:
    """Write ``release`` as an unsigned release list for the offline key to sign."""
    write_atomic(path, metadata.sign(release, []).to_bytes(), mode=0o644)


def sign_release(
    path: Path, key: Ed25519PrivateKey, *, now_ms: int, out: Path | None = None
) -> ReleaseList:
    """Add ``key``'s signature to the release list in ``path`` (offline), write it to ``out``.

    Writes back to ``path`` when ``out`` is None. Returns the list, for the operator to
    check what they signed.

    Raises:
        KeyringError: the list has already expired.
        WrongKind: the file is not a release list.
        Malformed: the file is not a valid release list document.
        OSError: the file cannot be read or written.
    """
    doc = SignedDocument.from_bytes(path.read_bytes())
    release = metadata.parse(ReleaseList, doc)
    if now_ms >= release.expires:
        raise KeyringError(f"release list v{release.version} has expired: draft a new one")
    write_atomic(out or path, add_signature(doc, key).to_bytes(), mode=0o644)
    return release


def read_private_key(path: Path) -> Ed25519PrivateKey:
    """Load a PEM private key, warning when group or others may read the file.

    Raises:
        KeyringError: not an Ed25519 PEM private key.
        OSError: the file cannot be read.
    """
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        logger.warning(
            "private key %s is readable beyond its owner (mode %o): chmod 600", path, mode
        )
    try:
        return keys.private_from_pem(path.read_bytes())
    except ProtocolError as e:
        raise KeyringError(f"{path}: {e}") from e


def write_private_key(path: Path, key: Ed25519PrivateKey) -> None:
    """Write ``key`` as PEM, mode 0600, atomically."""
    write_atomic(
        path,
        keys.private_to_pem(key),
    )


def _write_root(path: Path, doc: SignedDocument, version: int) -> None:
    folder = path / ROOT_DIR
    folder.mkdir(mode=0o755, exist_ok=True)
    write_atomic(folder / f"{version}.root.json", doc.to_bytes(), mode=0o644)
