"""Topic names: build, parse, and refuse anything that is not ours."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol.errors import Malformed
from protocol.topics import DOWN_KINDS, FLEET_KINDS, UP_KINDS, Route, Topics

T = Topics()
ids = st.from_regex(r"[a-z0-9][a-z0-9._-]{0,63}", fullmatch=True)


@given(device=ids, kind=st.sampled_from(sorted(UP_KINDS)))
def test_uplink_topics_parse_back(device: str, kind: str) -> None:
    assert T.parse(T.up(device, kind)) == Route("up", kind, device)


@given(device=ids, kind=st.sampled_from(sorted(DOWN_KINDS)))
def test_downlink_topics_parse_back(device: str, kind: str) -> None:
    assert T.parse(T.down(device, kind)) == Route("down", kind, device)


@pytest.mark.parametrize("kind", sorted(FLEET_KINDS))
def test_fleet_topics_parse_back(kind: str) -> None:
    assert T.parse(T.fleet(kind)) == Route("fleet", kind, None)


def test_layout_matches_the_architecture() -> None:
    assert T.up("dev-1", "delta") == "ef/v1/d/dev-1/up/delta"
    assert T.down("dev-1", "desired") == "ef/v1/d/dev-1/down/desired"
    assert T.fleet("heartbeat") == "ef/v1/fleet/heartbeat"
    assert T.all_up() == "ef/v1/d/+/up/#"
    assert Topics("t1/ef").up("a", "hello") == "t1/ef/v1/d/a/up/hello"


@pytest.mark.parametrize(
    "device",
    [
        pytest.param("+", id="single-level-wildcard"),
        pytest.param("#", id="multi-level-wildcard"),
        pytest.param("a/b", id="slash"),
        pytest.param("a\x00b", id="nul"),
        pytest.param("../etc", id="path-traversal"),
        pytest.param("Dev", id="uppercase"),
        pytest.param("", id="empty"),
        pytest.param("a" * 65, id="over-long"),
        pytest.param("-dash-first", id="leading-dash"),
        pytest.param("dev\u0456ce", id="cyrillic-i-confusable"),
        pytest.param("d\u0435v", id="cyrillic-e-confusable"),
        pytest.param("cafe\u0301", id="combining-accent"),
        pytest.param("dev\u2215x", id="division-slash"),
        pytest.param("\uff44ev", id="fullwidth-d"),
        pytest.param("dev\u200b", id="zero-width-space"),
    ],
)
def test_device_ids_that_could_escape_their_topic_are_refused(device: str) -> None:
    with pytest.raises(Malformed):
        T.up(device, "hello")


@pytest.mark.parametrize(
    "topic",
    [
        "ef/v2/d/dev/up/hello",
        "ef/v1/d/dev/up/evil",
        "ef/v1/d/dev/sideways/hello",
        "ef/v1/d/+/up/hello",
        "ef/v1/d/dev/up/hello/extra",
        "ef/v1/fleet/evil",
        "other/v1/d/dev/up/hello",
    ],
)
def test_foreign_topics_are_refused(topic: str) -> None:
    with pytest.raises(Malformed):
        T.parse(topic)


@pytest.mark.parametrize("prefix", ["", "a/+", "#", "a//b"])
def test_prefixes_with_wildcards_are_refused(prefix: str) -> None:
    with pytest.raises(Malformed):
        Topics(prefix)
