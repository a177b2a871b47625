"""The signed release list as the fleet's reference, and the documents built on it (pure).

Devices trust what the current *signed* release list names, and the hub's other signed
documents point at it: an assignment names the list it was built on and one of its
entries, a heartbeat pins its version and payload hash. This module builds those
payloads from plain values (the release list, a version number, ``now_ms``, lifetimes);
the shells sign, store and publish them (:mod:`hub.fleet.desired`,
:mod:`hub.fleet.documents`).
"""

from __future__ import annotations

from dataclasses import dataclass

from protocol import metadata
from protocol.documents import SignedDocument
from protocol.metadata import Assignment, Heartbeat, ReleaseEntry, ReleaseList


@dataclass(frozen=True)
class SignedRelease:
    """A signed release list: the document as stored and its parsed payload."""

    document: SignedDocument
    release: ReleaseList

    @classmethod
    def parse(cls, text: str) -> SignedRelease:
        """From the stored document (canonical JSON of the DSSE envelope)."""
        document = SignedDocument.from_bytes(text.encode())
        return cls(document, metadata.parse(ReleaseList, document))

    @property
    def version(self) -> int:
        return self.release.version

    @property
    def sha256(self) -> str:
        """The payload hash assignments and heartbeats pin."""
        return metadata.payload_sha256(self.document)

    def entry(self, name: str, version: int) -> ReleaseEntry | None:
        """The list's entry for ``name`` v``version``, None if it names none."""
        return next(
            (e for e in self.release.entries if (e.name, e.version) == (name, version)), None
        )


def assignment_for(
    device_id: str,
    entry: ReleaseEntry,
    current: SignedRelease,
    *,
    version: int,
    now_ms: int,
    lifetime_ms: int,
) -> Assignment:
    """The device's next assignment (``version``) to ``entry``, on the current list."""
    return Assignment(
        device_id=device_id,
        version=version,
        expires=now_ms + lifetime_ms,
        release_version=current.version,
        release_sha256=current.sha256,
        entry=entry,
    )


def needs_reissue(expires_ms: int | None, *, now_ms: int, lifetime_ms: int) -> bool:
    """True when an assignment expiring at ``expires_ms`` has less than half of its
    ``lifetime_ms`` left (None: one stored before assignments expired)."""
    return (expires_ms or 0) - now_ms < lifetime_ms // 2


def heartbeat_for(
    current: SignedRelease, *, version: int, now_ms: int, lifetime_ms: int
) -> Heartbeat:
    """Heartbeat ``version``: "at ``now_ms``, this release list is current"."""
    return Heartbeat(
        version=version,
        issued_at=now_ms,
        expires=now_ms + lifetime_ms,
        release_version=current.version,
        release_sha256=current.sha256,
    )
