"""Root of trust: the pinned root, the chain walk, key rotations and fast-forward recovery."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from protocol import metadata, trust
from protocol.documents import SignedDocument
from protocol.errors import Malformed, Rollback, ThresholdNotMet, VersionGap, WrongKind
from protocol.metadata import Root
from protocol.trust import TrustedState
from tests.protocol.trust_sim import DAY, YEAR, Device, TrustSim, fixed_key, refused

POOL = [fixed_key(f"rotation-{i}") for i in range(10)]


def ready(root_keys: int = 1, root_threshold: int = 1) -> tuple[TrustSim, Device]:
    """A device that trusts root v1, release list v1, heartbeat v1 and runs vision v1."""
    sim = TrustSim(root_keys=root_keys, root_threshold=root_threshold)
    device = Device(sim)
    device.refresh()
    device.install()
    return sim, device


def walk(device: Device) -> None:
    """Call update_root until it stops moving, as an agent does over several cycles."""
    while True:
        before = device.state
        device.state = trust.update_root(device.state, device.sim.root_chain)
        if device.state == before:
            return


# ---------------------------------------------------------------- the pinned root


def test_device_starts_from_its_pinned_root() -> None:
    sim = TrustSim(root_keys=3, root_threshold=2)
    state = TrustedState.initial(sim.root_chain[0], counter_floor=4, time_floor=sim.now)
    assert state.root == metadata.parse(Root, sim.root_chain[0])
    assert (state.release, state.heartbeat, state.assignment_version) == (None, None, 0)
    assert (state.counter_floor, state.time_floor) == (4, sim.now)


def test_pinned_root_below_its_own_threshold_is_refused() -> None:
    sim = TrustSim(root_keys=3, root_threshold=2)
    with pytest.raises(ThresholdNotMet):
        TrustedState.initial(sim.publish_root(signers=sim.signers["root"][:1]))


def test_pinned_root_must_be_a_root() -> None:
    with pytest.raises(WrongKind):
        TrustedState.initial(TrustSim().heartbeat_doc())


# ---------------------------------------------------------------- walking the chain


def test_device_that_missed_roots_catches_up_along_the_chain() -> None:
    sim, device = ready()
    for role in ("release", "rollout", "root"):
        sim.rotate(role)
    sim.root_chain.reverse()  # retained messages come in any order
    device.state = trust.update_root(device.state, sim.root_chain)
    assert device.state.root == sim.root.build()
    assert device.state.root.version == 4


def test_roots_at_or_below_the_trusted_version_are_history() -> None:
    sim, device = ready()
    sim.rotate("root")
    walk(device)
    sim.root.version = 1  # an old root re-signed with the new keys: still history
    stale = sim.publish_root()
    state = device.state
    assert trust.update_root(state, [sim.root_chain[0], stale]) is state


def test_root_skipping_a_version_is_refused() -> None:
    sim, device = ready()
    sim.root.version += 2  # v3, signed by the v1 keys, without v2
    sim.publish_root()
    with refused(device, VersionGap):
        device.state = trust.update_root(device.state, sim.root_chain)


def test_root_not_signed_by_the_old_threshold_is_refused() -> None:
    sim, device = ready(root_keys=3, root_threshold=2)
    old = sim.signers["root"]
    sim.rotate("root")
    sim.root_chain[-1:] = []
    sim.root.version = 2
    sim.publish_root(signers=[old[0], *sim.signers["root"]])  # 1 of the 2 old signatures
    with refused(device, ThresholdNotMet):
        device.state = trust.update_root(device.state, sim.root_chain)


def test_root_not_signed_by_its_own_threshold_is_refused() -> None:
    sim, device = ready(root_keys=3, root_threshold=2)
    old = sim.signers["root"]
    sim.rotate("root")
    sim.root_chain[-1:] = []
    sim.root.version = 2
    sim.publish_root(signers=[*old, sim.signers["root"][0]])  # 1 of the 2 new signatures
    with refused(device, ThresholdNotMet):
        device.state = trust.update_root(device.state, sim.root_chain)


def test_forged_candidate_does_not_hide_the_genuine_next_root() -> None:
    sim, device = ready()
    sim.root.version += 1
    forged = metadata.sign(sim.root.build(), [POOL[0]])
    genuine = metadata.sign(sim.root.build(), sim.signers["root"])
    device.state = trust.update_root(device.state, [forged, genuine])
    assert device.state.root.version == 2


def test_at_most_32_rotations_per_call_and_the_rest_next_time() -> None:
    sim, device = ready()
    for _ in range(40):
        sim.root.version += 1
        sim.publish_root()
    device.state = trust.update_root(device.state, sim.root_chain)
    assert device.state.root.version == 1 + trust.MAX_ROOT_ROTATIONS
    device.state = trust.update_root(device.state, sim.root_chain)
    assert device.state.root.version == 41


def test_bad_root_after_good_ones_is_reported_on_the_next_call() -> None:
    sim, device = ready()
    sim.rotate("rollout")
    sim.root.version += 1
    sim.publish_root(signers=[POOL[0]])  # v3, signed by nobody the device trusts
    device.state = trust.update_root(device.state, sim.root_chain)
    assert device.state.root.version == 2
    with refused(device, ThresholdNotMet):
        device.state = trust.update_root(device.state, sim.root_chain)


@pytest.mark.parametrize(
    ("junk", "error"),
    [
        pytest.param("heartbeat", WrongKind, id="heartbeat-in-root-chain"),
        pytest.param("garbage", Malformed, id="unreadable-payload"),
    ],
)
def test_junk_in_the_chain_is_reported_without_blocking_progress(
    junk: str, error: type[Exception]
) -> None:
    sim, device = ready()
    bad = (
        sim.heartbeat_doc()
        if junk == "heartbeat"
        else SignedDocument("e30=", sim.root_chain[0].payloadType, ())
    )
    with refused(device, error):
        device.state = trust.update_root(device.state, [bad, *sim.root_chain])
    sim.rotate("rollout")
    device.state = trust.update_root(device.state, [bad, *sim.root_chain])
    assert device.state.root.version == 2


# ---------------------------------------------------------------- python-tuf rotation matrix


@dataclass(frozen=True)
class RootVersion:
    """Root keys (indexes into POOL), threshold, and the keys that sign it."""

    keys: list[int]
    threshold: int
    sigs: list[int]
    error: type[Exception] | None = None


ROTATIONS = [
    pytest.param(
        [RootVersion([1], 1, [1]), RootVersion([2], 1, [2, 1]), RootVersion([2], 1, [2])],
        id="1-of-1-rotation",
    ),
    pytest.param(
        [RootVersion([1], 1, [3, 1, 4]), RootVersion([2], 1, [3, 2, 1, 4])],
        id="1-of-1-rotation-unused-signatures",
    ),
    pytest.param(
        [RootVersion([1], 1, [1]), RootVersion([2], 1, [2, 3, 4], ThresholdNotMet)],
        id="1-of-1-rotation-not-signed-with-old-key",
    ),
    pytest.param(
        [RootVersion([1], 1, [1]), RootVersion([2], 1, [1, 3, 4], ThresholdNotMet)],
        id="1-of-1-rotation-not-signed-with-new-key",
    ),
    pytest.param(
        [
            RootVersion([0, 1, 2, 3, 4], 3, [0, 2, 4]),
            RootVersion([0, 1, 2, 3, 4], 3, [0, 4, 1]),
            RootVersion([0, 1, 2, 3, 4], 3, [1, 2, 3]),
        ],
        id="3-of-5-any-key-combination",
    ),
    pytest.param(
        [RootVersion([0, 1, 2, 3, 4], 3, [0, 2, 4]), RootVersion([0, 1, 3, 4, 5], 3, [0, 4, 1])],
        id="3-of-5-one-key-rotated",
    ),
    pytest.param(
        [
            RootVersion([0, 1, 2, 3, 4], 3, [0, 2, 4]),
            RootVersion([0, 1, 3, 4, 5], 3, [0, 2, 4], ThresholdNotMet),
        ],
        id="3-of-5-one-key-rotated-without-3-new-signatures",
    ),
    pytest.param(
        [
            RootVersion([0, 1, 2, 3, 4], 3, [0, 2, 4]),
            RootVersion([0, 1, 3, 4, 5], 3, [0, 4, 5], ThresholdNotMet),
        ],
        id="3-of-5-one-key-rotated-without-3-old-signatures",
    ),
    pytest.param(
        [
            RootVersion([0, 1, 2, 3, 4], 3, [0, 2, 4]),
            RootVersion([5, 6, 7, 8, 9], 3, [0, 2, 4, 5, 6, 7]),
            RootVersion([5, 6, 7, 8, 9], 3, [5, 6, 7]),
        ],
        id="3-of-5-all-keys-rotated",
    ),
    pytest.param(
        [RootVersion([1, 2, 3], 1, [1]), RootVersion([1, 2, 3], 2, [1, 2])],
        id="threshold-bump-1-to-2-of-3",
    ),
    pytest.param(
        [RootVersion([1, 2, 3], 1, [1]), RootVersion([1, 2, 3], 2, [2], ThresholdNotMet)],
        id="threshold-bump-1-to-2-of-3-without-the-new-threshold",
    ),
    pytest.param(
        [RootVersion([1, 2, 3], 2, [1, 2]), RootVersion([1, 2, 3], 1, [1], ThresholdNotMet)],
        id="threshold-cut-2-to-1-of-3-without-the-old-threshold",
    ),
    pytest.param(
        [RootVersion([1], 1, [1]), RootVersion([1, 2], 2, [1, 2])],
        id="1-of-1-to-2-of-2",
    ),
]


@pytest.mark.parametrize("versions", ROTATIONS)
def test_root_rotation(versions: list[RootVersion]) -> None:
    """Publish each version in turn; the device ends on the last good one."""
    sim = TrustSim()
    sim.root_chain.clear()
    for number, spec in enumerate(versions, start=1):
        sim.set_role("root", [POOL[i] for i in spec.keys], spec.threshold)
        sim.root.version = number
        sim.publish_root(signers=[POOL[i] for i in spec.sigs])
    device = Device(sim)
    expected = versions[-1].error
    if expected is None:
        walk(device)
        assert device.state.root == metadata.parse(Root, sim.root_chain[-1])
        return
    with pytest.raises(expected):
        walk(device)
    assert device.state.root == metadata.parse(Root, sim.root_chain[-2])


def test_ceremony_rotating_one_of_three_root_keys() -> None:
    """threat-model T16: v2 swaps one of 3 keys; v3 signed by 2 survivors + the new key holds."""
    sim, device = ready(root_keys=3, root_threshold=2)
    lost, *survivors = sim.signers["root"]
    sim.set_role("root", [*survivors, POOL[0]], 2)
    sim.root.version += 1
    sim.publish_root(signers=[*survivors, POOL[0]])
    sim.root.version += 1
    sim.publish_root(signers=[*survivors, POOL[0]])
    walk(device)
    assert device.state.root.version == 3
    sim.root.version += 1
    sim.publish_root(signers=[lost, POOL[0]])  # the retired key counts for nothing
    with refused(device, ThresholdNotMet):
        walk(device)


# ---------------------------------------------------------------- fast-forward recovery (T7)


def test_fast_forward_recovery_after_rotating_the_rollout_key() -> None:
    sim, device = ready()
    sim.assignment.version = 999_999  # a stolen rollout key signs a huge version
    device.install()
    assert device.state.assignment_version == 999_999

    sim.rotate("rollout")
    sim.assignment.version = 1
    sim.assign()  # v2 now: still far below the mark
    device.refresh()
    assert device.state.assignment_version == 0
    assert device.install().status == "new"
    assert device.state.assignment_version == 2


def test_low_assignment_without_rotation_is_a_rollback() -> None:
    sim, device = ready()
    sim.assignment.version = 999_999
    device.install()
    sim.assignment.version = 1
    with refused(device, Rollback):
        device.install()


def test_rotating_the_heartbeat_key_drops_the_trusted_heartbeat() -> None:
    sim, device = ready()
    sim.heartbeat.version = 999_999
    device.refresh()
    sim.rotate("heartbeat")
    sim.heartbeat.version = 1
    device.state = trust.update_root(device.state, sim.root_chain)
    assert device.state.heartbeat is None
    assert trust.freeze_suspected(device.state, sim.now)
    device.refresh()
    assert device.state.versions().heartbeat == 1


def test_rotating_the_release_key_drops_the_trusted_release_list() -> None:
    sim, device = ready()
    sim.release.version = 500
    sim.beat()
    device.refresh()
    sim.rotate("release")
    device.state = trust.update_root(device.state, sim.root_chain)
    assert (device.state.release, device.state.release_sha256) == (None, None)
    sim.release.version = 1  # re-signed with the new key, any version is accepted again
    sim.beat()
    device.refresh()
    assert device.state.versions().release == 1


def test_rotation_never_resets_the_rollback_floor_or_the_time_floor() -> None:
    sim, device = ready()
    entry = sim.add_release()
    sim.release.min_counter = 2
    sim.assign(entry)
    sim.now += DAY
    sim.beat()
    device.refresh()
    device.install()
    kept = (device.state.counter_floor, device.state.time_floor)
    assert kept == (2, sim.now)
    for role in ("root", "release", "rollout", "heartbeat"):
        sim.rotate(role)
    walk(device)
    assert device.state.root.version == 5
    assert (device.state.counter_floor, device.state.time_floor) == kept


def test_root_update_ignores_expiry_so_an_expired_device_can_recover() -> None:
    sim, device = ready()
    sim.now += 2 * YEAR
    sim.root.expires = sim.now + YEAR
    sim.root.version += 1
    sim.publish_root()
    sim.beat()
    walk(device)
    device.refresh()
    assert device.state.root.version == 2
    assert not trust.freeze_suspected(device.state, sim.now)
