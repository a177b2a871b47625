"""Canonical JSON and the type-directed schema checker."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol import canonical, schema
from protocol.errors import Malformed, NonFinite

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)


@given(json_values)
def test_canonical_bytes_parse_back_to_the_same_value(value: object) -> None:
    data = canonical.dumps(value)
    assert canonical.loads(data) == value
    assert canonical.dumps(canonical.loads(data)) == data


def test_canonical_form_sorts_keys_and_drops_whitespace() -> None:
    assert canonical.dumps({"b": 1, "a": [1.5, "é"]}) == '{"a":[1.5,"é"],"b":1}'.encode()


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_canonical_encoder_refuses_non_finite_numbers(value: float) -> None:
    with pytest.raises(NonFinite):
        canonical.dumps({"x": value})


@dataclass(frozen=True)
class Inner:
    n: int


@dataclass(frozen=True)
class Outer:
    name: str
    ratio: float
    mode: Literal["a", "b"]
    inner: Inner
    items: tuple[Inner, ...] = ()
    pair: tuple[int, str] | None = None
    tags: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        schema.check_range(self.ratio, "ratio", 0.0, 1.0)


GOOD = {"name": "x", "ratio": 0.5, "mode": "a", "inner": {"n": 1}}


def test_schema_round_trips_nested_values() -> None:
    value = Outer("x", 0.5, "b", Inner(2), (Inner(3),), (4, "y"), {"k": "v"})
    assert schema.from_json(Outer, schema.to_json(value)) == value


def test_schema_fills_defaults_and_accepts_integers_as_floats() -> None:
    assert schema.from_json(Outer, {**GOOD, "ratio": 1}) == Outer("x", 1.0, "a", Inner(1))


@pytest.mark.parametrize(
    ("change", "where"),
    [
        pytest.param({"name": 5}, "$.name", id="int-for-str"),
        pytest.param({"ratio": "0.5"}, "$.ratio", id="str-for-float"),
        pytest.param({"ratio": 2.0}, "ratio", id="post-init-range"),
        pytest.param({"mode": "c"}, "$.mode", id="literal-outside-set"),
        pytest.param({"inner": {"n": True}}, "$.inner.n", id="bool-for-int"),
        pytest.param({"inner": {"n": 1, "x": 2}}, "$.inner", id="unknown-nested-field"),
        pytest.param({"items": [{"n": 1}, {"n": "2"}]}, "$.items[1].n", id="bad-list-item"),
        pytest.param({"pair": [1]}, "$.pair", id="short-fixed-tuple"),
        pytest.param({"tags": {"k": 1}}, "$.tags.k", id="bad-mapping-value"),
        pytest.param({"inner": None}, "$.inner", id="null-for-object"),
    ],
)
def test_schema_names_the_path_of_what_it_refuses(change: dict[str, object], where: str) -> None:
    with pytest.raises(Malformed, match=where.replace("$", r"\$").replace("[", r"\[")):
        schema.from_json(Outer, {**GOOD, **change})


def test_schema_refuses_missing_fields() -> None:
    with pytest.raises(Malformed, match="missing field 'inner'"):
        schema.from_json(Outer, {"name": "x", "ratio": 0.5, "mode": "a"})


def test_schema_refuses_non_finite_floats_as_non_finite() -> None:
    with pytest.raises(NonFinite):
        schema.from_json(Outer, {**GOOD, "ratio": math.inf})
