"""The model slots on disk: the slot table's state, persisted, and the packages it names.

Layout under the slots directory (``<state_dir>/models``)::

    slots.json              SlotState: install state, active and previous refs, candidate
    packages/<sha256>.pkg   verified packages, named by their hash and never by a name
                            from a message (threat-model T17, B24)
    download/               the download in progress (agent/download.py)

Which moves are legal, and what a restart resumes from, is decided by the pure table in
:mod:`agent.slot_table`; this module applies its steps and persists each one before
returning. A swap is one atomic rewrite of ``slots.json`` (temp file, fsync, rename,
directory fsync: :func:`write_atomic`), so after a power cut the file names either the
old active package or the new one, never a mix (B33).

**Boot.** Stray temporary files are swept, the recorded state is recovered
(:func:`agent.slot_table.recover`: every named package is hashed), and packages no slot
names are deleted, **except** the one the record on disk named active: the boot's own
garbage collection never deletes what a live process might be serving. (The state
directory's lock keeps a second agent out before it gets here; this is the second
line.) A package kept that way is collected by the next install step.

What this module does not do: decide what to install, verify signatures, or parse a
package (agent/updater.py and agent/install.py do, in that order, before anything is
stored here).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from agent.errors import StateCorrupt
from agent.slot_table import Event, SlotState, recover, step
from edgefleet.files import TEMP_SUFFIX, file_sha256, fsync_dir, write_atomic
from protocol import schema
from protocol.errors import ProtocolError
from protocol.messages import ModelRef

logger = logging.getLogger(__name__)

SLOTS_FILE = "slots.json"
PACKAGES = "packages"
DOWNLOADS = "download"


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
        self.collect_garbage(also_keep=loaded.active)

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

    def collect_garbage(self, *, also_keep: ModelRef | None = None) -> None:
        """Delete packages no slot names (but ``also_keep``'s); downloads other than the
        candidate's."""
        s = self._state
        keep = {ref.sha256 for ref in (s.active, s.previous, also_keep) if ref is not None}
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


__all__ = ["DOWNLOADS", "PACKAGES", "SLOTS_FILE", "Slots"]
