"""The leader lease (hub.store.leases, hub.leader): who runs the scheduled jobs among
replicas, on one store, with an injected clock; two ``Leadership`` objects on one store
(each dialect: ``store_url``) stand for two replicas."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from hub import keyring
from hub.context import HubContext
from hub.leader import LEADER_LEASE, Leadership
from hub.settings import HubSettings
from hub.store import Store
from hub.store.dialects import open_store
from tests.clock import FakeClock

TTL_MS = 8_000


@pytest.fixture
def stores(store_url: str) -> Iterator[tuple[Store, Store]]:
    """Two connections to one store (a SQLite file, a PostgreSQL database), as two replica
    processes have."""
    first = open_store(store_url)
    second = open_store(store_url)
    yield first, second
    first.close()
    second.close()


def context(store: Store, clock: FakeClock, tmp_path: Path, name: str) -> HubContext:
    ring = keyring.init(tmp_path / f"keys-{name}", now_ms=clock.now_ms())
    settings = HubSettings(data_dir=tmp_path / name, replica_group="hubs")
    return HubContext(store, ring, clock, settings)


def test_first_claimant_takes_the_lease_and_renewing_keeps_its_generation(
    stores: tuple[Store, Store], clock: FakeClock
) -> None:
    store, _ = stores
    first = store.leases.claim("leader", "a", now_ms=clock.now_ms(), ttl_ms=TTL_MS)
    clock.advance(2)
    renewed = store.leases.claim("leader", "a", now_ms=clock.now_ms(), ttl_ms=TTL_MS)
    assert (first.holder, first.generation) == ("a", 1)
    assert (renewed.holder, renewed.generation) == ("a", 1)
    assert renewed.expires_ms == clock.now_ms() + TTL_MS
    assert renewed.acquired_ms == first.acquired_ms


def test_a_live_lease_is_not_taken_by_another_replica(
    stores: tuple[Store, Store], clock: FakeClock
) -> None:
    a, b = stores
    a.leases.claim("leader", "a", now_ms=clock.now_ms(), ttl_ms=TTL_MS)
    clock.advance(7.999)
    seen = b.leases.claim("leader", "b", now_ms=clock.now_ms(), ttl_ms=TTL_MS)
    assert (seen.holder, seen.generation) == ("a", 1)


def test_an_expired_lease_passes_to_the_next_claimant_with_a_new_generation(
    stores: tuple[Store, Store], clock: FakeClock
) -> None:
    a, b = stores
    a.leases.claim("leader", "a", now_ms=clock.now_ms(), ttl_ms=TTL_MS)
    clock.advance(8)
    taken = b.leases.claim("leader", "b", now_ms=clock.now_ms(), ttl_ms=TTL_MS)
    assert (taken.holder, taken.generation, taken.acquired_ms) == ("b", 2, clock.now_ms())
    back = a.leases.claim("leader", "a", now_ms=clock.now_ms(), ttl_ms=TTL_MS)
    assert back.holder == "b"  # the old holder does not get it back while b renews


def test_a_released_lease_passes_at_once_and_only_its_holder_releases_it(
    stores: tuple[Store, Store], clock: FakeClock
) -> None:
    a, b = stores
    a.leases.claim("leader", "a", now_ms=clock.now_ms(), ttl_ms=TTL_MS)
    assert not b.leases.release("leader", "b", now_ms=clock.now_ms())
    assert a.leases.release("leader", "a", now_ms=clock.now_ms())
    assert b.leases.claim("leader", "b", now_ms=clock.now_ms(), ttl_ms=TTL_MS).holder == "b"


def test_a_killed_leader_is_replaced_after_the_ttl_and_the_taker_audits_it(
    stores: tuple[Store, Store], clock: FakeClock, tmp_path: Path
) -> None:
    a = Leadership(context(stores[0], clock, tmp_path, "a"), "replica-a")
    b = Leadership(context(stores[1], clock, tmp_path, "b"), "replica-b")
    assert a.tick()
    assert not b.tick()
    assert (a.role, b.role) == ("leader", "follower")
    clock.advance(7)  # a was killed: it renews no more
    assert not b.tick()
    clock.advance(1)
    assert b.tick()
    assert b.confirm()
    acquired = stores[0].audit.page(action="leader.acquired").items
    assert [e.actor for e in acquired] == ["replica:replica-b", "replica:replica-a"]
    assert '"generation":2' in acquired[0].detail
    assert '"replica":"replica-b"' in acquired[0].detail


def test_a_leader_that_cannot_renew_stops_leading_before_its_lease_can_pass(
    stores: tuple[Store, Store], clock: FakeClock, tmp_path: Path
) -> None:
    a = Leadership(context(stores[0], clock, tmp_path, "a"), "replica-a")
    assert a.tick()
    clock.advance(5.999)  # 2 s (one renew interval) left: still leading
    assert a.leading()
    clock.advance(0.001)
    assert not a.leading()
    assert not a.confirm()
    stored = stores[0].leases.get(LEADER_LEASE)
    assert stored is not None
    assert stored.holder == "replica-a"


def test_a_deposed_leader_fails_its_fencing_check_after_a_takeover(
    stores: tuple[Store, Store], clock: FakeClock, tmp_path: Path
) -> None:
    a = Leadership(context(stores[0], clock, tmp_path, "a"), "replica-a")
    b = Leadership(context(stores[1], clock, tmp_path, "b"), "replica-b")
    assert a.tick()
    stores[1].leases.claim(LEADER_LEASE, "replica-b", now_ms=clock.now_ms() + TTL_MS, ttl_ms=1)
    # a's own view still says it leads (its clock), but the store moved on
    assert a.leading()
    assert not a.confirm()
    assert not a.tick()
    assert a.role == "follower"
    assert not b.confirm()  # b never ticked: it holds no lease of its own


def test_stopping_releases_the_lease_so_a_follower_takes_it_at_once(
    stores: tuple[Store, Store], clock: FakeClock, tmp_path: Path
) -> None:
    a = Leadership(context(stores[0], clock, tmp_path, "a"), "replica-a")
    b = Leadership(context(stores[1], clock, tmp_path, "b"), "replica-b")
    a.start()
    a.stop()
    assert b.tick()
    lease = stores[1].leases.get(LEADER_LEASE)
    assert lease is not None
    assert (lease.holder, lease.generation) == ("replica-b", 2)
