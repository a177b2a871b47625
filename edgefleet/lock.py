"""One process per state directory: an OS lock on a file inside it.

An agent's state directory (keys, outbox, trusted state, model slots) and a hub's data
directory must have one owner at a time: a second process that starts on the same
directory would read state mid-write and "repair" what the first is using (an agent's
slot recovery would roll back the model the first one serves and delete its package).
So the owner takes :class:`DirectoryLock` *before* it reads or repairs anything, and a
second one fails at once with :class:`DirectoryInUse`, naming the directory and the pid
that holds it.

The lock is ``fcntl.flock`` (exclusive, non-blocking) on ``<directory>/.lock``. The kernel
releases it when the holder's file descriptor closes, which includes any death of the
process, kill -9 too: a crash never leaves a stale lock, and nothing has to judge whether
an old pid is still alive. The pid written into the file is for the message only; it is
never trusted. ``flock`` locks belong to the open file, so two owners in one process (the
simulator runs many agents) exclude each other too. Local filesystems only: on NFS,
``flock`` may be emulated or ignored, and a state directory does not belong there.

Callers wrap :class:`DirectoryInUse` in their own error (a configuration or startup
error), as they do with :class:`edgefleet.brokers.BadBrokerUrl`.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from types import TracebackType
from typing import Self

LOCK_FILE = ".lock"


class DirectoryInUse(RuntimeError):
    """Another process (or another owner in this one) holds the directory's lock."""

    def __init__(self, directory: Path, holder: int | None) -> None:
        who = f"process {holder}" if holder is not None else "another process"
        super().__init__(f"{directory} is in use by {who}")
        self.directory = directory
        self.holder = holder


class DirectoryLock:
    """An exclusive lock on ``directory`` (created if missing), held until :meth:`release`.

    Use as ``with DirectoryLock(path):`` or call :meth:`acquire` / :meth:`release`.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.path = directory / LOCK_FILE
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> Self:
        """Take the lock now or fail; never waits.

        Raises:
            DirectoryInUse: someone holds it.
            OSError: the directory or the lock file cannot be created.
        """
        if self._fd is not None:
            return self
        self.directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_pid(fd)
            os.close(fd)
            raise DirectoryInUse(self.directory, holder) from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        """Let go (idempotent). The file stays: deleting it would let two processes lock
        two different files of the same name."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)  # closing the last descriptor releases the flock

    def __enter__(self) -> Self:
        return self.acquire()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


__all__ = ["LOCK_FILE", "DirectoryInUse", "DirectoryLock"]
