"""The shadow run's protocol parts: ``DesiredState.shadow`` (an assignment checked against
its own high-water mark, with every rule of a served one), ``DeviceConfig.shadow_sample``
and ``DataDelta.shadow`` (a :class:`ShadowReport`), and their backward compatibility.

Attack tests assert, as in test_trust.py, that the attack fails with its own error and the
device's trusted state is byte-identical afterwards (``refused``).
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol import metadata, schema, trust
from protocol.errors import (
    DeviceMismatch,
    EqualVersionConflict,
    Expired,
    Malformed,
    NotReleased,
    Rollback,
    ThresholdNotMet,
    WrongKind,
)
from protocol.messages import DataDelta, DesiredState, DeviceConfig, ModelRef, ShadowReport
from protocol.trust import TrustedState
from tests.protocol.strategies import model_refs, shadow_reports
from tests.protocol.trust_sim import ASSIGNMENT_TTL, Device, TrustSim, refused

# ---------------------------------------------------------------- the codec


@given(shadow_reports())
def test_a_shadow_report_survives_json(report: ShadowReport) -> None:
    assert schema.from_json(ShadowReport, schema.to_json(report)) == report


@given(shadow_reports(), st.integers(0, 7), st.integers(1, 10**6))
def test_a_report_agreeing_more_often_than_it_ran_is_refused(
    report: ShadowReport, position: int, extra: int
) -> None:
    values: dict[str, Any] = schema.to_json(report)
    if not values["inputs"]:
        values["inputs"], values["agreed"] = [0], [0]
    c = position % len(values["inputs"])
    values["agreed"][c] = values["inputs"][c] + extra
    with pytest.raises(Malformed, match="agreed"):
        schema.from_json(ShadowReport, values)


@given(model_refs, st.lists(st.integers(0, 100), min_size=1, max_size=5))
def test_a_report_whose_counts_differ_in_length_is_refused(
    model: ModelRef, inputs: list[int]
) -> None:
    with pytest.raises(Malformed, match="differ in length"):
        ShadowReport(model, tuple(inputs), tuple(inputs[:-1]))


@given(model_refs, st.lists(st.integers(0, 100), max_size=5))
def test_a_report_with_more_errors_than_inputs_is_refused(
    model: ModelRef, inputs: list[int]
) -> None:
    with pytest.raises(Malformed, match="errors"):
        ShadowReport(model, tuple(inputs), tuple(inputs), errors=sum(inputs) + 1)


def test_a_data_window_from_an_older_agent_still_decodes_with_no_shadow() -> None:
    old = {"window_start": 1, "window_end": 2, "features": [], "inference_count": 3}
    assert schema.from_json(DataDelta, old).shadow is None


def test_a_desired_state_from_an_older_hub_still_decodes_with_no_shadow() -> None:
    old = {"config": {"window_s": 30.0}, "assignment": None, "release_list": None}
    desired = schema.from_json(DesiredState, old)
    assert (desired.shadow, desired.config.shadow_sample) == (None, 0.2)


@pytest.mark.parametrize("share", [-0.1, 1.5])
def test_a_shadow_sample_outside_zero_to_one_is_refused(share: float) -> None:
    with pytest.raises(Malformed, match="shadow_sample"):
        DeviceConfig(shadow_sample=share)


# ---------------------------------------------------------------- trust


def shadow_ready() -> tuple[TrustSim, Device]:
    """A device serving vision v1 (assignment v1), with vision v2 released."""
    sim = TrustSim()
    device = Device(sim)
    device.refresh()
    device.install()
    sim.add_release()
    sim.beat()
    device.refresh()
    return sim, device


def shadow_doc(sim: TrustSim, version: int, signers: Any = None) -> Any:
    """An assignment of the newest release to the device, as the hub's shadow entry."""
    entry = sim.release.entries[-1]
    release_version, release_sha = sim.release.version, metadata.payload_sha256(sim.release_doc())
    doc = metadata.Assignment(
        sim.device_id, version, sim.now + ASSIGNMENT_TTL, release_version, release_sha, entry
    )
    return metadata.sign(doc, signers if signers is not None else sim.signers["rollout"])


