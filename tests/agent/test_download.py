"""The chunked download: what it asks for, what it keeps, when it gives up, how it resumes,
and what a release and a finished package must pass before anything loads them."""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from agent.download import (
    Download,
    DownloadPolicy,
    Progress,
    Request,
    check_package,
    check_release,
    check_speed,
    plan,
    receive,
    start,
)
from agent.errors import SlowRetrieval
from protocol.errors import ContentMismatch, Incompatible, Oversize, UnsafeModel
from protocol.messages import Chunk
from protocol.metadata import Compat, ReleaseEntry
from protocol.modelcheck import OPSET_RANGE
from tests import models
from tests.packages import build_package

DATA = bytes(range(256)) * 10  # 2560 bytes
ENTRY = ReleaseEntry(
    "iris", 1, 1, hashlib.sha256(DATA).hexdigest(), len(DATA), Compat(21, "in:x;out:y")
)
POLICY = DownloadPolicy(chunk_bytes=1000, window=2, stall_ms=5_000, grace_ms=10_000)
T0 = 1_000_000


def chunk(offset: int, length: int = 1000, *, data: bytes | None = None) -> Chunk:
    """Bytes ``[offset, offset + length)``; ``data`` replaces them under the true hash."""
    true = DATA[offset : offset + length]
    digest = hashlib.sha256(true).hexdigest()
    return Chunk(ENTRY.sha256, offset, len(DATA), digest, true if data is None else data)


def test_download_asks_for_a_window_of_chunks_up_to_the_signed_length() -> None:
    progress, asked = plan(start(ENTRY, T0), T0, POLICY)
    assert asked == [Request(0, 1000, T0), Request(1000, 1000, T0)]
    progress, verdict = receive(progress, chunk(0), T0 + 1)
    assert verdict == "accepted"
    progress, asked = plan(progress, T0 + 1, POLICY)
    assert asked == [Request(2000, 560, T0 + 1)]  # the last one stops at the signed length
    assert plan(progress, T0 + 2, POLICY)[1] == []


def test_download_discards_a_chunk_with_a_bad_hash_and_asks_again() -> None:
    progress, _ = plan(start(ENTRY, T0), T0, POLICY)
    bad = bytes([DATA[0] ^ 1]) + DATA[1:1000]
    progress, verdict = receive(progress, chunk(0, data=bad), T0)
    assert (verdict, progress.offset) == ("bad_chunk_hash", 0)
    progress, asked = plan(progress, T0, POLICY)
    assert asked[0] == Request(0, 1000, T0)  # asked again at once, from the first byte


@pytest.mark.parametrize(
    ("bad", "verdict"),
    [
        pytest.param(
            Chunk("f" * 64, 0, len(DATA), hashlib.sha256(b"x").hexdigest(), b"x"),
            "other_artifact",
            id="other-artifact",
        ),
        pytest.param(
            Chunk(ENTRY.sha256, 0, len(DATA) + 1, hashlib.sha256(DATA[:10]).hexdigest(), DATA[:10]),
            "bad_length",
            id="total-length-differs-from-signed",
        ),
        pytest.param(
            Chunk(
                ENTRY.sha256,
                len(DATA) - 10,
                len(DATA),
                hashlib.sha256(DATA[-10:] + b"extra").hexdigest(),
                DATA[-10:] + b"extra",
            ),
            "beyond_length",
            id="past-the-signed-length",
        ),
        pytest.param(chunk(1000), "out_of_order", id="not-the-next-offset"),
    ],
)
def test_download_keeps_nothing_from_a_chunk_it_refuses(bad: Chunk, verdict: str) -> None:
    progress, _ = plan(start(ENTRY, T0), T0, POLICY)
    after, got = receive(progress, bad, T0)
    assert got == verdict
    assert after.offset == 0


def test_a_chunk_cut_short_by_the_hub_is_kept_and_the_rest_asked_again() -> None:
    progress, _ = plan(start(ENTRY, T0), T0, POLICY)
    progress, verdict = receive(progress, chunk(0, 600), T0)
    assert (verdict, progress.offset) == ("accepted", 600)
    _, asked = plan(progress, T0, POLICY)
    assert asked == [Request(600, 1000, T0), Request(1600, 960, T0)]


def test_a_stalled_download_asks_again_after_the_stall_timeout() -> None:
    progress, _ = plan(start(ENTRY, T0), T0, POLICY)
    assert plan(progress, T0 + 4_999, POLICY)[1] == []
    _, asked = plan(progress, T0 + 5_000, POLICY)
    assert asked == [Request(0, 1000, T0 + 5_000), Request(1000, 1000, T0 + 5_000)]


def test_slow_retrieval_aborts_below_the_minimum_throughput() -> None:
    policy = DownloadPolicy(chunk_bytes=1000, min_bytes_per_s=100, grace_ms=10_000)
    progress, _ = receive(plan(start(ENTRY, T0), T0, policy)[0], chunk(0), T0 + 1)
    check_speed(progress, T0 + 9_999, policy)  # within the grace period
    check_speed(progress, T0 + 10_000, policy)  # 1000 B in 10 s: exactly 100 B/s
    with pytest.raises(SlowRetrieval):
        check_speed(progress, T0 + 10_001, policy)


def test_slow_retrieval_aborts_past_the_deadline_even_when_fast() -> None:
    policy = DownloadPolicy(deadline_ms=60_000, min_bytes_per_s=0)
    progress = start(ENTRY, T0)
    check_speed(progress, T0 + 60_000, policy)
    with pytest.raises(SlowRetrieval):
        check_speed(progress, T0 + 60_001, policy)


