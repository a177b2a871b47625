"""The trust store: the pinned root, fleet documents as TUF takes them, persisted after every
accepted step, and the freeze / clock flags. Every refusal leaves the file byte-identical."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from agent.errors import ConfigError, StateCorrupt
from agent.trust_store import STATE_FILE, TrustStore
from protocol import canonical, keys
from protocol.errors import Expired, Malformed, Oversize, Rollback
from protocol.metadata import decode_root_chain, encode_root_chain
from protocol.trust import TrustedState
from tests.protocol.trust_sim import DAY, HEARTBEAT_TTL, MINUTE, YEAR, TrustSim

DEVICE = "dev-1"


@pytest.fixture
def sim() -> TrustSim:
    return TrustSim(device_id=DEVICE)


@pytest.fixture
def store(sim: TrustSim, tmp_path: Path) -> TrustStore:
    return TrustStore(tmp_path, sim.root_chain[0].to_bytes())


def feed(store: TrustStore, sim: TrustSim, now: int | None = None) -> None:
    now = sim.now if now is None else now
    assert store.on_heartbeat(sim.heartbeat_doc().to_bytes(), now) or store.state.heartbeat
    store.on_release(sim.release_doc().to_bytes(), now)


def on_disk(tmp_path: Path) -> TrustedState:
    return TrustedState.from_bytes((tmp_path / STATE_FILE).read_bytes())


@contextmanager
def unchanged(store: TrustStore, tmp_path: Path) -> Iterator[None]:
    """The trusted state, in memory and on disk, is byte-identical after the block."""
    before, file = store.state.to_bytes(), (tmp_path / STATE_FILE).read_bytes()
    yield
    assert store.state.to_bytes() == before
    assert (tmp_path / STATE_FILE).read_bytes() == file


def test_first_start_trusts_the_pinned_root_and_persists_it(
    store: TrustStore, sim: TrustSim, tmp_path: Path
) -> None:
    assert store.state == TrustedState.initial(sim.root_chain[0])
    assert on_disk(tmp_path) == store.state
    assert TrustStore.open(tmp_path, None).state == store.state  # later starts need no root


def test_first_start_without_a_pinned_root_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        TrustStore.open(tmp_path, None)
    with pytest.raises(ConfigError):
        TrustStore.open(tmp_path, tmp_path / "missing-root.json")


def test_a_pinned_root_that_does_not_verify_is_refused(sim: TrustSim, tmp_path: Path) -> None:
    sim.root.version = 1
    forged = sim.publish_root(signers=[sim.new_key("intruder")])
    with pytest.raises(ConfigError):
        TrustStore(tmp_path, forged.to_bytes())


def test_a_damaged_trusted_state_is_refused_not_reset(store: TrustStore, tmp_path: Path) -> None:
    (tmp_path / STATE_FILE).write_bytes(b'{"root": ')
    with pytest.raises(StateCorrupt):
        TrustStore(tmp_path, None)


def test_every_accepted_document_is_persisted_at_once(
    store: TrustStore, sim: TrustSim, tmp_path: Path
) -> None:
    feed(store, sim)
    assert store.versions().heartbeat == store.versions().release == 1
    assert on_disk(tmp_path) == store.state
    sim.now += MINUTE
    sim.add_release()
    sim.beat()
    feed(store, sim)
    assert (store.versions().heartbeat, store.versions().release) == (2, 2)
    assert TrustStore(tmp_path, None).state == store.state


def test_a_replayed_older_release_list_is_refused(
    store: TrustStore, sim: TrustSim, tmp_path: Path
) -> None:
    old = sim.release_doc().to_bytes()
    sim.add_release()
    sim.beat()
    feed(store, sim)
    with unchanged(store, tmp_path):
        assert not store.on_release(old, sim.now)
    assert store.refused["release.rollback"] == 1


def test_the_same_version_with_other_content_is_ignored(
    store: TrustStore, sim: TrustSim, tmp_path: Path
) -> None:
    feed(store, sim)
    sim.release.expires += DAY  # same version, other bytes
    with unchanged(store, tmp_path):
        assert not store.on_release(sim.release_doc().to_bytes(), sim.now)
    assert store.refused["release.equal_version"] == 1


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"[{]", id="not-json"),
        pytest.param(b'{"a": 1}', id="not-a-list"),
        pytest.param(b"[" + b" " * (33 * 128 * 1024) + b"]", id="oversize"),
    ],
)
def test_a_malformed_root_chain_changes_nothing(
    store: TrustStore, tmp_path: Path, payload: bytes
) -> None:
    with unchanged(store, tmp_path):
        assert not store.on_root(payload)


def test_decode_root_chain_reads_what_the_hub_publishes(sim: TrustSim) -> None:
    sim.rotate("rollout")
    assert decode_root_chain(encode_root_chain(sim.root_chain)) == sim.root_chain
    with pytest.raises(Oversize):
        decode_root_chain(canonical.dumps([{}] * 33))
    with pytest.raises(Malformed):
        decode_root_chain(canonical.dumps([{"payload": 1}]))


def test_root_rotation_of_the_rollout_key_recovers_from_fast_forward(
    store: TrustStore, sim: TrustSim, tmp_path: Path
) -> None:
    feed(store, sim)
    old_keys = store.rollout_keys()
    sim.assignment.version = 999_999  # a stolen online key signs a huge version
    store.accept(store.verify_assignment(sim.assignment_doc(), sim.now, DEVICE))
    assert store.versions().assignment == 999_999
    sim.assignment.version = 1
    with pytest.raises(Rollback), unchanged(store, tmp_path):
        store.verify_assignment(sim.assignment_doc(), sim.now, DEVICE)
    sim.rotate("rollout")
    assert store.on_root(encode_root_chain(sim.root_chain))
    assert store.versions().root == 2
    assert store.versions().assignment == 0  # exactly the rotated role's mark is reset
    assert store.versions().heartbeat == store.versions().release == 1
    assert {keys.keyid(k) for k in store.rollout_keys()} != {keys.keyid(k) for k in old_keys}
    verdict = store.verify_assignment(sim.assignment_doc(), sim.now, DEVICE)
    store.accept(verdict)
    assert on_disk(tmp_path).assignment_version == 1


def test_a_root_chain_with_a_gap_waits_for_the_next_publication(
    store: TrustStore, sim: TrustSim, tmp_path: Path
) -> None:
    sim.rotate("rollout")
    sim.rotate("heartbeat")
    with unchanged(store, tmp_path):
        assert not store.on_root(encode_root_chain(sim.root_chain[2:]))
    assert store.refused["root.version_gap"] == 1
    assert store.on_root(encode_root_chain(sim.root_chain))
    assert store.versions().root == 3


def test_a_device_of_a_fleet_that_released_nothing_yet_is_not_flagged_frozen(
    store: TrustStore, sim: TrustSim
) -> None:
    assert store.freeze_suspected(sim.now)  # no heartbeat: an assignment would wait
    assert store.flags(sim.now) == ()
    store.on_release(sim.release_doc().to_bytes(), sim.now)
    assert store.flags(sim.now) == ("freeze_suspected",)  # a release list, no heartbeat


def test_a_stale_heartbeat_means_freeze_suspected(store: TrustStore, sim: TrustSim) -> None:
    feed(store, sim)
    assert store.flags(sim.now) == ()
    later = sim.now + HEARTBEAT_TTL
    assert store.freeze_suspected(later)
    assert store.flags(later) == ("freeze_suspected",)
    store.on_heartbeat(sim.heartbeat_doc().to_bytes(), later)  # the broker replays it
    assert store.freeze_suspected(later)


def test_a_device_clock_set_back_cannot_revive_an_expired_assignment(
    store: TrustStore, sim: TrustSim, tmp_path: Path
) -> None:
    feed(store, sim)
    sim.assignment.expires = sim.now + MINUTE
    sim.now += 2 * MINUTE
    sim.beat()
    feed(store, sim)
    assert store.state.time_floor == sim.now
    assert TrustStore(tmp_path, None).state.time_floor == sim.now  # persisted
    set_back = sim.now - YEAR
    assert store.now_ms(set_back) == sim.now  # never below hub time already attested
    with pytest.raises(Expired), unchanged(store, tmp_path):
        store.verify_assignment(sim.assignment_doc(), set_back, DEVICE)


def test_a_device_clock_far_ahead_raises_clock_suspect(
    store: TrustStore, sim: TrustSim, tmp_path: Path
) -> None:
    feed(store, sim)
    ahead = sim.now + YEAR
    sim.beat()
    with unchanged(store, tmp_path):
        assert not store.on_heartbeat(sim.heartbeat_doc().to_bytes(), ahead)
    assert store.clock_suspect
    assert store.flags(ahead) == ("freeze_suspected", "clock_suspect")
    sim.now += MINUTE
    sim.beat()
    assert store.on_heartbeat(sim.heartbeat_doc().to_bytes(), sim.now)  # the clock is fixed
    assert not store.clock_suspect


def test_a_merely_late_heartbeat_is_not_a_suspect_clock(store: TrustStore, sim: TrustSim) -> None:
    feed(store, sim)
    sim.beat()
    store.on_heartbeat(sim.heartbeat_doc().to_bytes(), sim.now + HEARTBEAT_TTL + MINUTE)
    assert not store.clock_suspect
