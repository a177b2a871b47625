"""The broker access policy and the embedded broker's gate, as plain values: a named table
of CONNECTs and topic operations, each with the answer both tiers must give."""

from __future__ import annotations

import datetime as dt
import ssl
from pathlib import Path

import pytest

from hub.transport import tls
from hub.transport.broker_access import HUB_USERNAME, AccessPolicy, Principal
from hub.transport.broker_gate import Accounts, Gate
from hub.transport.mosquitto import TlsFiles, render_passwd
from hub.transport.mqtt_packets import (
    ACCEPTED,
    BAD_CREDENTIALS,
    IDENTIFIER_REJECTED,
    NOT_AUTHORIZED,
    Connect,
)
from protocol.broker_auth import make_verifier
from protocol.errors import Malformed
from protocol.topics import Topics

T = Topics("ef")
POLICY = AccessPolicy(T)
HUB = Principal("hub", HUB_USERNAME)
DEV = Principal("device", "dev-1")
NEW = Principal("enrolling", "dev-9")


def gate() -> Gate:
    return Gate(
        POLICY,
        Accounts(
            {
                HUB_USERNAME: make_verifier("hub-pw", b"hub salt 12b"),
                "dev-1": make_verifier("pw-1", b"dev salt 12b"),
            }
        ),
    )


@pytest.mark.parametrize(
    ("connect", "code"),
    [
        pytest.param(Connect("dev-1", username="dev-1", password=b"pw-1"), ACCEPTED, id="device"),
        pytest.param(
            Connect(HUB_USERNAME, username=HUB_USERNAME, password=b"hub-pw"), ACCEPTED, id="hub"
        ),
        pytest.param(Connect("dev-9"), ACCEPTED, id="anonymous-enrolling"),
        pytest.param(
            Connect("dev-1", username="dev-1", password=b"nope"), BAD_CREDENTIALS, id="bad-pw"
        ),
        pytest.param(Connect("dev-1", username="dev-1"), BAD_CREDENTIALS, id="no-pw"),
        pytest.param(
            Connect("dev-2", username="dev-2", password=b"pw-1"),
            BAD_CREDENTIALS,
            id="unprovisioned",
        ),
        pytest.param(
            Connect("dev-2", username="dev-1", password=b"pw-1"),
            IDENTIFIER_REJECTED,
            id="other-client-id",
        ),
        pytest.param(Connect("a/b"), IDENTIFIER_REJECTED, id="anonymous-slash"),
        pytest.param(Connect("#"), IDENTIFIER_REJECTED, id="anonymous-wildcard"),
        pytest.param(Connect(""), IDENTIFIER_REJECTED, id="anonymous-empty"),
        pytest.param(
            Connect("dev-1", username="dev-1", password=b"pw-1", will_topic=T.up("dev-2", "state")),
            NOT_AUTHORIZED,
            id="will-as-another-device",
        ),
        pytest.param(
            Connect("dev-9", will_topic=T.up("dev-9", "state")), NOT_AUTHORIZED, id="anonymous-will"
        ),
    ],
)
def test_the_gate_answers_each_connect_as_mosquitto_would(connect: Connect, code: int) -> None:
    assert gate().admit(connect).code == code


def test_an_anonymous_client_cannot_take_over_a_live_session_but_a_login_can() -> None:
    g = gate()
    g.opened("conn-1", "dev-1", DEV)
    assert g.admit(Connect("dev-1")).code == NOT_AUTHORIZED
    assert g.admit(Connect("dev-1", username="dev-1", password=b"pw-1")).code == ACCEPTED


def test_a_revoked_login_is_listed_for_disconnection_and_an_old_close_keeps_the_new_one() -> None:
    g = gate()
    g.opened("old", "dev-1", DEV)
    g.opened("new", "dev-1", DEV)
    g.closed("old", "dev-1")
    g.accounts.replace({HUB_USERNAME: make_verifier("hub-pw", b"hub salt 12b")})
    assert g.unprovisioned() == ["new"]


@pytest.mark.parametrize(
    ("who", "topic", "publish", "subscribe"),
    [
        pytest.param(DEV, T.up("dev-1", "state"), True, False, id="own-up"),
        pytest.param(DEV, T.up("dev-2", "state"), False, False, id="other-up"),
        pytest.param(DEV, T.down("dev-1", "desired"), False, True, id="own-down"),
        pytest.param(DEV, T.down("dev-2", "desired"), False, False, id="other-down"),
        pytest.param(DEV, T.fleet("release"), False, True, id="fleet"),
        pytest.param(DEV, f"{T.base}/d/+/down/#", False, False, id="wildcard-down"),
        pytest.param(DEV, f"{T.base}/#", False, False, id="everything"),
        pytest.param(DEV, "other/v1/d/dev-1/up/state", False, False, id="other-prefix"),
        pytest.param(NEW, T.up("dev-9", "hello"), True, False, id="enrolling-hello"),
        pytest.param(NEW, T.up("dev-9", "state"), False, False, id="enrolling-state"),
        pytest.param(NEW, T.fleet("root"), False, False, id="enrolling-fleet"),
        pytest.param(HUB, T.down("dev-1", "ack"), True, True, id="hub-down"),
        pytest.param(HUB, T.all_up(), False, True, id="hub-all-up"),
    ],
)
def test_the_policy_table(who: Principal, topic: str, publish: bool, subscribe: bool) -> None:
    assert POLICY.may_publish(who, topic) == publish
    assert POLICY.may_subscribe(who, topic) == subscribe


def test_a_password_file_never_holds_a_broken_line() -> None:
    with pytest.raises(Malformed):
        render_passwd({"dev-1": "$6$not$ours"})
    with pytest.raises(ValueError, match="user name"):
        render_passwd({"a:b": make_verifier("p", b"twelve bytes")})


def test_the_generated_broker_certificate_verifies_against_its_ca(tmp_path: Path) -> None:
    files = tls.issue(tmp_path, ["broker.example", "127.0.0.1"], now=dt.datetime.now(dt.UTC))
    assert handshake(files, "broker.example") is None
    assert "Hostname mismatch" in str(handshake(files, "elsewhere.example"))
    assert tls.issue(tmp_path, ["other"], now=dt.datetime.now(dt.UTC)) == files  # kept
    assert oct(files.key.stat().st_mode & 0o777) == "0o600"


def handshake(files: TlsFiles, name: str) -> ssl.SSLError | None:
    """A TLS handshake in memory: a client pinning the CA against the broker's cert."""
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(files.cert, files.key)
    client_ctx = ssl.create_default_context(cafile=str(files.ca))
    bios = [ssl.MemoryBIO() for _ in range(4)]
    client = client_ctx.wrap_bio(bios[0], bios[1], server_hostname=name)
    server = server_ctx.wrap_bio(bios[2], bios[3], server_side=True)
    for _ in range(10):
        for side, outbox, peer_in in (
            (client, bios[1], bios[2]),
            (server, bios[3], bios[0]),
        ):
            try:
                side.do_handshake()
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLError as e:
                return e
            peer_in.write(outbox.read())
        if client.version() and server.version():
            return None
    return ssl.SSLError("no handshake")
