"""Content-addressed artifacts on disk: every file is named by its own sha256.

Layout: ``<root_dir>/<sha256>`` (64 lowercase hex digits), nothing else. A name is
always the digest of the bytes the hub computed itself, never a string from an upload,
a message or a model (no path traversal), and a digest handed in by a caller is checked
to be exactly 64 hex digits before it comes near a path.

Writes go through a temporary file in the same directory, fsync, rename and an fsync of
the directory, so a crash leaves either the whole artifact or none of it (B33). Putting
bytes that are already stored is a no-op, unless the stored file no longer hashes to
its name, in which case it is rewritten (the disk corrupted it).

Reads of a whole artifact verify its sha256 (:class:`ArtifactCorrupt` when the disk
changed it). Range reads serve chunked downloads: the first range read of an artifact
in this process hashes the whole file once and remembers it (by size and mtime), so a
100-chunk download costs one full read, not a hundred. The device checks the
reassembled bytes against the signed release entry in any case (T1).

What this module does not do: record artifacts in the store (the registry writes the
``artifacts`` row in the same transaction as the version), garbage-collect, or decide
who may read what (:mod:`hub.fleet.delivery` does).
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import threading
from pathlib import Path
from typing import ClassVar, Protocol

from edgefleet.files import file_sha256, fsync_dir
from hub.errors import HubError, InvalidRequest
from hub.store import NotFound
from protocol.schema import HEX64

logger = logging.getLogger(__name__)

MAX_ARTIFACT_BYTES = 512 * 1024 * 1024
"""Largest artifact accepted: a 256 MiB model (protocol.modelcheck's cap) with room."""
MAX_RANGE_BYTES = 1024 * 1024
"""Largest range one read may ask for; chunks are far smaller (HubSettings.chunk_bytes)."""
_HASH_BLOCK = 1024 * 1024


class ArtifactCorrupt(HubError):
    """A stored artifact no longer hashes to its name: the disk changed it."""

    reason: ClassVar[str] = "artifact_corrupt"
    status_hint: ClassVar[int] = 500


def check_digest(sha256: str) -> str:
    """Return ``sha256`` if it is 64 lowercase hex digits.

    Raises:
        InvalidRequest: anything else (a path, upper case, the wrong length).
    """
    if not isinstance(sha256, str) or HEX64.fullmatch(sha256) is None:
        raise InvalidRequest("sha256 must be 64 lowercase hex digits")
    return sha256


class Artifacts(Protocol):
    """What the hub needs of an artifact store: bytes by their sha256. :class:`ArtifactStore`
    keeps them in a directory (replicas share one, docs/scale-out.md); an object store (S3,
    GCS) would implement the same five methods with the same checks: names are digests
    the hub computed, and a read of a whole artifact verifies it."""

    def put(self, data: bytes) -> str:
        """Store ``data`` under its sha256; the digest."""
        ...

    def exists(self, sha256: str) -> bool: ...

    def size(self, sha256: str) -> int: ...

    def read(self, sha256: str) -> bytes:
        """The whole artifact, verified against its name."""
        ...

    def read_range(self, sha256: str, offset: int, length: int) -> bytes: ...


class ArtifactStore:
    """Artifacts under one directory, created on first use (:class:`Artifacts`)."""

    def __init__(self, root_dir: Path, *, max_bytes: int = MAX_ARTIFACT_BYTES) -> None:
        self.root_dir = Path(root_dir)
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._verified: dict[str, tuple[int, int]] = {}  # sha256 -> (size, mtime_ns)

    def _path(self, sha256: str) -> Path:
        return self.root_dir / check_digest(sha256)

    def put(self, data: bytes) -> str:
        """Store ``data`` under its sha256 and return the digest.

        Raises:
            InvalidRequest: ``data`` is empty or larger than ``max_bytes``.
            OSError: the disk refused the write.
        """
        if not data:
            raise InvalidRequest("an artifact cannot be empty")
        if len(data) > self.max_bytes:
            raise InvalidRequest(f"artifact of {len(data)} bytes exceeds {self.max_bytes}")
        sha256 = hashlib.sha256(data).hexdigest()
        path = self._path(sha256)
        if path.exists() and file_sha256(path) == sha256:
            return sha256
        self.root_dir.mkdir(parents=True, exist_ok=True)
        fd, temp = tempfile.mkstemp(dir=self.root_dir, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(temp, 0o644)  # artifacts are published bytes, not secrets
            os.replace(temp, path)
        except BaseException:
            Path(temp).unlink(missing_ok=True)
            raise
        fsync_dir(self.root_dir)
        with self._lock:
            self._verified.pop(sha256, None)
        logger.info("stored artifact %s (%d bytes)", sha256[:16], len(data))
        return sha256

    def exists(self, sha256: str) -> bool:
        """True when an artifact with this digest is on disk (not verified).

        Raises:
            InvalidRequest: ``sha256`` is not a digest.
        """
        return self._path(sha256).is_file()

    def size(self, sha256: str) -> int:
        """Length in bytes.

        Raises:
            InvalidRequest: ``sha256`` is not a digest.
            NotFound: no such artifact.
        """
        try:
            return self._path(sha256).stat().st_size
        except FileNotFoundError:
            raise NotFound(f"no artifact {sha256[:16]}") from None

    def read(self, sha256: str) -> bytes:
        """The whole artifact, checked against its digest.

        Raises:
            InvalidRequest: ``sha256`` is not a digest.
            NotFound: no such artifact.
            ArtifactCorrupt: the bytes on disk no longer hash to ``sha256``.
        """
        try:
            data = self._path(sha256).read_bytes()
        except FileNotFoundError:
            raise NotFound(f"no artifact {sha256[:16]}") from None
        if hashlib.sha256(data).hexdigest() != sha256:
            logger.error("artifact %s is corrupt on disk", sha256[:16])
            raise ArtifactCorrupt(f"artifact {sha256[:16]} does not match its digest")
        return data

    def read_range(self, sha256: str, offset: int, length: int) -> bytes:
        """Bytes ``[offset, offset + length)`` of the artifact, cut at its end.

        Raises:
            InvalidRequest: not a digest, a negative offset, an offset at or past the
                end, or a length outside ``1..MAX_RANGE_BYTES``.
            NotFound: no such artifact.
            ArtifactCorrupt: the file no longer hashes to ``sha256``.
        """
        if not 1 <= length <= MAX_RANGE_BYTES:
            raise InvalidRequest(f"range length {length} outside 1..{MAX_RANGE_BYTES}")
        path = self._path(sha256)
        try:
            with path.open("rb") as f:
                stat = os.fstat(f.fileno())
                if not 0 <= offset < stat.st_size:
                    raise InvalidRequest(f"offset {offset} outside 0..{stat.st_size - 1}")
                self._verify_once(sha256, f.name, (stat.st_size, stat.st_mtime_ns))
                f.seek(offset)
                return f.read(length)
        except FileNotFoundError:
            raise NotFound(f"no artifact {sha256[:16]}") from None

    def _verify_once(self, sha256: str, path: str, identity: tuple[int, int]) -> None:
        with self._lock:
            if self._verified.get(sha256) == identity:
                return
        if file_sha256(Path(path)) != sha256:
            logger.error("artifact %s is corrupt on disk", sha256[:16])
            raise ArtifactCorrupt(f"artifact {sha256[:16]} does not match its digest")
        with self._lock:
            self._verified[sha256] = identity
