"""Broker password verifiers: Mosquitto's own tool agrees with ours, both ways."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol.broker_auth import MAX_ITERATIONS, check_password, check_verifier, make_verifier
from protocol.errors import Malformed

passwords = st.text(min_size=1, max_size=40).filter(lambda p: "\x00" not in p)


@given(password=passwords, other=passwords, salt=st.binary(min_size=12, max_size=12))
def test_a_verifier_accepts_its_password_and_no_other(
    password: str, other: str, salt: bytes
) -> None:
    verifier = make_verifier(password, salt, iterations=2)
    check_verifier(verifier)
    assert check_password(verifier, password)
    assert check_password(verifier, other) == (other == password)


def test_mosquitto_passwd_hashes_verify_with_our_check(tmp_path: Path) -> None:
    tool = shutil.which("mosquitto_passwd")
    if tool is None:
        pytest.skip("mosquitto_passwd not installed")
    path = tmp_path / "passwd"
    subprocess.run([tool, "-b", "-c", str(path), "dev-1", "s3cret pass"], check=True)
    verifier = path.read_text().strip().split(":", 1)[1]
    assert check_password(verifier, "s3cret pass")
    assert not check_password(verifier, "s3cret pas")


@pytest.mark.parametrize(
    "verifier",
    [
        pytest.param("", id="empty"),
        pytest.param("$6$salt$hash", id="sha512-crypt"),
        pytest.param(make_verifier("p", b"twelve bytes")[:-4], id="truncated"),
        pytest.param(
            make_verifier("p", b"twelve bytes").replace("$7$101$", "$7$99999$"), id="costly"
        ),
        pytest.param("$7$101$dHdlbHZlIGJ5dGVz$" + "!" * 88, id="not-base64"),
        pytest.param(
            make_verifier("p", b"twelve bytes").replace("dHdlbHZlIGJ5dGVz", "c2FsdHNhbHQ="),
            id="short-salt",
        ),
        pytest.param("x" * 300, id="too-long"),
    ],
)
def test_bad_verifiers_are_refused_and_match_nothing(verifier: str) -> None:
    with pytest.raises(Malformed):
        check_verifier(verifier)
    assert not check_password(verifier, "p")


def test_iterations_are_capped_because_the_broker_runs_them_on_every_connect() -> None:
    with pytest.raises(Malformed):
        make_verifier("p", b"twelve bytes", iterations=MAX_ITERATIONS + 1)


def test_only_a_twelve_byte_salt_makes_a_verifier_because_mosquitto_reads_no_other() -> None:
    with pytest.raises(Malformed):
        make_verifier("p", b"saltsalt")
