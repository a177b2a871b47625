"""Attacks on release lists, heartbeats and assignments (threat-model T1-T3, T6, T9, T15).

Every attack test asserts two things: the attack fails with its own error, and the
device's trusted state is byte-identical afterwards (``refused``).
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import hashlib
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocol import canonical, metadata, schema, trust
from protocol.documents import DocSignature, SignedDocument, document_type, sign_document
from protocol.errors import (
    ContentMismatch,
    DeviceMismatch,
    EqualVersionConflict,
    Expired,
    Incompatible,
    Malformed,
    MixAndMatch,
    NotReleased,
    ProtocolError,
    Rollback,
    ThresholdNotMet,
    WrongKind,
)
from protocol.messages import TrustVersions
from protocol.metadata import Compat, ReleaseEntry
from protocol.trust import TrustedState
from tests.protocol.test_metadata import heartbeats, release_lists, roots, sha256s
from tests.protocol.trust_sim import (
    COMPAT,
    DAY,
    HEARTBEAT_TTL,
    YEAR,
    Device,
    TrustSim,
    fixed_key,
    refused,
)

STRANGER = fixed_key("stranger")


def ready() -> tuple[TrustSim, Device]:
    """A device that trusts root v1, release list v1, heartbeat v1 and runs vision v1."""
    sim = TrustSim()
    device = Device(sim)
    device.refresh()
    device.install()
    return sim, device


def with_payload(doc: SignedDocument, values: Any) -> SignedDocument:
    """``doc`` with another payload and its original signatures."""
    body = base64.b64encode(canonical.dumps(values)).decode()
    return SignedDocument(body, doc.payloadType, doc.signatures)


# ---------------------------------------------------------------- the happy path


def test_device_installs_what_is_released_assigned_and_fresh() -> None:
    sim, device = ready()
    entry = sim.add_release()
    sim.assign(entry)
    sim.beat()
    device.refresh()
    verdict = device.install()
    assert verdict.status == "new"
    assert verdict.assignment.entry == entry
    assert device.state.versions() == TrustVersions(root=1, release=2, assignment=2, heartbeat=2)


def test_same_assignment_again_is_unchanged_not_an_error() -> None:
    sim, device = ready()
    before = device.state
    verdict = trust.verify_assignment(
        before, sim.assignment_doc(), sim.now, device_id=sim.device_id
    )
    assert verdict.status == "unchanged"
    assert verdict.state is before


def test_same_release_list_and_heartbeat_again_change_nothing() -> None:
    sim, device = ready()
    state = device.state
    assert trust.update_release_list(state, sim.release_doc(), sim.now) is state
    assert trust.update_heartbeat(state, sim.heartbeat_doc(), sim.now) is state


# ---------------------------------------------------------------- signatures (T1, B5-B8)


def test_agent_refuses_tampered_assignment_payload() -> None:
    sim, device = ready()
    sim.assign()
    doc = sim.assignment_doc()
    values = json.loads(doc.payload_bytes())
    values["entry"]["sha256"] = "0" * 64
    with refused(device, ThresholdNotMet):
        device.install(with_payload(doc, values))


def test_agent_refuses_assignment_signed_with_unknown_key() -> None:
    sim, device = ready()
    sim.assign()
    sim.signers["rollout"] = [STRANGER]
    with refused(device, ThresholdNotMet):
        device.install()


def test_agent_refuses_unsigned_assignment() -> None:
    sim, device = ready()
    sim.assign()
    sim.signers["rollout"] = []
    with refused(device, ThresholdNotMet):
        device.install()


def test_agent_refuses_heartbeat_presented_as_assignment() -> None:
    sim, device = ready()
    with refused(device, WrongKind):
        device.install(sim.heartbeat_doc())


def test_agent_refuses_heartbeat_signature_relabelled_as_assignment() -> None:
    """The payload type is inside the signature: relabelling breaks it."""
    sim, device = ready()
    sim.assign()
    beat = sim.heartbeat_doc()
    relabelled = SignedDocument(
        sim.assignment_doc().payload, document_type("assignment"), beat.signatures
    )
    with refused(device, ThresholdNotMet):
        device.install(relabelled)


def test_duplicated_signature_does_not_reach_the_threshold() -> None:
    """tuf-conformance test_duplicate_keys: one signature nine times for a threshold of 6."""
    sim, device = ready()
    sim.set_role("rollout", [sim.new_key("rollout") for _ in range(6)], 6)
    sim.root.version += 1
    sim.publish_root()
    device.refresh()
    sim.assign()
    signed = metadata.sign(sim.assignment.build(), sim.signers["rollout"][:1])
    duplicated = dataclasses.replace(signed, signatures=signed.signatures * 9)
    with refused(device, ThresholdNotMet):
        device.install(duplicated)
    sim.signers["rollout"] = sim.signers["rollout"][:5]
    with refused(device, ThresholdNotMet):
        device.install()


def test_garbage_signatures_are_ignored_not_crashed_on() -> None:
    sim, device = ready()
    sim.assign()
    doc = sim.assignment_doc()
    keyid = doc.signatures[0].keyid
    junk = (DocSignature(keyid, "!!not base64"), DocSignature(keyid, "AAAA"))
    with refused(device, ThresholdNotMet):
        device.install(dataclasses.replace(doc, signatures=junk))


# ---------------------------------------------------------------- rollback (T2)


def test_agent_refuses_replayed_older_assignment() -> None:
    sim, device = ready()
    old = sim.assignment_doc()
    sim.assign()
    device.install()
    with refused(device, Rollback):
        device.install(old)


def test_agent_refuses_older_assignment_after_a_restart() -> None:
    sim, device = ready()
    old = sim.assignment_doc()
    sim.assign()
    device.install()
    device.state = TrustedState.from_bytes(device.state.to_bytes())
    with refused(device, Rollback):
        device.install(old)


def test_rollback_is_a_new_assignment_pointing_at_an_older_release() -> None:
    sim, device = ready()
    first = sim.assignment.entry
    sim.assign(sim.add_release())
    sim.beat()
    device.refresh()
    device.install()
    sim.assign(first)  # assignment v3 (newer) back to counter 1: above the floor (0)
    verdict = device.install()
    assert (verdict.status, verdict.assignment.entry) == ("new", first)


def test_agent_refuses_assignment_below_the_rollback_floor() -> None:
    sim, device = ready()
    first = sim.assignment.entry
    sim.add_release()
    sim.release.min_counter = 2  # the release role rules counter 1 out for good
    sim.beat()
    device.refresh()
    assert device.state.counter_floor == 2
    sim.assign(first)  # signed with the real rollout key
    with refused(device, Rollback):
        device.install()


def test_assignment_built_on_an_older_release_list_installs_a_still_released_entry() -> None:
    sim, device = ready()
    entry = sim.add_release()
    sim.assign(entry)  # built on release list v2
    sim.add_release()  # v3 still lists the entry
    sim.beat()
    device.refresh()
    assert device.install().assignment.entry == entry


def test_agent_refuses_replayed_older_release_list() -> None:
    sim, device = ready()
    old = sim.release_doc()
    for _ in range(3):
        sim.add_release()
    sim.beat()
    device.refresh()
    with refused(device, Rollback):
        device.state = trust.update_release_list(device.state, old, sim.now)


def test_agent_refuses_replayed_older_heartbeat() -> None:
    sim, device = ready()
    old = sim.heartbeat_doc()
    sim.beat()
    device.refresh()
    with refused(device, Rollback):
        device.state = trust.update_heartbeat(device.state, old, sim.now)


def test_release_list_lowering_the_rollback_floor_is_refused() -> None:
    sim, device = ready()
    sim.add_release()
    sim.release.min_counter = 2
    sim.beat()
    device.refresh()
    sim.add_release()
    sim.release.min_counter = 1  # a newer list that would re-admit counter 1
    with refused(device, Rollback):
        device.state = trust.update_release_list(device.state, sim.release_doc(), sim.now)


def test_release_list_of_the_trusted_version_with_other_content_is_ignored() -> None:
    sim, device = ready()
    sim.release.expires += 1
    with refused(device, EqualVersionConflict):
        device.state = trust.update_release_list(device.state, sim.release_doc(), sim.now)


def test_heartbeat_of_the_trusted_version_with_other_content_is_ignored() -> None:
    sim, device = ready()
    sim.heartbeat.expires += 1
    with refused(device, EqualVersionConflict):
        device.state = trust.update_heartbeat(device.state, sim.heartbeat_doc(), sim.now)


def test_assignment_of_the_accepted_version_with_other_content_is_ignored() -> None:
    sim, device = ready()
    sim.assignment.expires += 1
    with refused(device, EqualVersionConflict):
        device.install()


# ---------------------------------------------------------------- wrong target (T1c, T9)


def test_agent_refuses_assignment_for_another_device() -> None:
    sim, device = ready()
    sim.assign()
    sim.assignment.device_id = "dev-2"
    with refused(device, DeviceMismatch):
        device.install()


@pytest.mark.parametrize(
    "change",
    [
        pytest.param({"sha256": hashlib.sha256(b"evil").hexdigest()}, id="unreleased-hash"),
        pytest.param({"length": 10**9}, id="other-length"),
        pytest.param({"release_counter": 99}, id="inflated-counter"),
        pytest.param({"compat": Compat(opset=9, io_signature="in:x;out:y")}, id="other-compat"),
        pytest.param({"version": 7}, id="unreleased-version"),
    ],
)
def test_agent_refuses_unreleased_entry_signed_with_the_real_rollout_key(
    change: dict[str, Any],
) -> None:
    """A stolen online key cannot ship bytes the offline release key did not sign (T1c)."""
    sim, device = ready()
    sim.assign(dataclasses.replace(sim.assignment.entry, **change))
    with refused(device, NotReleased):
        device.install()


# ---------------------------------------------------------------- mix and match (T6)


def test_assignment_built_on_release_v4_with_release_v3_is_refused() -> None:
    sim, device = ready()
    sim.add_release()
    sim.add_release()  # release list v3
    sim.beat()
    device.refresh()
    sim.assign(sim.add_release())  # built on v4, which the broker withholds
    with refused(device, MixAndMatch):
        device.install()


def test_heartbeat_pinning_release_v4_refuses_release_v3() -> None:
    sim = TrustSim()
    for _ in range(2):
        sim.add_release()
    stale = sim.release_doc()  # v3
    sim.add_release()
    sim.beat()  # pins v4
    device = Device(sim)
    device.state = trust.update_heartbeat(device.state, sim.heartbeat_doc(), sim.now)
    with refused(device, MixAndMatch):
        device.state = trust.update_release_list(device.state, stale, sim.now)


def test_heartbeat_pinning_a_newer_release_list_stops_installs_from_the_stale_one() -> None:
    sim, device = ready()
    sim.assign()  # a new assignment on release v1
    sim.add_release()
    sim.beat()  # pins v2, which the broker withholds
    device.state = trust.update_heartbeat(device.state, sim.heartbeat_doc(), sim.now)
    with refused(device, MixAndMatch):
        device.install()


def test_heartbeat_pinning_the_trusted_version_with_another_hash_is_refused() -> None:
    sim, device = ready()
    sim.beat()
    sim.heartbeat.release_sha256 = "0" * 64
    with refused(device, MixAndMatch):
        device.refresh()


def test_release_list_differing_from_the_heartbeats_pin_is_refused() -> None:
    sim = TrustSim()
    sim.add_release()
    sim.beat()
    sim.release.expires += 1  # same version v2, other bytes than the heartbeat pinned
    device = Device(sim)
    device.state = trust.update_heartbeat(device.state, sim.heartbeat_doc(), sim.now)
    with refused(device, MixAndMatch):
        device.state = trust.update_release_list(device.state, sim.release_doc(), sim.now)


def test_release_list_newer_than_the_heartbeats_pin_is_accepted() -> None:
    sim, device = ready()
    sim.add_release()
    device.refresh()  # heartbeat still pins v1: the hub has not beaten since
    assert device.state.versions().release == 2


def test_assignment_without_any_trusted_release_list_is_refused() -> None:
    sim = TrustSim()
    device = Device(sim)
    device.state = trust.update_heartbeat(device.state, sim.heartbeat_doc(), sim.now)
    with refused(device, MixAndMatch):
        device.install()


# ---------------------------------------------------------------- freeze and expiry (T3, B17)


def test_agent_refuses_expired_assignment() -> None:
    sim, device = ready()
    sim.assign()
    sim.assignment.expires = sim.now
    with refused(device, Expired):
        device.install()


def test_agent_refuses_expired_heartbeat() -> None:
    sim, device = ready()
    sim.beat()
    sim.now += HEARTBEAT_TTL
    with refused(device, Expired):
        device.refresh()


def test_agent_refuses_expired_release_list() -> None:
    sim, device = ready()
    sim.release.expires = sim.now + DAY
    sim.release.version += 1
    sim.now += DAY
    with refused(device, Expired):
        device.state = trust.update_release_list(device.state, sim.release_doc(), device.now)


def test_agent_refuses_to_install_from_an_expired_release_list() -> None:
    sim, device = ready()
    sim.now += 91 * DAY
    sim.beat()
    sim.assign()
    device.state = trust.update_heartbeat(device.state, sim.heartbeat_doc(), sim.now)
    with refused(device, Expired) as info:
        device.install()
    assert "release list" in str(info.value)


def test_everything_stops_when_the_trusted_root_has_expired() -> None:
    sim, device = ready()
    sim.now += YEAR
    sim.beat()
    sim.assign()
    for step in (device.refresh, device.install):
        with refused(device, Expired):
            step()


def test_valid_assignment_with_expired_heartbeat_is_not_installed() -> None:
    """T3b: a broker replays everything but can't make the heartbeat fresh: freeze."""
    sim, device = ready()
    sim.assign(sim.add_release())
    sim.beat()
    device.refresh()
    sim.now += HEARTBEAT_TTL
    assert trust.freeze_suspected(device.state, sim.now)
    with refused(device, Expired):
        device.install()


