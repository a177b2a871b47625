"""Ed25519 keys, key ids and DSSE signatures.

Every signature in edgefleet is Ed25519 over DSSE's pre-authentication encoding
``PAE(payload_type, payload)``, so any DSSE implementation can check it and a
signature made for one payload type can never verify as another. A key id is the
sha256 of the raw 32-byte public key, in hex. Keys travel as lowercase hex; private
keys are stored as unencrypted PKCS#8 PEM by the callers that own files.

This module holds no key material of its own and does no I/O.
"""

from __future__ import annotations

import hashlib

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from protocol.errors import BadSignature, Malformed

SIGNATURE_SIZE = 64
PUBLIC_KEY_SIZE = 32


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE v1 pre-authentication encoding: ``DSSEv1 SP len(type) SP type SP len(body) SP body``."""
    kind = payload_type.encode("utf-8")
    return b"DSSEv1 %d %s %d %s" % (len(kind), kind, len(payload), payload)


def sign(key: Ed25519PrivateKey, payload_type: str, payload: bytes) -> bytes:
    """Sign ``payload`` under ``payload_type``; 64 bytes."""
    return key.sign(pae(payload_type, payload))


def verify(public: Ed25519PublicKey, signature: bytes, payload_type: str, payload: bytes) -> None:
    """Check one signature.

    Raises:
        BadSignature: wrong length, or it does not verify for this type, payload and key.
    """
    if len(signature) != SIGNATURE_SIZE:
        raise BadSignature(f"signature is {len(signature)} bytes, expected {SIGNATURE_SIZE}")
    try:
        public.verify(signature, pae(payload_type, payload))
    except InvalidSignature as e:
        raise BadSignature("signature does not verify") from e


def public_bytes(public: Ed25519PublicKey) -> bytes:
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def public_hex(public: Ed25519PublicKey) -> str:
    """The public key as 64 lowercase hex digits, the form every message carries."""
    return public_bytes(public).hex()


def public_from_hex(text: str) -> Ed25519PublicKey:
    """Parse a hex public key.

    Raises:
        Malformed: not 64 hex digits.
    """
    try:
        raw = bytes.fromhex(text)
    except (ValueError, TypeError) as e:
        raise Malformed("public key is not hex") from e
    if len(raw) != PUBLIC_KEY_SIZE:
        raise Malformed(f"public key is {len(raw)} bytes, expected {PUBLIC_KEY_SIZE}")
    return Ed25519PublicKey.from_public_bytes(raw)


def keyid(public: Ed25519PublicKey) -> str:
    """sha256 of the raw public key, hex: stable, short enough to log, reveals nothing."""
    return hashlib.sha256(public_bytes(public)).hexdigest()


def private_to_pem(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def private_from_pem(data: bytes) -> Ed25519PrivateKey:
    """Load a PKCS#8 PEM Ed25519 private key.

    Raises:
        Malformed: not a PEM Ed25519 private key.
    """
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as e:
        raise Malformed("not a PEM private key") from e
    if not isinstance(key, Ed25519PrivateKey):
        raise Malformed("not an Ed25519 private key")
    return key