def run_shadow(device: Device, doc: Any) -> trust.AssignmentVerdict:
    verdict = trust.verify_shadow(device.state, doc, device.now, device_id=device.sim.device_id)
    device.state = verdict.state
    return verdict


def test_a_shadow_assignment_raises_its_own_mark_and_leaves_the_served_one() -> None:
    sim, device = shadow_ready()
    verdict = run_shadow(device, shadow_doc(sim, 2))
    assert verdict.status == "new"
    assert verdict.assignment.entry == sim.release.entries[-1]
    assert (device.state.assignment_version, device.state.shadow_version) == (1, 2)


def test_the_served_assignment_is_not_a_rollback_after_a_newer_shadow() -> None:
    sim, device = shadow_ready()
    run_shadow(device, shadow_doc(sim, 5))
    assert device.install().status == "unchanged"


def test_the_same_shadow_again_is_unchanged() -> None:
    sim, device = shadow_ready()
    doc = shadow_doc(sim, 2)
    run_shadow(device, doc)
    before = device.state
    assert run_shadow(device, doc).status == "unchanged"
    assert device.state is before


def test_a_stale_shadow_assignment_is_refused_as_a_rollback() -> None:
    sim, device = shadow_ready()
    stale = shadow_doc(sim, 2)
    run_shadow(device, shadow_doc(sim, 3))
    with refused(device, Rollback):
        run_shadow(device, stale)


def test_a_stale_shadow_is_refused_after_a_restart() -> None:
    sim, device = shadow_ready()
    stale = shadow_doc(sim, 2)
    run_shadow(device, shadow_doc(sim, 3))
    device.state = TrustedState.from_bytes(device.state.to_bytes())
    with refused(device, Rollback):
        run_shadow(device, stale)


@pytest.mark.parametrize("role", ["release", "heartbeat"])
def test_a_shadow_assignment_signed_by_another_role_is_refused(role: str) -> None:
    sim, device = shadow_ready()
    with refused(device, ThresholdNotMet):
        run_shadow(device, shadow_doc(sim, 2, sim.signers[role]))  # type: ignore[index]


def test_a_heartbeat_presented_as_a_shadow_assignment_is_refused() -> None:
    sim, device = shadow_ready()
    with refused(device, WrongKind):
        run_shadow(device, sim.heartbeat_doc())


def test_another_devices_shadow_assignment_is_refused() -> None:
    sim, device = shadow_ready()
    sim.device_id = "dev-2"
    doc = shadow_doc(sim, 2)
    sim.device_id = "dev-1"
    with refused(device, DeviceMismatch):
        run_shadow(device, doc)


def test_an_expired_shadow_assignment_is_refused() -> None:
    sim, device = shadow_ready()
    doc = shadow_doc(sim, 2)
    sim.now += ASSIGNMENT_TTL
    sim.beat()
    device.refresh()
    with refused(device, Expired):
        run_shadow(device, doc)


def test_a_shadow_of_an_unreleased_version_is_refused() -> None:
    sim, device = shadow_ready()
    entries = sim.release.entries
    sim.release.entries = entries[:-1]
    sim.release.version += 1
    sim.beat()
    device.refresh()
    sim.release.entries = entries  # the hub signs a shadow of an entry the list dropped
    sim.release.version -= 1
    with refused(device, NotReleased):
        run_shadow(device, shadow_doc(sim, 2))


def test_the_same_shadow_version_with_other_content_is_refused() -> None:
    sim, device = shadow_ready()
    run_shadow(device, shadow_doc(sim, 2))
    sim.now += 1
    with refused(device, EqualVersionConflict):
        run_shadow(device, shadow_doc(sim, 2))


def test_a_rollout_key_rotation_resets_the_shadow_mark() -> None:
    sim, device = shadow_ready()
    run_shadow(device, shadow_doc(sim, 7))
    sim.rotate("rollout")
    device.refresh()
    assert (device.state.shadow_version, device.state.shadow_sha256) == (0, None)
    assert run_shadow(device, shadow_doc(sim, 1)).status == "new"