def test_freeze_is_suspected_until_a_heartbeat_is_trusted() -> None:
    sim = TrustSim()
    device = Device(sim)
    assert trust.freeze_suspected(device.state, sim.now)
    device.refresh()
    assert not trust.freeze_suspected(device.state, sim.now)
    assert trust.freeze_suspected(device.state, sim.now + HEARTBEAT_TTL)


# ---------------------------------------------------------------- clocks (T15)


def test_clock_set_back_a_year_keeps_an_expired_assignment_expired() -> None:
    """T15a: the time floor (hub time from the last heartbeat) outranks the device clock."""
    sim, device = ready()
    sim.assign()
    sim.assignment.expires = sim.now + DAY
    sim.now += 2 * DAY
    sim.beat()
    device.refresh()
    device.skew = -YEAR
    assert device.now == sim.now == device.state.time_floor
    with refused(device, Expired):
        device.install()


def test_functions_apply_the_time_floor_even_to_a_raw_clock() -> None:
    sim, device = ready()
    sim.assign()
    sim.assignment.expires = sim.now + DAY
    sim.now += 2 * DAY
    sim.beat()
    device.refresh()
    with pytest.raises(Expired):
        trust.verify_assignment(
            device.state, sim.assignment_doc(), sim.now - YEAR, device_id=sim.device_id
        )
    assert trust.freeze_suspected(device.state, sim.now - YEAR) is False