# ---------------------------------------------------------------- on disk


def fetch_all(download: Download, now: int, *, until: int | None = None) -> None:
    """Answer the download's requests in order, up to byte ``until``."""
    while not download.complete:
        download.requests(now)
        request = download.progress.outstanding[0]
        if until is not None and request.offset >= until:
            return
        download.receive(chunk(request.offset, request.length), now)


def test_download_writes_the_file_and_stops_at_its_length(tmp_path: Path) -> None:
    download = Download(tmp_path, ENTRY, T0, POLICY)
    fetch_all(download, T0)
    assert download.complete
    assert download.data() == DATA


def test_download_resumes_from_the_recorded_offset_after_a_crash(tmp_path: Path) -> None:
    first = Download(tmp_path, ENTRY, T0, POLICY)
    fetch_all(first, T0, until=2000)
    assert first.progress.offset == 2000
    with first.part.open("ab") as f:  # a write the crash left unrecorded
        f.write(b"garbage")
    resumed = Download(tmp_path, ENTRY, T0 + 50, POLICY)
    assert resumed.progress.offset == 2000
    assert resumed.progress.started_ms == T0  # the deadline survives the restart
    assert resumed.requests(T0 + 50)[0].offset == 2000
    fetch_all(resumed, T0 + 50)
    assert resumed.data() == DATA


def test_download_of_another_artifact_starts_over(tmp_path: Path) -> None:
    fetch_all(Download(tmp_path, ENTRY, T0, POLICY), T0, until=1000)
    other = ReleaseEntry("iris", 2, 2, "a" * 64, 10, ENTRY.compat)
    assert Download(tmp_path, other, T0, POLICY).progress.offset == 0


def test_discard_deletes_the_partial_file(tmp_path: Path) -> None:
    download = Download(tmp_path, ENTRY, T0, POLICY)
    fetch_all(download, T0, until=1000)
    download.discard()
    assert list(tmp_path.iterdir()) == []


def test_progress_round_trips_its_persisted_part() -> None:
    progress = Progress(ENTRY.sha256, 2560, 1000, T0, T0 + 5, 1000, T0 + 5)
    again = Progress.from_bytes(progress.to_bytes(), T0 + 9)
    assert (again.sha256, again.length, again.offset, again.started_ms) == (
        ENTRY.sha256,
        2560,
        1000,
        T0,
    )
    assert (again.session_ms, again.session_bytes) == (T0 + 9, 0)


# ---------------------------------------------------------------- verification


def flip_last_byte(data: bytes) -> bytes:
    return data[:-1] + bytes([data[-1] ^ 0xFF])


@pytest.mark.parametrize(
    ("data", "entry_changes", "error"),
    [
        pytest.param(flip_last_byte, {}, ContentMismatch, id="one-byte-flipped"),
        pytest.param(lambda d: d + b"x", {}, ContentMismatch, id="longer-than-signed"),
        pytest.param(None, {"version": 9}, Incompatible, id="another-version-inside"),
        pytest.param(None, {"compat": Compat(21, "in:x:float32[?,5]")}, Incompatible, id="io"),
    ],
)
def test_check_package_refuses_bytes_the_release_does_not_vouch_for(
    data: Callable[[bytes], bytes] | None, entry_changes: dict[str, Any], error: type[Exception]
) -> None:
    built = build_package(models.gemm_classifier())
    entry = dataclasses.replace(built.entry(1), **entry_changes)
    payload = built.data if data is None else data(built.data)
    with pytest.raises(error):
        check_package(entry, payload, opset_range=OPSET_RANGE)


@pytest.mark.parametrize(
    "model",
    [
        pytest.param(models.external_initializer(), id="external-data"),
        pytest.param(models.custom_domain_node(), id="custom-op-domain"),
        pytest.param(models.external_constant_in_if(), id="external-data-in-a-subgraph"),
    ],
)
def test_check_package_refuses_hostile_onnx_before_any_runtime_sees_it(model: bytes) -> None:
    built = build_package(model, checked=False)
    with pytest.raises(UnsafeModel):
        check_package(built.entry(1), built.data, opset_range=OPSET_RANGE)


def test_check_package_wants_the_active_models_input_shapes_and_dtypes() -> None:
    built = build_package(models.gemm_classifier())
    check_package(built.entry(1), built.data, opset_range=OPSET_RANGE, inputs=built.manifest.inputs)
    renamed = build_package(models.mlp_classifier().model)  # float32[?,4], named otherwise
    check_package(
        renamed.entry(1), renamed.data, opset_range=OPSET_RANGE, inputs=built.manifest.inputs
    )
    wider = build_package(models.gemm_classifier(n_features=5))
    with pytest.raises(Incompatible, match=r"shape \[\?,5\], the active model's \[\?,4\]"):
        check_package(
            wider.entry(1), wider.data, opset_range=OPSET_RANGE, inputs=built.manifest.inputs
        )


@pytest.mark.parametrize(
    ("changes", "error"),
    [
        pytest.param({"compat": Compat(99, "in:x;out:y")}, Incompatible, id="opset"),
        pytest.param({"length": 10**9}, Oversize, id="longer-than-the-device-takes"),
    ],
)
def test_check_release_refuses_before_any_fetch(
    changes: dict[str, Any], error: type[Exception]
) -> None:
    check_release(ENTRY, opset_range=OPSET_RANGE, max_bytes=len(DATA))
    with pytest.raises(error):
        check_release(
            dataclasses.replace(ENTRY, **changes), opset_range=OPSET_RANGE, max_bytes=len(DATA)
        )
