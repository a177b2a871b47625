"""The device's own Ed25519 key: generated on the device, kept in one 0600 file.

On first start :func:`load_or_create` generates the key and writes it to
``<state_dir>/device.key`` (PKCS#8 PEM): created with mode 0600 through ``os.open`` so no
other user can ever read it, written to a temporary file, fsynced, renamed into place and
the directory fsynced, so a power cut leaves either no key or the whole key (threat-model
B33). Later starts load it; a key file that group or others can read is used but logged
as a warning (the path and the mode, never the key).

The key signs every uplink frame and the hub pins its public half at enrollment (the
``hello``). This module does not rotate keys and knows nothing of TPMs or secure
elements; both would replace this file, not extend it.
"""

from __future__ import annotations

import logging
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from agent.errors import IdentityError
from edgefleet.files import fsync_dir
from protocol import keys
from protocol.errors import Malformed

logger = logging.getLogger(__name__)

KEY_FILE = "device.key"


@dataclass(frozen=True)
class Identity:
    """Who this device is: its id and its signing key (never in ``repr``)."""

    device_id: str
    key: Ed25519PrivateKey = field(repr=False)

    @property
    def public(self) -> Ed25519PublicKey:
        return self.key.public_key()

    @property
    def public_hex(self) -> str:
        return keys.public_hex(self.public)


def load_or_create(state_dir: Path, device_id: str) -> Identity:
    """Load the device key from ``state_dir``, generating it on first start.

    Creates ``state_dir`` (mode 0700) when missing.

    Raises:
        IdentityError: the key file exists but is unreadable or not an Ed25519 PEM key,
            or the state directory cannot be written.
    """
    path = state_dir / KEY_FILE
    try:
        state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        data = path.read_bytes()
    except FileNotFoundError:
        return Identity(device_id, _create(path))
    except OSError as e:
        raise IdentityError(f"cannot read device key {path}: {e.strerror}") from e
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        logger.warning(
            "device key %s has mode %o: group or others can read it; chmod 600 it", path, mode
        )
    try:
        return Identity(device_id, keys.private_from_pem(data))
    except Malformed as e:
        raise IdentityError(f"device key {path} is not an Ed25519 PEM private key") from e


def _create(path: Path) -> Ed25519PrivateKey:
    key = Ed25519PrivateKey.generate()
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, keys.private_to_pem(key))
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise IdentityError(f"cannot write device key {path}: {e.strerror}") from e
    logger.info("generated device key %s (key id %s)", path, keys.keyid(key.public_key())[:16])
    return key