def test_heartbeat_raises_the_time_floor_and_it_never_falls() -> None:
    sim, device = ready()
    sim.now += DAY
    sim.beat()
    device.skew = -YEAR
    device.refresh()
    assert device.state.time_floor == sim.now
    assert trust.effective_now(device.state, 0) == sim.now


# ---------------------------------------------------------------- the bytes and the runtime


ENTRY = ReleaseEntry("vision", 1, 1, hashlib.sha256(b"model").hexdigest(), 5, COMPAT)


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"modem", id="one-byte-flipped"),
        pytest.param(b"model!", id="one-byte-longer"),
        pytest.param(b"mode", id="truncated"),
        pytest.param(b"", id="empty"),
    ],
)
def test_artifact_with_other_bytes_is_refused(data: bytes) -> None:
    with pytest.raises(ContentMismatch):
        trust.check_artifact(ENTRY, data)


def test_artifact_length_is_checked_before_hashing() -> None:
    with pytest.raises(ContentMismatch, match="bytes where"):
        trust.check_artifact(ENTRY, b"x" * 10**6)


def test_artifact_with_the_signed_bytes_passes() -> None:
    trust.check_artifact(ENTRY, b"model")


@pytest.mark.parametrize(
    ("opset_range", "io_signature"),
    [
        pytest.param((18, 21), COMPAT.io_signature, id="opset-too-old"),
        pytest.param((1, 16), COMPAT.io_signature, id="opset-too-new"),
        pytest.param((1, 30), "in:x:float32[?,5];out:probs:float32[?,3]", id="other-io"),
    ],
)
def test_incompatible_release_is_refused(opset_range: tuple[int, int], io_signature: str) -> None:
    with pytest.raises(Incompatible):
        trust.check_compat(ENTRY, opset_range=opset_range, io_signature=io_signature)


