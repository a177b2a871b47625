"""The model package: one artifact holding a manifest and exactly the files it lists.

Layout (big-endian)::

    b"EFPK"  u8 version (1)  u32 manifest length M  manifest (canonical JSON, M bytes)
    then each file of ``manifest.files``, in that order, back to back, nothing after.

One artifact means one sha256 in the release list, one resumable download and one
atomic install. The decoder accounts for every byte: a file whose hash or length differ,
an unlisted trailing byte, or a name outside the manifest's fixed set is refused
(threat-model T5, B21, B24). It does not parse the ONNX graph: that is
:mod:`protocol.modelcheck`'s job, after this succeeds.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass

from protocol import canonical, schema
from protocol.errors import Malformed, Oversize, UnknownVersion
from protocol.manifest import FileEntry, ModelManifest

MAGIC = b"EFPK"
VERSION = 1
_PREFIX = struct.Struct(">4sBI")
MAX_MANIFEST_BYTES = 1024 * 1024


@dataclass(frozen=True)
class ModelPackage:
    manifest: ModelManifest
    files: dict[str, bytes]

    @property
    def model(self) -> bytes:
        return self.files["model.onnx"]


def file_entry(name: str, data: bytes) -> FileEntry:
    """The manifest entry pinning ``data`` under ``name``."""
    return FileEntry(name=name, sha256=hashlib.sha256(data).hexdigest(), length=len(data))  # type: ignore[arg-type]


def encode_package(manifest: ModelManifest, files: dict[str, bytes]) -> bytes:
    """Serialise a package; ``files`` must match the manifest's entries exactly.

    Raises:
        Malformed: a file missing, unlisted, or not matching its entry.
    """
    if set(files) != {e.name for e in manifest.files}:
        raise Malformed("package files differ from the manifest's list")
    for entry in manifest.files:
        if file_entry(entry.name, files[entry.name]) != entry:
            raise Malformed(f"{entry.name} does not match its manifest entry")
    head = canonical.dumps(schema.to_json(manifest))
    parts = [_PREFIX.pack(MAGIC, VERSION, len(head)), head]
    parts.extend(files[e.name] for e in manifest.files)
    return b"".join(parts)


def decode_package(data: bytes, *, max_bytes: int = 1 << 30) -> ModelPackage:
    """Parse a package whose outer sha256 the caller has already checked.

    Raises:
        Oversize: larger than ``max_bytes`` or a manifest over 1 MiB.
        UnknownVersion: not a package, or a version we do not read.
        Malformed: a bad manifest, or files that do not account for every byte.
        NonFinite: a non-finite number in the manifest.
    """
    if len(data) > max_bytes:
        raise Oversize(f"package of {len(data)} bytes exceeds {max_bytes}")
    if len(data) < _PREFIX.size:
        raise Malformed("package is truncated")
    magic, version, head_len = _PREFIX.unpack_from(data)
    if magic != MAGIC or version != VERSION:
        raise UnknownVersion("not an edgefleet model package (v1)")
    if head_len > MAX_MANIFEST_BYTES:
        raise Oversize("manifest larger than 1 MiB")
    start = _PREFIX.size + head_len
    if start > len(data):
        raise Malformed("manifest runs past the end of the package")
    manifest = schema.from_json(
        ModelManifest, canonical.loads(data[_PREFIX.size : start]), "manifest"
    )
    files: dict[str, bytes] = {}
    offset = start
    for entry in manifest.files:
        chunk = data[offset : offset + entry.length]
        offset += entry.length
        if file_entry(entry.name, chunk) != entry:
            raise Malformed(f"{entry.name} does not match its manifest entry")
        files[entry.name] = chunk
    if offset != len(data):
        raise Malformed("package holds bytes its manifest does not list")
    return ModelPackage(manifest, files)
