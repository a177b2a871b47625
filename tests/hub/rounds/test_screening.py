"""Screening: every way a delta can be wrong gives a verdict with its reason, never a raise."""

from __future__ import annotations

import zlib
from dataclasses import replace
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hub.rounds.layout import Layout
from hub.rounds.screening import (
    BaseVersion,
    OpenSlot,
    ScreenContext,
    Verdict,
    digest,
    screen,
)
from protocol.manifest import Head
from protocol.messages import DeltaUpload, ModelRef
from protocol.tensors import MAGIC, encode_tensors

HEAD = Head(
    kind="gemm",
    node="head",
    weight="head.weight",
    bias="head.bias",
    feature="hidden",
    activation="softmax",
    task="classification",
    n_features=6,
    n_outputs=3,
    transposed=True,
)
SHA = "ab" * 32
BASE = BaseVersion("kws", 4, SHA, True, Layout.of_head(HEAD), max_norm=2.0)
ROUND = OpenSlot("r-7", "kws", 4, open=True, devices=frozenset({"early-bird"}))
ROUNDS = ScreenContext(mode="rounds", base=BASE, slot=ROUND, current_version=4)


def delta(scale: float = 0.1, seed: int = 0) -> dict[str, np.ndarray]:
    """A delta of the head with L2 norm ``scale``."""
    rng = np.random.default_rng(seed)
    weight, bias = rng.normal(size=(6, 3)), rng.normal(size=3)
    factor = scale / np.sqrt(np.square(weight).sum() + np.square(bias).sum())
    return {
        "head.weight": (weight * factor).astype(np.float32),
        "head.bias": (bias * factor).astype(np.float32),
    }


def upload(
    tensors: bytes | dict[str, np.ndarray] | None = None,
    *,
    base: ModelRef | None = None,
    round_id: str | None = "r-7",
    **fields: Any,
) -> DeltaUpload:
    body = encode_tensors(delta()) if tensors is None else tensors
    if isinstance(body, dict):
        body = encode_tensors(body)
    return DeltaUpload(
        base=base or ModelRef("kws", 4, SHA),
        num_samples=fields.pop("num_samples", 120),
        metric="accuracy",
        before=0.6,
        after=0.7,
        clip_norm=2.0,
        tensors=body,
        round_id=round_id,
        **fields,
    )


def with_nan(container: bytes) -> bytes:
    """A valid f32 container with its first value overwritten by NaN (encode refuses NaN)."""
    plain = bytearray(zlib.decompress(container[4:]))
    parts = 4 + int.from_bytes(plain[:4], "big")
    plain[parts : parts + 4] = np.array([np.nan], "<f4").tobytes()
    return MAGIC + zlib.compress(bytes(plain))


def test_an_honest_delta_is_accepted_with_its_norm_and_tensors() -> None:
    verdict = screen(upload(), "dev-1", ROUNDS)
    assert (verdict.status, verdict.reason, verdict.usable, verdict.strike) == (
        "accepted",
        None,
        True,
        False,
    )
    assert verdict.norm == pytest.approx(0.1, rel=1e-6)
    assert verdict.tensors is not None
    assert set(verdict.tensors) == {"head.weight", "head.bias"}
    assert verdict.digest == digest(upload().tensors)


# name, upload, context, expected reason, strike
BAD: list[tuple[str, DeltaUpload, ScreenContext, str, bool]] = [
    (
        "unknown_base_version",
        upload(base=ModelRef("kws", 9, SHA)),
        replace(ROUNDS, base=None),
        "unknown_base",
        False,
    ),
    ("base_of_another_model", upload(base=ModelRef("asr", 4, SHA)), ROUNDS, "unknown_base", False),
    ("wrong_base_sha256", upload(base=ModelRef("kws", 4, "cd" * 32)), ROUNDS, "stale_base", False),
    (
        "unreleased_base",
        upload(),
        replace(ROUNDS, base=replace(BASE, released=False)),
        "base_not_released",
        False,
    ),
    ("no_round_while_the_model_runs_rounds", upload(round_id=None), ROUNDS, "bad_round", False),
    ("unknown_round", upload(round_id="r-99"), ROUNDS, "bad_round", False),
    (
        "round_is_closing",
        upload(),
        replace(ROUNDS, slot=replace(ROUND, open=False)),
        "bad_round",
        False,
    ),
    (
        "round_of_another_model",
        upload(),
        replace(ROUNDS, slot=replace(ROUND, model="asr")),
        "bad_round",
        False,
    ),
    (
        "round_on_another_base",
        upload(),
        replace(ROUNDS, slot=replace(ROUND, base_version=3)),
        "stale_base",
        False,
    ),
    (
        "replayed_bytes",
        upload(),
        replace(ROUNDS, seen_digests=frozenset({digest(upload().tensors)})),
        "replayed",
        False,
    ),
    ("not_a_container", upload(b"PK\x03\x04zip"), ROUNDS, "malformed", True),
    ("broken_zlib", upload(MAGIC + b"\x78\x9c garbage"), ROUNDS, "malformed", True),
    ("container_v2", upload(b"EFT2" + b"\x00" * 8), ROUNDS, "malformed", True),
    ("zip_bomb", upload(MAGIC + zlib.compress(b"\x00" * 4_000_000)), ROUNDS, "oversize", True),
    ("too_many_bytes", upload(), replace(ROUNDS, max_bytes=16), "oversize", True),
    (
        "nan_in_the_weight",
        upload(with_nan(encode_tensors(delta()))),
        ROUNDS,
        "non_finite",
        True,
    ),
    (
        "missing_bias",
        upload({"head.weight": delta()["head.weight"]}),
        ROUNDS,
        "shape_mismatch",
        True,
    ),
    (
        "extra_tensor",
        upload({**delta(), "backbone.w": np.zeros(2, np.float32)}),
        ROUNDS,
        "shape_mismatch",
        True,
    ),
    (
        "transposed_weight",
        upload({**delta(), "head.weight": np.zeros((3, 6), np.float32)}),
        ROUNDS,
        "shape_mismatch",
        True,
    ),
    ("scaled_50x_beyond_the_bound", upload(delta(scale=0.1 * 50)), ROUNDS, "norm_exceeded", True),
]


