"""The store's device listing: filters that operators type, including awkward tag keys."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hub.store.database import Store


@pytest.fixture
def store(tmp_path: Path) -> Store:
    opened = Store.open(tmp_path / "hub.db")
    for i, tags in enumerate([{"hw.rev": "2", "region": "eu"}, {"hw.rev": "3", "x-y": "1"}]):
        opened.insert(
            "devices",
            {
                "id": f"dev-{i}",
                "public_key": "0" * 64,
                "status": "active",
                "tags": json.dumps(tags),
                "first_seen": 1,
            },
        )
    return opened


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
    rows, total = store.list_devices(tag=tag)
    assert [r["id"] for r in rows] == expected
    assert total == len(expected)
