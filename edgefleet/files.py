"""Durable files: what the agent's state and the hub's keys and artifacts rely on after a
power cut.

A file is replaced all at once (temp file in the same directory, fsync, rename, directory
fsync), so a reader sees the old bytes or the new ones, never a torn write. Temp files
end in :data:`TEMP_SUFFIX`, so whoever owns a directory can sweep the strays of a crash.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

TEMP_SUFFIX = ".tmp"
_HASH_BLOCK = 1 << 20


def write_atomic(path: Path, data: bytes, *, mode: int = 0o600) -> None:
    """Replace ``path`` with ``data`` all at once, readable as ``mode`` (default 0600).

    The temp file is created 0600 and only then given ``mode``, so a secret is never
    readable by others, not even for a moment.
    """
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_SUFFIX)
    try:
        with os.fdopen(fd, "wb") as f:
            if mode != 0o600:
                os.fchmod(f.fileno(), mode)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def fsync_dir(directory: Path) -> None:
    """Make a rename or unlink in ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def file_sha256(path: Path) -> str:
    """The sha256 of a file, read in blocks.

    Raises:
        OSError: the file cannot be read.
    """
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(_HASH_BLOCK):
            digest.update(block)
    return digest.hexdigest()


__all__ = ["TEMP_SUFFIX", "file_sha256", "fsync_dir", "write_atomic"]
