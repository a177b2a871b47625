"""Threshold-signed documents in the DSSE JSON envelope format.

The trust documents (root, release list, assignment, heartbeat) are DSSE envelopes:
``{"payload": base64(canonical JSON), "payloadType": ..., "signatures": [{"keyid", "sig"}]}``
with ``sig`` in base64, exactly as the DSSE spec and securesystemslib write them, so
any DSSE tool can check them. The payload type names the document kind and protocol
version (``application/vnd.edgefleet.assignment+json; v=1``): an assignment signature
never verifies as a heartbeat.

:func:`verify_threshold` counts each trusted key id once, ignores signatures by unknown
keys and refuses the document unless ``threshold`` distinct trusted keys verify; a
signature repeated N times counts once (tuf-conformance ``test_duplicate_keys``).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from protocol import canonical, keys, schema
from protocol.errors import BadSignature, Malformed, Oversize, ThresholdNotMet, WrongKind

DOCUMENT_VERSION = 1
MAX_DOCUMENT_BYTES = 128 * 1024
MAX_SIGNATURES = 16


def document_type(kind: str, version: int = DOCUMENT_VERSION) -> str:
    return f"application/vnd.edgefleet.{kind}+json; v={version}"


@dataclass(frozen=True)
class DocSignature:
    keyid: str
    sig: str

    def __post_init__(self) -> None:
        schema.check_sha256(self.keyid, "keyid")


@dataclass(frozen=True)
class SignedDocument:
    """A DSSE JSON envelope; field names are DSSE's own."""

    payload: str
    payloadType: str  # DSSE spells it so
    signatures: tuple[DocSignature, ...]

    def __post_init__(self) -> None:
        if len(self.signatures) > MAX_SIGNATURES:
            raise Malformed(f"more than {MAX_SIGNATURES} signatures")

    def to_bytes(self) -> bytes:
        """The canonical JSON form published on fleet topics and stored on disk."""
        return canonical.dumps(schema.to_json(self))

    @classmethod
    def from_bytes(cls, data: bytes) -> SignedDocument:
        """Parse an envelope without verifying it.

        Raises:
            Oversize: longer than ``MAX_DOCUMENT_BYTES``.
            Malformed: not a DSSE JSON envelope.
        """
        if len(data) > MAX_DOCUMENT_BYTES:
            raise Oversize(f"document of {len(data)} bytes exceeds {MAX_DOCUMENT_BYTES}")
        return schema.from_json(cls, canonical.loads(data), path="document")

    def payload_bytes(self) -> bytes:
        try:
            return base64.b64decode(self.payload, validate=True)
        except (binascii.Error, ValueError) as e:
            raise Malformed("document payload is not base64") from e


def sign_document(payload: Any, kind: str, signers: Iterable[Ed25519PrivateKey]) -> SignedDocument:
    """Canonicalise ``payload`` (JSON values) and sign it with every key in ``signers``."""
    body = canonical.dumps(payload)
    ptype = document_type(kind)
    sigs = tuple(
        DocSignature(
            keys.keyid(k.public_key()),
            base64.b64encode(keys.sign(k, ptype, body)).decode("ascii"),
        )
        for k in signers
    )
    return SignedDocument(base64.b64encode(body).decode("ascii"), ptype, sigs)


def add_signature(doc: SignedDocument, signer: Ed25519PrivateKey) -> SignedDocument:
    """``doc`` with one more signature (an offline key signing a pending document)."""
    body = doc.payload_bytes()
    sig = DocSignature(
        keys.keyid(signer.public_key()),
        base64.b64encode(keys.sign(signer, doc.payloadType, body)).decode("ascii"),
    )
    kept = tuple(s for s in doc.signatures if s.keyid != sig.keyid)
    return SignedDocument(doc.payload, doc.payloadType, (*kept, sig))


def verify_threshold(
    doc: SignedDocument,
    kind: str,
    trusted: Mapping[str, Ed25519PublicKey],
    threshold: int,
) -> Any:
    """Return the payload's JSON values once ``threshold`` distinct trusted keys signed it.

    Raises:
        WrongKind: the envelope's payload type is not ``kind``'s.
        ThresholdNotMet: fewer than ``threshold`` distinct trusted keys verify.
        Malformed: the payload is not base64 canonical JSON.
    """
    if doc.payloadType != document_type(kind):
        raise WrongKind(f"{doc.payloadType[:80]!r} presented as {kind}")
    body = doc.payload_bytes()
    verified: set[str] = set()
    for entry in doc.signatures:
        public = trusted.get(entry.keyid)
        if public is None or entry.keyid in verified:
            continue
        try:
            raw = base64.b64decode(entry.sig, validate=True)
            keys.verify(public, raw, doc.payloadType, body)
        except (binascii.Error, ValueError, BadSignature):
            continue
        verified.add(entry.keyid)
    if threshold < 1 or len(verified) < threshold:
        raise ThresholdNotMet(f"{kind}: {len(verified)} of {threshold} required signatures")
    return canonical.loads(body)
