"""Broker passwords and their verifiers, pure: the PBKDF2-SHA512 form Mosquitto 2.0 reads.

A device makes its own MQTT password (random, never sent anywhere but in its CONNECT) and
tells the hub only a *verifier* of it, inside its signed hello. The hub writes verifiers
into Mosquitto's ``password_file`` and checks passwords against them in the embedded
broker, so neither the hub nor its store ever holds a broker password of a device
(docs/broker-security.md).

The verifier is the line format ``mosquitto_passwd`` writes for Mosquitto 2.0::

    $7$<iterations>$<base64 salt>$<base64 PBKDF2-HMAC-SHA512(password, salt, iterations)>

(standard base64 with padding; ``mosquitto_passwd`` uses 101 iterations, a 12-byte salt and
the full 64-byte digest). Mosquitto 2.0.11 accepts any iteration count but only a 12-byte
salt: with an 8- or 16-byte salt every login fails (tried), so :func:`check_verifier`
refuses any other salt length. We accept 1 to :data:`MAX_ITERATIONS` iterations, because
the embedded broker runs PBKDF2 on every CONNECT and a verifier is chosen by the device.
The password is 32 random bytes, so the iteration count adds nothing against guessing: 101
is Mosquitto's own default and costs ~0.1 ms.

Law: ``check_password(make_verifier(p, salt), p)`` is True, and False for any other ``p``.
No I/O, no randomness: the salt is an argument.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re

from protocol.errors import Malformed

ITERATIONS = 101
MAX_ITERATIONS = 10_000
SALT_BYTES = 12
MAX_VERIFIER_CHARS = 256
_DIGEST_BYTES = 64
_VERIFIER = re.compile(r"\$7\$([1-9][0-9]{0,5})\$([A-Za-z0-9+/]{16})\$([A-Za-z0-9+/=]{88})")


def make_verifier(password: str, salt: bytes, iterations: int = ITERATIONS) -> str:
    """The ``$7$`` verifier of ``password`` with ``salt`` (Mosquitto's password_file form).

    Raises:
        Malformed: an empty password or salt, or iterations outside [1, MAX_ITERATIONS].
    """
    if not password:
        raise Malformed("a broker password must not be empty")
    if len(salt) != SALT_BYTES:
        raise Malformed(f"the salt must be {SALT_BYTES} bytes (all Mosquitto 2.0 reads)")
    if not 1 <= iterations <= MAX_ITERATIONS:
        raise Malformed(f"iterations must be in [1, {MAX_ITERATIONS}]")
    digest = _pbkdf2(password, salt, iterations)
    return f"$7${iterations}${_b64(salt)}${_b64(digest)}"


def check_verifier(verifier: str) -> None:
    """Raise Malformed unless ``verifier`` is a ``$7$`` verifier we accept."""
    _parse(verifier)


def check_password(verifier: str, password: str) -> bool:
    """Whether ``password`` matches ``verifier`` (constant-time compare); False for a
    verifier that does not parse."""
    try:
        iterations, salt, digest = _parse(verifier)
    except Malformed:
        return False
    if not password:
        return False
    return hmac.compare_digest(_pbkdf2(password, salt, iterations), digest)


def _parse(verifier: str) -> tuple[int, bytes, bytes]:
    if not isinstance(verifier, str) or len(verifier) > MAX_VERIFIER_CHARS:
        raise Malformed("broker verifier must be text of at most 256 characters")
    match = _VERIFIER.fullmatch(verifier)
    if match is None:
        raise Malformed("broker verifier must be $7$<iterations>$<salt>$<PBKDF2-SHA512>")
    iterations = int(match[1])
    if iterations > MAX_ITERATIONS:
        raise Malformed(f"broker verifier iterations above {MAX_ITERATIONS}")
    try:
        salt = base64.b64decode(match[2], validate=True)
        digest = base64.b64decode(match[3], validate=True)
    except (binascii.Error, ValueError) as e:
        raise Malformed("broker verifier is not valid base64") from e
    if len(digest) != _DIGEST_BYTES or len(salt) != SALT_BYTES:
        raise Malformed("broker verifier digest must be 64 bytes and its salt 12")
    return iterations, salt, digest


def _pbkdf2(password: str, salt: bytes, iterations: int) -> bytes:
    return hashlib.pbkdf2_hmac("sha512", password.encode("utf-8"), salt, iterations)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


__all__ = [
    "ITERATIONS",
    "MAX_ITERATIONS",
    "SALT_BYTES",
    "check_password",
    "check_verifier",
    "make_verifier",
]