def test_compatible_release_passes() -> None:
    trust.check_compat(ENTRY, opset_range=(17, 17), io_signature=COMPAT.io_signature)


# ---------------------------------------------------------------- persistence


def test_trusted_state_survives_storage() -> None:
    sim, device = ready()
    sim.assign(sim.add_release())
    sim.beat()
    device.refresh()
    device.install()
    stored = device.state.to_bytes()
    assert TrustedState.from_bytes(stored) == device.state
    assert TrustedState.from_bytes(stored).to_bytes() == stored


@settings(max_examples=60, deadline=None)
@given(
    root=roots(),
    release=st.none() | release_lists(),
    heartbeat=st.none() | heartbeats,
    marks=st.tuples(st.integers(0, 2**62), st.integers(0, 2**62), st.integers(0, 2**62)),
    shas=st.tuples(sha256s, sha256s),
)
def test_any_trusted_state_survives_storage(
    root: metadata.Root,
    release: metadata.ReleaseList | None,
    heartbeat: metadata.Heartbeat | None,
    marks: tuple[int, int, int],
    shas: tuple[str, str],
) -> None:
    state = TrustedState(
        root,
        release=release,
        release_sha256=shas[0] if release else None,
        heartbeat=heartbeat,
        assignment_version=marks[0],
        assignment_sha256=shas[1] if marks[0] else None,
        counter_floor=marks[1],
        time_floor=marks[2],
    )
    assert TrustedState.from_bytes(state.to_bytes()) == state


