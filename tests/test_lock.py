"""The one-owner lock on a state or data directory (edgefleet/lock.py): exclusive, never
waits, and released by the kernel when its holder dies, kill -9 included."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from edgefleet.lock import LOCK_FILE, DirectoryInUse, DirectoryLock

HOLDER = """
import sys, time
from pathlib import Path
from edgefleet.lock import DirectoryLock
DirectoryLock(Path(sys.argv[1])).acquire()
print("locked", flush=True)
time.sleep(60)
"""


def test_a_second_owner_is_refused_at_once_and_told_who_holds_it(tmp_path: Path) -> None:
    with DirectoryLock(tmp_path / "state") as first:
        assert first.held
        with pytest.raises(DirectoryInUse) as info:
            DirectoryLock(tmp_path / "state").acquire()  # another owner, same process
    assert info.value.holder == os.getpid()
    assert str(info.value) == f"{tmp_path / 'state'} is in use by process {os.getpid()}"


def test_a_released_lock_can_be_taken_again_and_its_file_stays(tmp_path: Path) -> None:
    lock = DirectoryLock(tmp_path)
    lock.acquire()
    lock.release()
    lock.release()  # idempotent
    with DirectoryLock(tmp_path):
        pass
    assert (tmp_path / LOCK_FILE).exists()


def test_a_holder_killed_with_sigkill_leaves_no_stale_lock(tmp_path: Path) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(tmp_path)],
        stdout=subprocess.PIPE,
        cwd=Path(__file__).resolve().parent.parent,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline() == b"locked\n"
        with pytest.raises(DirectoryInUse) as info:
            DirectoryLock(tmp_path).acquire()
        assert info.value.holder == holder.pid
        holder.send_signal(signal.SIGKILL)
        holder.wait(10)
        with DirectoryLock(tmp_path) as lock:  # the kernel released it with the process
            assert lock.held
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
