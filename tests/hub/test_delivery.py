"""Chunked delivery: only the assigned artifact, bounded ranges, shed under load."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from hub.errors import InvalidRequest
from hub.fleet.delivery import Bucket, Delivery, FlowLimits, Refuse, Serve, decide, http_artifact
from hub.fleet.desired import set_desired
from hub.settings import HubSettings
from hub.store import NotFound
from hub.store.rows import AuditEntry
from protocol.messages import Chunk, FetchRequest
from tests import models
from tests.clock import FakeClock
from tests.hub.test_desired import DEVICE, RecordingDownlink, add_device
from tests.hub.test_registry import Hub, make_hub, npz, snapshot

SETTINGS = HubSettings(data_dir=Path("unused"), chunk_bytes=1000)
SHA = "a" * 64


@pytest.fixture
def hub(tmp_path: Path, clock: FakeClock) -> Hub:
    hub = make_hub(tmp_path, clock)
    add_device(hub.store)
    hub.register()
    set_desired(
        hub.context(None, SETTINGS),
        device_id=DEVICE,
        model_name="iris",
        model_version=1,
        actor="operator",
    )
    return hub


@pytest.fixture
def downlink() -> RecordingDownlink:
    return RecordingDownlink()


def delivery(hub: Hub, downlink: RecordingDownlink, **limits: float) -> Delivery:
    return Delivery(hub.store, hub.artifacts, downlink, hub.clock, SETTINGS, FlowLimits(**limits))  # type: ignore[arg-type]


def fetch_audits(hub: Hub) -> list[AuditEntry]:
    return hub.store.audit.page(action="artifact.fetch").items


def chunks(downlink: RecordingDownlink) -> list[Chunk]:
    found = [m for _, m, _ in downlink.sent if isinstance(m, Chunk)]
    assert all(not retain for _, _, retain in downlink.sent)
    return found


def test_chunks_reassemble_to_the_assigned_artifact(hub: Hub, downlink: RecordingDownlink) -> None:
    version = hub.registry.get_version("iris", 1)
    serve = delivery(hub, downlink, chunk_burst=1000)
    offset = 0
    while offset < version.length:
        request = FetchRequest(version.sha256, offset, 64 * 1024)
        assert serve.on_fetch(DEVICE, request) == "sent"
        offset += len(chunks(downlink)[-1].data)
    received = chunks(downlink)
    assert all(len(c.data) <= SETTINGS.chunk_bytes for c in received)
    assert all(c.total_length == version.length for c in received)
    assert all(hashlib.sha256(c.data).hexdigest() == c.chunk_sha256 for c in received)
    data = b"".join(c.data for c in received)
    assert hashlib.sha256(data).hexdigest() == version.sha256
    assert data == hub.registry.download("iris", 1)


def test_fetch_of_an_unassigned_artifact_is_refused_and_audited(
    hub: Hub, downlink: RecordingDownlink
) -> None:
    other = hub.register(models.mlp_classifier().model, reference=npz(X=models.mlp_classifier().x))
    before = snapshot(hub.store)
    outcome = delivery(hub, downlink).on_fetch(DEVICE, FetchRequest(other.sha256, 0, 1000))
    assert outcome == "refused"
    assert downlink.sent == []
    assert snapshot(hub.store) == before
    [row] = fetch_audits(hub)
    assert (row.outcome, row.reason, row.actor) == (
        "rejected",
        "not_assigned",
        "device:dev-1",
    )


def test_device_without_an_assignment_gets_nothing(hub: Hub, downlink: RecordingDownlink) -> None:
    add_device(hub.store, "dev-2")
    sha = hub.registry.get_version("iris", 1).sha256
    assert delivery(hub, downlink).on_fetch("dev-2", FetchRequest(sha, 0, 100)) == "refused"
    assert downlink.sent == []


def test_revoked_device_gets_nothing(hub: Hub, downlink: RecordingDownlink) -> None:
    hub.store.devices.revoke(DEVICE)
    sha = hub.registry.get_version("iris", 1).sha256
    assert delivery(hub, downlink).on_fetch(DEVICE, FetchRequest(sha, 0, 100)) == "refused"
    assert downlink.sent == []


def test_out_of_range_offset_is_refused(hub: Hub, downlink: RecordingDownlink) -> None:
    version = hub.registry.get_version("iris", 1)
    request = FetchRequest(version.sha256, version.length, 100)
    assert delivery(hub, downlink).on_fetch(DEVICE, request) == "refused"
    [row] = fetch_audits(hub)
    assert row.reason == "out_of_range"


def test_refusals_are_audited_at_a_bounded_rate(hub: Hub, downlink: RecordingDownlink) -> None:
    serve = delivery(hub, downlink, audits_per_device_per_min=3)
    for _ in range(50):
        serve.on_fetch(DEVICE, FetchRequest(SHA, 0, 100))
    assert hub.store.audit.count(action="artifact.fetch") == 3
    hub.clock.advance(20)
    serve.on_fetch(DEVICE, FetchRequest(SHA, 0, 100))
    assert hub.store.audit.count(action="artifact.fetch") == 4


def test_per_device_token_bucket_sheds_and_refills(hub: Hub, downlink: RecordingDownlink) -> None:
    sha = hub.registry.get_version("iris", 1).sha256
    serve = delivery(hub, downlink, chunks_per_s=2, chunk_burst=3)
    outcomes = [serve.on_fetch(DEVICE, FetchRequest(sha, 0, 100)) for _ in range(5)]
    assert outcomes == ["sent", "sent", "sent", "shed", "shed"]
    hub.clock.advance(0.5)
    assert serve.on_fetch(DEVICE, FetchRequest(sha, 0, 100)) == "sent"
    assert serve.on_fetch(DEVICE, FetchRequest(sha, 0, 100)) == "shed"
    assert len(chunks(downlink)) == 4


def test_hub_wide_byte_budget_sheds_across_devices(hub: Hub, downlink: RecordingDownlink) -> None:
    add_device(hub.store, "dev-2")
    set_desired(
        hub.context(None, SETTINGS),
        device_id="dev-2",
        model_name="iris",
        model_version=1,
        actor="operator",
    )
    sha = hub.registry.get_version("iris", 1).sha256
    serve = delivery(hub, downlink, bytes_per_s=2500)
    assert serve.on_fetch(DEVICE, FetchRequest(sha, 0, 1000)) == "sent"
    assert serve.on_fetch("dev-2", FetchRequest(sha, 0, 1000)) == "sent"
    assert serve.on_fetch(DEVICE, FetchRequest(sha, 1000, 1000)) == "shed"
    hub.clock.advance(0.2)
    assert serve.on_fetch(DEVICE, FetchRequest(sha, 1000, 1000)) == "sent"


def test_broker_out_of_reach_is_unsent(hub: Hub) -> None:
    sha = hub.registry.get_version("iris", 1).sha256
    serve = delivery(hub, RecordingDownlink(up=False))
    assert serve.on_fetch(DEVICE, FetchRequest(sha, 0, 100)) == "unsent"


@pytest.mark.parametrize(
    ("request_", "assigned", "size", "verdict"),
    [
        pytest.param(
            FetchRequest(SHA, 0, 5000), SHA, 3000, Serve(0, 1000, 3000), id="cut-to-chunk"
        ),
        pytest.param(
            FetchRequest(SHA, 2500, 900), SHA, 3000, Serve(2500, 500, 3000), id="cut-to-end"
        ),
        pytest.param(FetchRequest(SHA, 3000, 10), SHA, 3000, "out_of_range", id="at-end"),
        pytest.param(FetchRequest(SHA, 0, 10), None, 3000, "not_assigned", id="no-assignment"),
        pytest.param(FetchRequest(SHA, 0, 10), "b" * 64, 3000, "not_assigned", id="other"),
        pytest.param(FetchRequest(SHA, 0, 10), SHA, None, "missing", id="not-on-disk"),
    ],
)
def test_decide(
    request_: FetchRequest, assigned: str | None, size: int | None, verdict: object
) -> None:
    result = decide(request_, assigned=assigned, size=size, chunk_bytes=1000)
    if isinstance(verdict, Serve):
        assert result == verdict
    else:
        assert isinstance(result, Refuse)
        assert result.reason == verdict


def test_bucket_refills_at_its_rate_up_to_capacity() -> None:
    bucket = Bucket(0.0, 0)
    assert bucket.take(400, rate=2, capacity=5, cost=1) is None
    assert bucket.take(500, rate=2, capacity=5, cost=1) == Bucket(0.0, 500)
    assert bucket.take(10_000, rate=2, capacity=5, cost=1) == Bucket(4.0, 10_000)


def test_http_serves_released_artifacts_only(tmp_path: Path, clock: FakeClock) -> None:
    hub = make_hub(tmp_path, clock)
    reg = hub.register()
    whole = http_artifact(hub.store, hub.artifacts, reg.sha256)
    assert (whole.offset, whole.total_length) == (0, reg.length)
    assert hashlib.sha256(whole.data).hexdigest() == reg.sha256
    part = http_artifact(hub.store, hub.artifacts, reg.sha256, offset=10, length=20)
    assert (part.data, part.total_length) == (whole.data[10:30], reg.length)
    hub.store.registry.set_status("iris", 1, "pending_release")
    with pytest.raises(NotFound):
        http_artifact(hub.store, hub.artifacts, reg.sha256)
    with pytest.raises(InvalidRequest):
        http_artifact(hub.store, hub.artifacts, "../../hub.db")


def test_artifact_corrupted_on_disk_is_refused_not_served(
    hub: Hub, downlink: RecordingDownlink
) -> None:
    version = hub.registry.get_version("iris", 1)
    path = hub.artifacts.root_dir / version.sha256
    path.write_bytes(b"\x00" * version.length)
    outcome = delivery(hub, downlink).on_fetch(DEVICE, FetchRequest(version.sha256, 0, 100))
    assert outcome == "refused"
    assert downlink.sent == []
    [row] = fetch_audits(hub)
    assert row.reason == "artifact_corrupt"
