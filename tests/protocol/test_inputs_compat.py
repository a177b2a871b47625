"""Input compatibility between an active model and a candidate (protocol.manifest.inputs_differ):
shapes and dtypes decide; names only when there are several inputs (passed by name)."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol.manifest import TensorSpec, inputs_differ

X = TensorSpec("x", "float32", (None, 4))
dims = st.none() | st.integers(1, 64)
specs = st.builds(
    TensorSpec,
    name=st.from_regex(r"[a-z][a-z0-9_]{0,10}", fullmatch=True),
    dtype=st.sampled_from(["float32", "float64", "int64", "uint8", "bool"]),
    shape=st.lists(dims, max_size=4).map(tuple),
)


@pytest.mark.parametrize(
    ("candidate", "why"),
    [
        pytest.param((X,), None, id="same"),
        pytest.param((TensorSpec("input", "float32", (None, 4)),), None, id="renamed"),
        pytest.param(
            (TensorSpec("x", "float64", (None, 4)),),
            "its input is float64, the active model's float32",
            id="dtype",
        ),
        pytest.param(
            (TensorSpec("x", "float32", (None, 5)),),
            "its input has shape [?,5], the active model's [?,4]",
            id="width",
        ),
        pytest.param(
            (TensorSpec("x", "float32", (1, 4)),),
            "its input has shape [1,4], the active model's [?,4]",
            id="batch-fixed",
        ),
        pytest.param(
            (TensorSpec("x", "float32", (None, 4, 1)),),
            "its input has shape [?,4,1], the active model's [?,4]",
            id="rank",
        ),
        pytest.param((X, X), "it takes 2 inputs, the active model 1", id="count"),
    ],
)
def test_a_candidate_is_judged_by_the_shapes_and_dtypes_of_its_inputs(
    candidate: tuple[TensorSpec, ...], why: str | None
) -> None:
    assert inputs_differ((X,), candidate) == why


def test_a_fixed_dimension_may_become_dynamic() -> None:
    assert inputs_differ((TensorSpec("x", "float32", (1, 4)),), (X,)) is None


def test_several_inputs_are_matched_by_name_in_any_order() -> None:
    a, b = TensorSpec("a", "float32", (None, 2)), TensorSpec("b", "int64", (None,))
    assert inputs_differ((a, b), (b, a)) is None
    renamed = dataclasses.replace(b, name="c")
    assert inputs_differ((a, b), (a, renamed)) == (
        "its input names ['a', 'c'] differ from the active model's ['a', 'b']"
    )
    wrong = dataclasses.replace(b, dtype="int32")
    assert inputs_differ((a, b), (wrong, a)) == "input 'b' is int32, the active model's int64"


@given(st.lists(specs, min_size=1, max_size=4, unique_by=lambda s: s.name))
def test_every_signature_is_compatible_with_itself(inputs: list[TensorSpec]) -> None:
    assert inputs_differ(inputs, inputs) is None


@given(specs, st.from_regex(r"[a-z][a-z0-9_]{0,10}", fullmatch=True))
def test_renaming_a_single_input_never_makes_it_incompatible(spec: TensorSpec, name: str) -> None:
    assert inputs_differ((spec,), (dataclasses.replace(spec, name=name),)) is None
