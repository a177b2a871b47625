"""The store's typed methods on both dialects (SQLite and PostgreSQL, the ``store_url``
fixture): filters that operators type (awkward tag keys included), the ordering rules
ingest relies on, and the transactions; then what only one dialect has to show."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from hub.errors import InvalidRequest
from hub.health import Health
from hub.store import NotFound, Store, StoreError
from hub.store.dialects import describe, open_store
from hub.store.postgres import migrate
from hub.store.postgres.store import PostgresStore
from hub.store.rows import Device, ReportedTwin, StateRecord, UplinkSeen
from hub.store.sqlite import SqliteStore
from tests.brokers import free_port
from tests.postgres import PostgresServer


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    opened = open_store(store_url)
    for i, tags in enumerate([{"hw.rev": "2", "region": "eu"}, {"hw.rev": "3", "x-y": "1"}]):
        opened.devices.add(Device(f"dev-{i}", "0" * 64, "active", first_seen=1, tags=tags))
    yield opened
    opened.close()


@pytest.mark.parametrize(
    ("tag", "expected"),
    [
        pytest.param(("hw.rev", "2"), ["dev-0"], id="dotted-key"),
        pytest.param(("x-y", "1"), ["dev-1"], id="dashed-key"),
        pytest.param(("region", "eu"), ["dev-0"], id="plain-key"),
        pytest.param(("hw", "2"), [], id="prefix-of-a-dotted-key"),
    ],
)
def test_store_filters_devices_by_tags_whose_keys_hold_dots_and_dashes(
    store: Store, tag: tuple[str, str], expected: list[str]
) -> None:
    page = store.devices.page(tag=tag)
    assert [d.id for d in page.items] == expected
    assert page.total == len(expected)


def test_the_store_names_another_device_holding_a_key_whatever_its_status(store: Store) -> None:
    store.devices.add(Device("dev-7", "cd" * 32, "pending", first_seen=1))
    store.devices.add(Device("dev-8", "ef" * 32, "active", first_seen=1))
    store.devices.revoke("dev-8")
    assert store.devices.key_holder("cd" * 32, besides="dev-x") == "dev-7"
    assert store.devices.key_holder("ef" * 32, besides="dev-x") == "dev-8"  # revoked too
    assert store.devices.key_holder("cd" * 32, besides="dev-7") is None  # its own key
    assert store.devices.key_holder("0" * 64, besides="dev-1") == "dev-0"
    assert store.devices.key_holder("12" * 32, besides="dev-x") is None


def test_a_device_reads_back_as_it_was_written(store: Store) -> None:
    device = Device(
        "dev-9",
        "ab" * 32,
        "pending",
        first_seen=5,
        tags={"site": "plant-3"},
        agent_version="1.2",
        last_seen=7,
        online=True,
        active_name="iris",
        active_version=2,
        active_sha256="cd" * 32,
        reported='{"flags":[]}',
        reported_at=7,
        health=Health.DEGRADED,
    )
    store.devices.add(device)
    assert store.devices.get("dev-9") == device
    with pytest.raises(StoreError):
        store.devices.add(device)
    with pytest.raises(NotFound):
        store.devices.get("dev-404")


def test_an_older_state_report_does_not_overwrite_a_newer_one(store: Store) -> None:
    def report(seq: int, version: int) -> bool:
        twin = ReportedTwin("iris", version, "ab" * 32, f'{{"v":{version}}}', seq)
        store.uplink.add([StateRecord("dev-0", seq, seq, seq, twin.reported)])
        return store.devices.report_state("dev-0", seq, twin)

    assert report(5, 2)
    assert not report(4, 1)  # overtaken in transit
    assert store.devices.get("dev-0").active_version == 2


def test_last_seen_never_moves_backwards(store: Store) -> None:
    store.devices.note_uplink([UplinkSeen("dev-0", b"w", last_seen=100, online=True)])
    store.devices.note_uplink([UplinkSeen("dev-0", b"w", last_seen=50, online=True)])
    assert store.devices.get("dev-0").last_seen == 100
    assert store.devices.mark_offline(seen_before_ms=101) == ["dev-0"]
    assert not store.devices.get("dev-0").online


def test_atomic_undoes_everything_inside_it_on_error(store: Store) -> None:
    def change_then_fail() -> None:
        with store.atomic():
            store.devices.set_tags("dev-0", {"gone": "yes"})
            store.counters.bump("devices_epoch")
            with store.atomic():  # a savepoint inside the transaction
                store.audit.append(at=1, actor="test", action="inner")
            raise RuntimeError("rolled back")

    with pytest.raises(RuntimeError):
        change_then_fail()
    assert store.devices.get("dev-0").tags == {"hw.rev": "2", "region": "eu"}
    assert store.counters.get("devices_epoch") == 0
    assert store.audit.count() == 0


def test_counters_count_from_zero(store: Store) -> None:
    assert store.counters.get("down_seq") == 0
    assert store.counters.bump("down_seq", 1000) == 1000
    assert store.counters.bump("down_seq", 1000) == 2000
    store.counters.set("release_published", 3)
    assert store.counters.get("release_published") == 3


def test_audit_prune_keeps_the_newest(store: Store) -> None:
    for i in range(5):
        store.audit.append(at=i, actor="device:x", action="frame_rejected", outcome="rejected")
    store.audit.append(at=9, actor="cli", action="device.approve")
    assert store.audit.prune(outcome="rejected", keep=2) == 3
    assert [e.at for e in store.audit.page(outcome="rejected").items] == [4, 3]
    assert store.audit.count(action="device.approve") == 1


def test_a_store_location_with_an_unknown_scheme_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidRequest, match="no store dialect for 'mysql'"):
        open_store("mysql://db/hub")
    opened = open_store(f"sqlite:///{tmp_path / 'other.db'}")
    assert opened.ping()
    opened.close()


def test_openers_racing_on_a_fresh_store_all_succeed(tmp_path: Path) -> None:
    """`hub serve` and a `--data` command started together on a fresh data directory both
    set the file up; the loser died of "database is locked"."""
    for attempt in range(10):
        path = tmp_path / f"{attempt}" / "hub.db"
        barrier = threading.Barrier(6)
        errors: list[BaseException] = []
        threads = [
            threading.Thread(target=_open_together, args=(path, barrier, errors)) for _ in range(6)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors


def _open_together(path: Path, barrier: threading.Barrier, errors: list[BaseException]) -> None:
    barrier.wait()
    try:
        SqliteStore.open(path).close()
    except BaseException as e:  # collected for the test's assertion
        errors.append(e)


def test_postgres_replicas_starting_together_migrate_once(postgres_server: PostgresServer) -> None:
    """Replicas of the hub started together on a fresh database: one migrates under the
    advisory lock, the others wait and find nothing left to do."""
    url = postgres_server.create_database()
    barrier = threading.Barrier(4)
    errors: list[BaseException] = []

    def open_together() -> None:
        barrier.wait()
        try:
            PostgresStore.open(url).close()
        except BaseException as e:  # collected for the test's assertion
            errors.append(e)

    threads = [threading.Thread(target=open_together) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    with psycopg.connect(url) as conn:
        names = [row[0] for row in conn.execute("SELECT name FROM edgefleet_migrations")]
    assert names == [name for name, _ in migrate.migrations()]


def test_postgres_reads_do_not_queue_behind_an_open_transaction(postgres_url: str) -> None:
    """A REST read runs on its own pooled connection while ingest holds a transaction."""
    store = open_store(postgres_url)
    store.devices.add(Device("dev-0", "0" * 64, "active", first_seen=1))
    inside, release = threading.Event(), threading.Event()

    def ingest() -> None:
        with store.atomic():
            store.devices.set_tags("dev-0", {"batch": "open"})
            inside.set()
            release.wait(10)

    writer = threading.Thread(target=ingest)
    writer.start()
    try:
        assert inside.wait(10)
        assert store.devices.get("dev-0").tags == {}  # read committed, without waiting
    finally:
        release.set()
        writer.join()
    assert store.devices.get("dev-0").tags == {"batch": "open"}
    store.close()


def test_postgres_immediate_serialises_read_then_write_steps_across_stores(
    postgres_url: str,
) -> None:
    """Each step reads a counter then writes the next value: under ``immediate`` no two
    steps read the same value, as with SQLite's BEGIN IMMEDIATE, even from four stores (as
    four processes or replicas would have) whose transactions nothing else orders."""
    stores = [open_store(postgres_url) for _ in range(4)]
    errors: list[BaseException] = []

    def step(store: Store) -> None:
        try:
            for _ in range(5):
                with store.immediate():
                    n = store.counters.get("down_seq")
                    store.audit.append(at=n, actor="test", action="step")
                    store.counters.set("down_seq", n + 1)
        except BaseException as e:  # collected for the test's assertion
            errors.append(e)

    threads = [threading.Thread(target=step, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    store = stores[0]
    assert store.counters.get("down_seq") == 20
    assert sorted(e.at for e in store.audit.page(limit=100).items) == list(range(20))
    for opened in stores:
        opened.close()


def test_postgres_a_refused_write_leaves_the_transaction_usable(postgres_url: str) -> None:
    store = open_store(postgres_url)
    device = Device("dev-0", "0" * 64, "active", first_seen=1)
    with store.atomic():
        store.devices.add(device)
        with pytest.raises(StoreError):
            store.devices.add(device)
        store.counters.bump("devices_epoch", 1)  # PostgreSQL would refuse this in an aborted one
    assert store.counters.get("devices_epoch") == 1
    store.close()


def test_a_postgres_url_is_logged_without_its_password() -> None:
    assert describe("postgresql://hub:s3cret@db:5432/hub") == "postgresql://hub:***@db:5432/hub"
    assert describe("postgres://db/hub") == "postgres://db/hub"
    assert describe("/var/lib/edgefleet/hub.db") == "/var/lib/edgefleet/hub.db"


def test_an_unreachable_postgres_store_is_a_store_error_without_the_password(
    postgres_server: PostgresServer,
) -> None:
    url = f"postgresql://nobody:s3cret@127.0.0.1:{free_port()}/hub"
    with pytest.raises(StoreError) as refused:
        open_store(url)
    assert "s3cret" not in str(refused.value)
    assert "nobody:***@" in str(refused.value)
