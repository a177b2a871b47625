"""Top-k with error feedback: nothing is lost, the codec carries exactly what is sent."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.sparsify import sparsify, topk_fraction
from protocol.tensors import decode_tensors, encode_tensors, l2_norm


def delta(seed: int, scale: float = 1.0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "head.weight": (rng.normal(size=(16, 5)) * scale).astype(np.float32),
        "head.bias": (rng.normal(size=5) * scale).astype(np.float32),
    }


def total(tensors: dict[str, np.ndarray]) -> np.ndarray:
    return np.concatenate([tensors[k].astype(np.float64).ravel() for k in sorted(tensors)])


def test_sent_plus_residual_is_the_delta_plus_the_old_residual() -> None:
    d, r = delta(1), delta(2, scale=0.1)
    sent, residual = sparsify(d, r, k=9)
    np.testing.assert_allclose(total(sent) + total(residual), total(d) + total(r), atol=1e-6)


def test_k_values_are_sent_spread_over_the_tensors_as_the_codec_spreads_them() -> None:
    sent, _ = sparsify(delta(3), None, k=17)
    fraction = topk_fraction(17, 85)
    assert np.count_nonzero(sent["head.weight"]) == math.ceil(fraction * 80)
    assert np.count_nonzero(sent["head.bias"]) == math.ceil(fraction * 5)


def test_the_sent_entries_are_the_largest() -> None:
    d = delta(4)
    sent, _ = sparsify(d, None, k=20)
    weight, kept = np.abs(d["head.weight"]).ravel(), sent["head.weight"].ravel() != 0
    assert weight[kept].min() >= weight[~kept].max()


@pytest.mark.parametrize(("values", "encoding"), [("f32", "topk-f32"), ("f16", "topk-f16")])
def test_the_topk_container_carries_exactly_what_was_sent(values: str, encoding: str) -> None:
    sent, residual = sparsify(delta(5), None, k=10, values=values)  # type: ignore[arg-type]
    wire = encode_tensors(sent, encoding=encoding, topk_fraction=topk_fraction(10, 85))  # type: ignore[arg-type]
    received = decode_tensors(wire)
    for name in sent:
        np.testing.assert_array_equal(received[name], sent[name])
    np.testing.assert_allclose(total(sent) + total(residual), total(delta(5)), atol=1e-6)


def test_what_is_sent_stays_within_the_hubs_bound_and_the_rest_waits() -> None:
    d = delta(6, scale=10.0)
    sent, residual = sparsify(d, None, k=40, max_norm=2.0)
    assert l2_norm(sent) <= 2.0
    np.testing.assert_allclose(total(sent) + total(residual), total(d), rtol=1e-6, atol=1e-5)


def test_every_entry_is_sent_eventually() -> None:
    """Error feedback: over rounds, the sum received tracks the sum of true deltas to
    within one residual, which stays bounded."""
    true_sum, received, residual = np.zeros(85), np.zeros(85), None
    for i in range(200):
        d = delta(100 + i, scale=0.1)
        sent, residual = sparsify(d, residual, k=6)
        true_sum += total(d)
        received += total(sent)
    assert residual is not None
    np.testing.assert_allclose(received + total(residual), true_sum, atol=1e-4)
    assert np.linalg.norm(total(residual)) < 0.2 * np.linalg.norm(true_sum)


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 85), st.integers(0, 2**32 - 1), st.floats(0.0, 5.0))
def test_the_invariant_holds_for_any_k_and_bound(k: int, seed: int, max_norm: float) -> None:
    d, r = delta(seed), delta(seed + 1, scale=0.5)
    sent, residual = sparsify(d, r, k, max_norm=max_norm)
    assert l2_norm(sent) <= max_norm + 1e-6
    assert sum(np.count_nonzero(x) for x in sent.values()) <= k + len(d)
    np.testing.assert_allclose(total(sent) + total(residual), total(d) + total(r), atol=1e-5)


@pytest.mark.parametrize(
    ("k", "residual", "why"),
    [
        (0, None, "k 0"),
        (86, None, "k 86"),
        (5, {"head.weight": np.zeros((16, 5))}, "residual"),
        (5, {"head.weight": np.zeros((5, 16)), "head.bias": np.zeros(5)}, "residual"),
    ],
)
def test_a_callers_mistake_is_a_value_error(k: int, residual, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        sparsify(delta(7), residual, k)


def test_f16_refuses_values_it_cannot_hold() -> None:
    with pytest.raises(ValueError, match="float16"):
        sparsify(delta(8, scale=1e6), None, k=85, values="f16")