@pytest.mark.parametrize(
    ("name", "message", "ctx", "reason", "strike"), BAD, ids=[b[0] for b in BAD]
)
def test_bad_deltas_are_refused_with_their_reason(
    name: str, message: DeltaUpload, ctx: ScreenContext, reason: str, strike: bool
) -> None:
    verdict = screen(message, "dev-1", ctx)
    assert (verdict.status, verdict.reason, verdict.strike) == ("refused", reason, strike)
    assert not verdict.usable
    assert verdict.tensors is None
    assert verdict.detail


def test_a_second_delta_in_the_round_is_flagged_and_the_first_kept() -> None:
    first = screen(
        upload(delta(seed=1)),
        "early-bird",
        replace(ROUNDS, slot=replace(ROUND, devices=frozenset())),
    )
    second = screen(upload(delta(seed=2)), "early-bird", ROUNDS)
    assert first.usable
    assert (second.status, second.reason, second.usable) == ("flagged", "duplicate", False)
    assert "r-7" in second.detail


def test_a_delta_just_over_the_bound_from_lossy_encoding_is_accepted() -> None:
    tensors = delta(scale=2.0)
    verdict = screen(upload(encode_tensors(tensors, encoding="i8")), "dev-1", ROUNDS)
    assert verdict.usable
    assert verdict.norm is not None
    assert verdict.norm <= 2.0 * 1.01


def test_buffered_mode_refuses_beyond_max_staleness_with_the_numbers() -> None:
    ctx = ScreenContext(
        mode="buffered",
        base=replace(BASE, version=2),
        slot=OpenSlot(None, "kws", 6),
        current_version=6,
        max_staleness=3,
    )
    verdict = screen(upload(base=ModelRef("kws", 2, SHA), round_id=None), "dev-1", ctx)
    assert (verdict.reason, verdict.staleness) == ("too_stale", 4)
    assert "4 versions behind v6" in verdict.detail
    ok = screen(
        upload(base=ModelRef("kws", 3, SHA), round_id=None),
        "dev-1",
        replace(ctx, base=replace(BASE, version=3)),
    )
    assert (ok.status, ok.staleness) == ("accepted", 3)


def test_buffered_mode_flags_a_device_already_in_the_buffer() -> None:
    ctx = ScreenContext(
        mode="buffered",
        base=BASE,
        slot=OpenSlot(None, "kws", 4, devices=frozenset({"dev-1"})),
        current_version=4,
    )
    verdict = screen(upload(round_id=None), "dev-1", ctx)
    assert (verdict.status, verdict.reason) == ("flagged", "duplicate")
    assert "this buffer" in verdict.detail


def test_a_replayed_delta_counts_once_even_under_a_new_device_seq() -> None:
    message = upload()
    first = screen(message, "dev-1", ROUNDS)
    again = screen(message, "dev-1", replace(ROUNDS, seen_digests=frozenset({first.digest})))
    assert first.usable
    assert (again.status, again.reason) == ("refused", "replayed")


def test_the_base_is_checked_before_the_tensors_are_decoded() -> None:
    verdict = screen(upload(b"not a container"), "dev-1", replace(ROUNDS, base=None))
    assert verdict.reason == "unknown_base"


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300) | st.binary(max_size=200).map(lambda b: MAGIC + zlib.compress(b)))
def test_screening_never_raises_on_arbitrary_tensor_bytes(data: bytes) -> None:
    verdict = screen(upload(data), "dev-1", ROUNDS)
    assert isinstance(verdict, Verdict)
    assert verdict.status == "refused"
