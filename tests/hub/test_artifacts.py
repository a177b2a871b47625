"""Content-addressed artifacts on disk: names are digests, writes are atomic, reads verify."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from hub.errors import InvalidRequest
from hub.registry.artifacts import MAX_RANGE_BYTES, ArtifactCorrupt, ArtifactStore
from hub.store import NotFound

DATA = bytes(range(256)) * 40


@pytest.fixture
def artifacts(tmp_path: Path) -> ArtifactStore:
    return ArtifactStore(tmp_path / "artifacts")


def test_put_names_the_file_by_its_sha256_and_leaves_no_temp_file(
    artifacts: ArtifactStore,
) -> None:
    sha = artifacts.put(DATA)
    assert sha == hashlib.sha256(DATA).hexdigest()
    assert [p.name for p in artifacts.root_dir.iterdir()] == [sha]
    assert artifacts.exists(sha)
    assert artifacts.size(sha) == len(DATA)
    assert artifacts.read(sha) == DATA


def test_put_twice_is_a_no_op(artifacts: ArtifactStore) -> None:
    sha = artifacts.put(DATA)
    mtime = (artifacts.root_dir / sha).stat().st_mtime_ns
    assert artifacts.put(DATA) == sha
    assert (artifacts.root_dir / sha).stat().st_mtime_ns == mtime


def test_read_detects_disk_corruption(artifacts: ArtifactStore) -> None:
    sha = artifacts.put(DATA)
    path = artifacts.root_dir / sha
    path.write_bytes(b"\xff" + DATA[1:])  # same size, one byte flipped
    with pytest.raises(ArtifactCorrupt):
        artifacts.read(sha)
    with pytest.raises(ArtifactCorrupt):
        artifacts.read_range(sha, 0, 16)


def test_put_heals_a_corrupt_copy(artifacts: ArtifactStore) -> None:
    sha = artifacts.put(DATA)
    (artifacts.root_dir / sha).write_bytes(b"garbage")
    artifacts.put(DATA)
    assert artifacts.read(sha) == DATA


def test_read_range_cuts_at_the_end(artifacts: ArtifactStore) -> None:
    sha = artifacts.put(DATA)
    assert artifacts.read_range(sha, 100, 50) == DATA[100:150]
    assert artifacts.read_range(sha, len(DATA) - 10, 1000) == DATA[-10:]


@pytest.mark.parametrize(
    ("offset", "length"),
    [
        pytest.param(len(DATA), 1, id="offset-at-end"),
        pytest.param(-1, 1, id="negative-offset"),
        pytest.param(0, 0, id="empty-range"),
        pytest.param(0, MAX_RANGE_BYTES + 1, id="range-too-long"),
    ],
)
def test_read_range_refuses_out_of_bounds(
    artifacts: ArtifactStore, offset: int, length: int
) -> None:
    sha = artifacts.put(DATA)
    with pytest.raises(InvalidRequest):
        artifacts.read_range(sha, offset, length)


@pytest.mark.parametrize(
    "name",
    [
        pytest.param("../../agent/config", id="traversal"),
        pytest.param("/etc/passwd", id="absolute"),
        pytest.param("A" * 64, id="upper-case"),
        pytest.param("a" * 63, id="short"),
    ],
)
def test_names_that_are_not_digests_never_reach_the_disk(
    artifacts: ArtifactStore, tmp_path: Path, name: str
) -> None:
    for call in (artifacts.read, artifacts.size, artifacts.exists):
        with pytest.raises(InvalidRequest):
            call(name)
    with pytest.raises(InvalidRequest):
        artifacts.read_range(name, 0, 1)
    assert not artifacts.root_dir.exists()


def test_unknown_artifact_is_not_found(artifacts: ArtifactStore) -> None:
    missing = "0" * 64
    assert not artifacts.exists(missing)
    for call in (artifacts.read, artifacts.size):
        with pytest.raises(NotFound):
            call(missing)
    with pytest.raises(NotFound):
        artifacts.read_range(missing, 0, 1)


def test_put_refuses_empty_and_oversize(tmp_path: Path) -> None:
    small = ArtifactStore(tmp_path / "a", max_bytes=10)
    for data in (b"", b"x" * 11):
        with pytest.raises(InvalidRequest):
            small.put(data)
    assert not small.root_dir.exists()