@pytest.mark.parametrize(
    "edit",
    [
        pytest.param(lambda s: s.update(release_sha256=None), id="release-without-sha"),
        pytest.param(lambda s: s.update(assignment_sha256=None), id="version-without-sha"),
        pytest.param(lambda s: s.update(counter_floor=-1), id="negative-counter"),
        pytest.param(lambda s: s.update(time_floor=1.5), id="float-floor"),
        pytest.param(lambda s: s["root"].update(version=0), id="invalid-root"),
    ],
)
def test_corrupt_stored_state_is_malformed(edit: Any) -> None:
    _, device = ready()
    values = json.loads(device.state.to_bytes())
    edit(values)
    with pytest.raises(Malformed):
        TrustedState.from_bytes(json.dumps(values).encode())


# ---------------------------------------------------------------- fuzzing: only typed errors


def _all_updates(state: TrustedState, doc: SignedDocument, now: int) -> None:
    for call in (
        lambda: trust.update_root(state, [doc]),
        lambda: trust.update_release_list(state, doc, now),
        lambda: trust.update_heartbeat(state, doc, now),
        lambda: trust.verify_assignment(state, doc, now, device_id="dev-1"),
    ):
        with contextlib.suppress(ProtocolError):
            call()


SIM, READY = ready()


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=512))
def test_arbitrary_bytes_raise_only_protocol_errors(data: bytes) -> None:
    try:
        doc = SignedDocument.from_bytes(data)
    except ProtocolError:
        return
    _all_updates(READY.state, doc, SIM.now)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=70),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=6,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    kind=st.sampled_from(["root", "release", "assignment", "heartbeat"]),
    path=st.lists(st.integers(0, 7), min_size=1, max_size=3),
    value=json_values,
)
def test_mutated_documents_signed_by_the_right_key_raise_only_protocol_errors(
    kind: str, path: list[int], value: Any
) -> None:
    """Any field replaced by any JSON value, correctly signed: refused with a typed error."""
    sim, state = SIM, READY.state
    drafts: dict[str, metadata.Meta] = {
        "root": sim.root.build(),
        "release": sim.release.build(),
        "assignment": sim.assignment.build(),
        "heartbeat": sim.heartbeat.build(),
    }
    original = drafts[kind]
    role = metadata.ROLE[type(original)]
    values = _mutate(schema.to_json(original), path, value)
    doc = sign_document(values, metadata.KIND[type(original)], sim.signers[role])
    _all_updates(state, doc, sim.now)


def _mutate(values: Any, path: list[int], value: Any) -> Any:
    """Replace the field picked by ``path`` (indexes into sorted keys / list items)."""
    if not path or not isinstance(values, dict | list) or not values:
        return value
    if isinstance(values, dict):
        key = sorted(values)[path[0] % len(values)]
        return {**values, key: _mutate(values[key], path[1:], value)}
    index = path[0] % len(values)
    return [*values[:index], _mutate(values[index], path[1:], value), *values[index + 1 :]]
