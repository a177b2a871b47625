"""Enrollment and identity: tokens, pinning keys by hello, approval, revocation, and the
attacks on them (cloned or swapped keys, replayed or stolen tokens, hello floods): each
attack fails and changes nothing else."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from hub.errors import Conflict, InvalidRequest
from hub.fleet import enrollment
from hub.fleet.identity import Claim, Decision, Enroll, Pend, Refuse, decide
from hub.ingest.worker import PENDING_ANSWERS_PER_MIN
from hub.store import NotFound
from hub.store.rows import Device, EnrollmentToken
from protocol.messages import Hello, HubAck, ModelRef, Telemetry
from tests.hub.hubsim import HubSim, SimDevice
from tests.hub.tables import rows

DAY_MS = 86_400_000


@pytest.fixture
def hub(tmp_path: Path) -> HubSim:
    return HubSim(tmp_path)


def token(hub: HubSim, kind: str = "single", **options: Any) -> enrollment.IssuedToken:
    if kind == "fleet":
        options.setdefault("expires_at", hub.clock.now_ms() + DAY_MS)
    return enrollment.create_token(
        hub.store,
        kind=kind,  # type: ignore[arg-type]
        by="token:admin",
        now_ms=hub.clock.now_ms(),
        **options,
    )


def device_row(hub: HubSim, device_id: str) -> Device:
    return hub.store.devices.get(device_id)


def audit_actions(hub: HubSim) -> list[tuple[str, str, str]]:
    entries = reversed(hub.store.audit.page(limit=1000).items)
    return [(e.action, e.target, e.reason) for e in entries]


# ---------------------------------------------------------------------- tokens


def test_token_secret_is_shown_once_and_stored_hashed(
    hub: HubSim, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    issued = token(hub, tags={"region": "eu"})

    [row] = rows(hub.store, "enrollment_tokens")
    assert row["hash"] == hashlib.sha256(issued.secret.encode()).hexdigest()
    everything = str(hub.snapshot(audit=True))
    assert issued.secret not in everything
    assert issued.secret not in caplog.text
    assert issued.secret not in repr(issued)
    assert len(issued.secret) >= 43  # 32 random bytes, url-safe base64
    assert issued.secret.startswith("efe_")  # never "-": a command line takes that for an option
    assert audit_actions(hub) == [("enrollment_token.create", issued.id, "")]
    listed = enrollment.list_tokens(hub.store)[0]
    assert row["hash"] not in repr(listed)
    assert not hasattr(listed, "hash")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        pytest.param({"kind": "fleet"}, "expires_at", id="fleet_without_expiry"),
        pytest.param({"kind": "reusable"}, "kind", id="unknown_kind"),
        pytest.param({"kind": "single", "expires_at": 1}, "future", id="expired_at_birth"),
        pytest.param({"kind": "single", "tags": {"Bad Key": "x"}}, "tag key", id="bad_tag"),
    ],
)
def test_create_token_refuses_bad_options(
    hub: HubSim, options: dict[str, Any], message: str
) -> None:
    with pytest.raises(InvalidRequest, match=message):
        enrollment.create_token(hub.store, by="cli", now_ms=hub.clock.now_ms(), **options)
    assert enrollment.list_tokens(hub.store) == []


# ---------------------------------------------------------------------- hello


def test_hello_with_a_valid_token_pins_the_key_and_is_acked(hub: HubSim) -> None:
    issued = token(hub, tags={"region": "eu"})
    dev = hub.device("dev-1")

    hub.send(dev.hello(issued.secret, tags={"region": "us", "hw": "pi4"}))

    row = device_row(hub, "dev-1")
    assert (row.status, row.public_key, row.online) == ("active", dev.public_hex, True)
    assert row.tags == {"hw": "pi4", "region": "eu"}  # the token's tags win
    assert row.enrolled_by == f"enrollment-token:{issued.id}"
    assert hub.acks(dev) == [HubAck(committed=((1, 1),))]
    assert audit_actions(hub)[-1] == ("device.enroll", "dev-1", "")
    hub.send(dev.frame(Telemetry(uptime_s=1)))
    assert hub.acks(dev) == [HubAck(committed=((2, 2),))]


def test_single_use_token_enrolls_only_one_device(hub: HubSim) -> None:
    issued = token(hub)
    first, second = hub.device("dev-1"), hub.device("dev-2")

    hub.send(first.hello(issued.secret))
    hub.send(second.hello(issued.secret))

    assert device_row(hub, "dev-1").status == "active"
    assert device_row(hub, "dev-2").status == "pending"
    assert audit_actions(hub)[-1] == ("device.pending", "dev-2", "token_used")
    assert device_row(hub, "dev-2").pending_reason == "token_used"
    assert hub.acks(second) == [HubAck(committed=(), refused=((1, "pending: token_used"),))]
    reused = hub.store.audit.page(action="device.pending", target="dev-2").items
    assert [e.outcome for e in reused] == ["alert"]  # a leaked token or a cloned image


def test_a_resent_enrolling_hello_is_reacked_not_reused(hub: HubSim) -> None:
    issued = token(hub)
    dev = hub.device("dev-1")
    hello = dev.hello(issued.secret)

    hub.send(hello)
    hub.send(hello)  # the first ack was lost

    assert hub.acks(dev) == [HubAck(committed=((1, 1),))] * 2
    stored = hub.store.enrollment_tokens.get(issued.id)
    assert stored is not None
    assert stored.uses == 1


def test_fleet_token_enrolls_many_until_it_expires(hub: HubSim) -> None:
    issued = token(hub, "fleet", expires_at=hub.clock.now_ms() + 3_600_000)
    devices = [hub.device(f"dev-{i}") for i in range(3)]

    hub.send(*(d.hello(issued.secret) for d in devices))
    hub.clock.advance(3600)
    late = hub.device("dev-late")
    hub.send(late.hello(issued.secret))

    assert [device_row(hub, d.id).status for d in devices] == ["active"] * 3
    assert device_row(hub, "dev-late").status == "pending"
    assert audit_actions(hub)[-1] == ("device.pending", "dev-late", "token_expired")


def test_revoked_token_enrolls_nobody(hub: HubSim) -> None:
    issued = token(hub, "fleet")
    enrollment.revoke_token(hub.store, issued.id, by="cli", now_ms=hub.clock.now_ms())
    dev = hub.device("dev-1")

    hub.send(dev.hello(issued.secret))

    assert device_row(hub, "dev-1").status == "pending"
    assert audit_actions(hub)[-1] == ("device.pending", "dev-1", "token_revoked")


def test_hello_without_token_waits_for_approval(hub: HubSim) -> None:
    dev = hub.device("dev-1")
    hello = dev.hello(active=ModelRef("digits", 1, "ab" * 32))

    hub.send(hello)
    assert device_row(hub, "dev-1").status == "pending"
    assert audit_actions(hub) == [("device.pending", "dev-1", "no_token")]
    waiting = HubAck(committed=(), refused=((1, "pending: no_token"),))
    assert hub.acks(dev) == [waiting]  # the agent logs why it waits
    before = hub.snapshot()
    hub.send(hello, dev.frame(Telemetry(uptime_s=1)))  # keeps trying: refused, nothing else
    assert hub.snapshot() == before
    assert hub.acks(dev) == [waiting]  # the hello is answered again; the telemetry is not
    assert [r[2] for r in hub.rejections()] == ["pending", "pending"]

    enrollment.approve(hub.store, "dev-1", by="token:operator", now_ms=hub.clock.now_ms())
    hub.send(hello)

    assert hub.acks(dev) == [HubAck(committed=((1, 1),))]
    row = device_row(hub, "dev-1")
    assert (row.status, row.enrolled_by, row.active_version) == (
        "active",
        "token:operator",
        1,
    )


def test_a_pending_device_enrolls_when_it_brings_a_token(hub: HubSim) -> None:
    dev = hub.device("dev-1")
    hub.send(dev.hello())
    issued = token(hub)

    hub.send(dev.hello(issued.secret))

    assert device_row(hub, "dev-1").status == "active"
    assert device_row(hub, "dev-1").pending_reason is None
    assert hub.acks(dev) == [
        HubAck(committed=(), refused=((1, "pending: no_token"),)),
        HubAck(committed=((2, 2),)),
    ]


def test_a_token_replaces_a_squatters_pending_key(hub: HubSim) -> None:
    squatter = SimDevice("dev-1", hub.topics, hub.clock)
    hub.send(squatter.hello())
    issued = token(hub)
    dev = hub.device("dev-1")

    hub.send(dev.hello(issued.secret))

    assert device_row(hub, "dev-1").public_key == dev.public_hex


def test_another_key_for_a_pending_device_is_refused_and_alerted(hub: HubSim) -> None:
    dev = hub.device("dev-1")
    hub.send(dev.hello())
    before = hub.snapshot()
    squatter = SimDevice("dev-1", hub.topics, hub.clock)

    hub.send(squatter.hello())

    assert hub.snapshot() == before
    assert hub.rejections() == [("device:dev-1", "key_conflict", "identity_mismatch")]


def test_hello_with_another_key_for_an_active_device_is_refused_and_alerted(
    hub: HubSim,
) -> None:
    hub.device("dev-1", enrolled=True)
    issued = token(hub)
    before = hub.snapshot()
    clone = SimDevice("dev-1", hub.topics, hub.clock)

    hub.send(clone.hello(issued.secret))

    assert hub.snapshot() == before
    assert hub.acks("dev-1") == []
    assert hub.rejections() == [("device:dev-1", "key_change_refused", "identity_mismatch")]


def test_a_key_already_enrolled_under_another_id_is_refused_and_alerted(hub: HubSim) -> None:
    first = hub.device("dev-1", enrolled=True)
    issued = token(hub)
    before = hub.snapshot()
    copy = SimDevice("dev-2", hub.topics, hub.clock, key=first.key)  # the same key, a new id

    hub.send(copy.hello(issued.secret))

    assert hub.snapshot() == before  # no device, no pending row, the token unused
    assert hub.acks("dev-2") == []
    assert hub.rejections() == [("device:dev-2", "key_reused", "identity_mismatch")]


def test_a_revoked_devices_key_cannot_enroll_under_a_new_id(hub: HubSim) -> None:
    first = hub.device("dev-1", enrolled=True)
    hub.store.devices.revoke("dev-1")
    issued = token(hub)
    copy = SimDevice("dev-9", hub.topics, hub.clock, key=first.key)

    hub.send(copy.hello(issued.secret))

    assert hub.store.devices.find("dev-9") is None
    assert hub.rejections()[-1] == ("device:dev-9", "key_reused", "identity_mismatch")


def test_hello_whose_signature_does_not_prove_its_key_is_refused(hub: HubSim) -> None:
    dev = hub.device("dev-1")
    issued = token(hub)
    before = hub.snapshot()

    hello = Hello(public_key=dev.public_hex, agent_version="1.0", enrollment_token=issued.secret)
    hub.send(dev.frame(hello, key=Ed25519PrivateKey.generate()))

    assert hub.snapshot() == before
    assert hub.rejections() == [("device:dev-1", "frame_rejected", "bad_signature")]


def test_re_hello_updates_version_and_tags(hub: HubSim) -> None:
    issued = token(hub, tags={"region": "eu"})
    dev = hub.device("dev-1")
    hub.send(dev.hello(issued.secret, tags={"hw": "pi4"}))

    hub.send(
        dev.frame(
            Hello(
                public_key=dev.public_hex,
                agent_version="2.0",
                tags={"hw": "pi5", "region": "us"},
                active=ModelRef("digits", 2, "cd" * 32),
            )
        )
    )

    row = device_row(hub, "dev-1")
    assert (row.agent_version, row.tags, row.active_version) == (
        "2.0",
        {"hw": "pi5", "region": "eu"},
        2,
    )


def test_pending_devices_are_capped(tmp_path: Path) -> None:
    hub = HubSim(tmp_path)
    hub.ingest.max_pending_devices = 2
    hub.send(*(hub.device(f"dev-{i}").hello() for i in range(3)))

    assert hub.store.devices.count() == 2
    assert hub.rejections() == [("device:dev-2", "frame_rejected", "pending_full")]


# ---------------------------------------------------------------------- operator actions


def test_revoked_device_is_refused_with_an_alert(hub: HubSim) -> None:
    dev = hub.device("dev-1", enrolled=True)
    enrollment.revoke(hub.store, "dev-1", by="token:admin", now_ms=hub.clock.now_ms())
    before = hub.snapshot()

    hub.send(dev.hello(), dev.frame(Telemetry(uptime_s=1)))

    assert hub.snapshot() == before
    assert hub.publisher.sent == []
    assert [r[1] for r in hub.rejections()] == ["revoked_key_in_use"] * 2


def test_approve_and_revoke_refuse_impossible_moves(hub: HubSim) -> None:
    hub.device("dev-1", enrolled=True)
    now = hub.clock.now_ms()
    with pytest.raises(Conflict):
        enrollment.approve(hub.store, "dev-1", by="cli", now_ms=now)
    enrollment.revoke(hub.store, "dev-1", by="cli", now_ms=now)
    with pytest.raises(Conflict):
        enrollment.revoke(hub.store, "dev-1", by="cli", now_ms=now)
    with pytest.raises(NotFound):
        enrollment.approve(hub.store, "ghost", by="cli", now_ms=now)
    with pytest.raises(Conflict):
        enrollment.preauthorize(hub.store, "dev-1", "00" * 32, by="cli", now_ms=now)
    with pytest.raises(InvalidRequest):
        enrollment.preauthorize(hub.store, "dev-2", "not-hex", by="cli", now_ms=now)


def test_operator_actions_are_audited_with_key_ids_only(hub: HubSim) -> None:
    dev = hub.device("dev-1")
    hub.send(dev.hello())
    now = hub.clock.now_ms()
    enrollment.approve(hub.store, "dev-1", by="token:op", now_ms=now)
    enrollment.revoke(hub.store, "dev-1", by="token:admin", now_ms=now)

    entries = list(reversed(hub.store.audit.page().items))
    assert [(e.actor, e.action) for e in entries] == [
        ("device:dev-1", "device.pending"),
        ("token:op", "device.approve"),
        ("token:admin", "device.revoke"),
    ]
    assert all(dev.public_hex not in e.detail for e in entries)


# ---------------------------------------------------------------------- the pure decision


HELLO = Hello(public_key="aa" * 32, agent_version="1.0", enrollment_token="secret")
VALID = EnrollmentToken("tok-1", "fleet", 0, "cli", uses=3)
PENDING = Device("dev-1", "aa" * 32, "pending", first_seen=0)


@pytest.mark.parametrize(
    ("device", "token_row", "pending", "expected"),
    [
        pytest.param(None, VALID, 0, Enroll("tok-1", {}), id="new_with_token"),
        pytest.param(None, None, 0, Pend("token_unknown"), id="new_unknown_token"),
        pytest.param(None, None, 5, Refuse("pending_full"), id="new_but_full"),
        pytest.param(PENDING, VALID, 0, Enroll("tok-1", {}), id="pending_with_token"),
        pytest.param(PENDING, None, 0, Refuse("pending", why="token_unknown"), id="pending_still"),
        pytest.param(
            replace(PENDING, public_key="bb" * 32),
            None,
            0,
            Refuse("identity_mismatch", "key_conflict"),
            id="pending_other_key",
        ),
        pytest.param(None, replace(VALID, kind="single", uses=1), 0, Pend("token_used"), id="used"),
    ],
)
def test_enrollment_decision_table(
    device: Device | None,
    token_row: EnrollmentToken | None,
    pending: int,
    expected: Decision,
) -> None:
    claim = Claim("dev-1", 1, HELLO)
    assert decide(claim, device, token_row, now_ms=0, pending=pending, max_pending=5) == expected


def test_a_pending_device_hears_why_a_few_times_a_minute_and_is_admitted_nowhere(
    hub: HubSim,
) -> None:
    issued = token(hub, "fleet", expires_at=hub.clock.now_ms() + 1000)
    hub.clock.advance(2)  # the token expired
    dev = hub.device("dev-1")
    for _ in range(10):  # a device looping on its hello (seqs 1 to 10)
        hub.send(dev.hello(issued.secret))

    answers = hub.acks(dev)
    assert answers == [
        HubAck(committed=(), refused=((seq, "pending: token_expired"),))
        for seq in range(1, 1 + PENDING_ANSWERS_PER_MIN)
    ]
    row = device_row(hub, "dev-1")
    assert (row.status, row.pending_reason) == ("pending", "token_expired")
    identity = hub.store.devices.identity("dev-1")
    assert identity is not None
    assert identity.up_window is None  # nothing admitted
    hub.clock.advance(60)
    hub.send(dev.hello(issued.secret))
    assert hub.acks(dev) == [HubAck(committed=(), refused=((11, "pending: token_expired"),))]
