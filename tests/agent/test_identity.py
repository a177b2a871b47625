"""The device key: generated once, 0600 from the first byte, reused, never logged."""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

import pytest

from agent.errors import IdentityError
from agent.identity import KEY_FILE, load_or_create
from protocol import keys


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_identity_key_file_is_0600_even_with_a_permissive_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        load_or_create(tmp_path / "state", "dev-1")
    finally:
        os.umask(old)
    assert mode(tmp_path / "state" / KEY_FILE) == 0o600
    assert mode(tmp_path / "state") == 0o700
    assert [p.name for p in (tmp_path / "state").iterdir()] == [KEY_FILE]


def test_identity_is_generated_once_and_reloaded(tmp_path: Path) -> None:
    first = load_or_create(tmp_path, "dev-1")
    second = load_or_create(tmp_path, "dev-1")
    assert first.public_hex == second.public_hex
    assert len(first.public_hex) == 64


def test_identity_warns_about_a_readable_key_without_logging_it(tmp_path: Path, caplog) -> None:
    identity = load_or_create(tmp_path, "dev-1")
    (tmp_path / KEY_FILE).chmod(0o644)
    with caplog.at_level(logging.DEBUG, logger="agent.identity"):
        assert load_or_create(tmp_path, "dev-1").public_hex == identity.public_hex
    assert "644" in caplog.text
    pem = keys.private_to_pem(identity.key).decode()
    assert "PRIVATE KEY" not in caplog.text
    assert pem.splitlines()[1] not in caplog.text


def test_identity_refuses_a_key_file_that_is_not_a_key(tmp_path: Path) -> None:
    (tmp_path / KEY_FILE).write_text("not a key")
    with pytest.raises(IdentityError, match=KEY_FILE):
        load_or_create(tmp_path, "dev-1")


def test_identity_repr_never_shows_the_key(tmp_path: Path) -> None:
    identity = load_or_create(tmp_path, "dev-1")
    assert repr(identity) == "Identity(device_id='dev-1')"
