"""The tensor container: round trips within the stated bounds, hostile containers, norms."""

from __future__ import annotations

import io
import math
import pickle
import struct
import tracemalloc
import zlib
from typing import Any, get_args

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from protocol import canonical, frame
from protocol.errors import Malformed, NonFinite, Oversize, ProtocolError, UnknownVersion
from protocol.tensors import (
    MAGIC,
    Encoding,
    clip_l2,
    decode_tensors,
    encode_tensors,
    i8_scale,
    inflated_cap,
    l2_norm,
)

ENCODINGS: tuple[Encoding, ...] = get_args(Encoding)
Index = dict[str, Any]


# ---------------------------------------------------------------- helpers


def forge(index: object, parts: bytes = b"", *, raw_index: bytes | None = None) -> bytes:
    """A container with any index and parts, compressed correctly: refusals come from parsing."""
    head = canonical.dumps(index) if raw_index is None else raw_index
    return MAGIC + zlib.compress(struct.pack(">I", len(head)) + head + parts)


def dense(name: str = "w", shape: list[Any] | None = None, *, at: int = 0, **changes: Any) -> Index:
    """An f32 entry of ``shape`` (default [2]) whose values part starts at ``at``."""
    shape = [2] if shape is None else shape
    entry = {
        "name": name,
        "dtype": "float32",
        "shape": shape,
        "encoding": "f32",
        "values": [at, 4 * math.prod(shape)],
    }
    return {**entry, **changes}


def topk(gaps: list[int], values: bytes, *, size: int = 4, **changes: Any) -> tuple[Index, bytes]:
    """A topk-f32 entry over ``size`` entries with u8 ``gaps``, and its parts."""
    index = bytes(gaps)
    entry = {
        "name": "w",
        "dtype": "float32",
        "shape": [size],
        "encoding": "topk-f32",
        "count": len(gaps),
        "index": [0, len(index)],
        "index_dtype": "u8",
        "values": [len(index), len(values)],
    }
    return {**entry, **changes}, index + values


def alone(pair: tuple[Index, bytes]) -> tuple[Index, bytes]:
    """The index and parts of a container holding just this entry."""
    entry, parts = pair
    return {"tensors": [entry]}, parts


def f32(*values: float) -> bytes:
    return np.array(values, dtype="<f4").tobytes()


def inflate(container: bytes) -> bytes:
    return zlib.decompress(container[len(MAGIC) :])


def zero_bomb(mebibytes: int) -> bytes:
    """A valid zlib stream of ``mebibytes`` MiB of zeros, about 1 KiB per MiB, built in ms.

    After a full flush deflate's state is reset, so every further MiB of zeros compresses
    to the same block; repeat it and end with the final block and Adler-32 of n zeros,
    which is ``(n mod 65521) << 16 | 1``.
    """
    mib = bytes(1 << 20)
    deflate = zlib.compressobj(9)
    first = deflate.compress(mib) + deflate.flush(zlib.Z_FULL_FLUSH)
    block = deflate.compress(mib) + deflate.flush(zlib.Z_FULL_FLUSH)
    final = deflate.flush()[:-4]
    assert first[2:] == block  # the 2-byte zlib header, then the repeating block
    adler = ((mebibytes << 20) % 65521) << 16 | 1
    return first[:2] + block * mebibytes + final + struct.pack(">I", adler)


def kept(x: np.ndarray, fraction: float) -> int:
    return math.ceil(fraction * x.size)


def assert_within_value_bound(x: np.ndarray, y: np.ndarray, codec: str, peak: float) -> None:
    """The per-element bound of the module docstring; ``peak`` is the max |x| i8 scales by."""
    x64, y64 = x.astype(np.float64), y.astype(np.float64)
    error = np.abs(y64 - x64)
    if codec == "f32":
        assert y.tobytes() == x.tobytes()
    elif codec == "f16":
        assert (error <= np.maximum(2.0**-11 * np.abs(x64), 2.0**-25)).all()
    else:
        assert (error <= i8_scale(peak) * (0.5 + 2.0**-17)).all()


# ---------------------------------------------------------------- strategies

printable = st.characters(min_codepoint=0x20, max_codepoint=0x7E)
tensor_names = st.text(printable, min_size=1, max_size=24)
shapes = hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=6)
any_f32 = st.floats(width=32, allow_nan=False, allow_infinity=False)
f16_safe = st.floats(-65504, 65504, width=32)
i8_safe = st.floats(-(2.0**127), 2.0**127, width=32)
tiny = st.floats(-(2.0**-100), 2.0**-100, width=32)


def arrays(elements: st.SearchStrategy[float]) -> st.SearchStrategy[np.ndarray]:
    return hnp.arrays(np.float32, shapes, elements=elements | tiny | st.just(0.0))


def tensor_maps(elements: st.SearchStrategy[float]) -> st.SearchStrategy[dict[str, np.ndarray]]:
    return st.dictionaries(tensor_names, arrays(elements), max_size=3)


def elements_for(encoding: str) -> st.SearchStrategy[float]:
    if encoding.endswith("f16"):
        return f16_safe
    return i8_safe if encoding.endswith("i8") else any_f32


fractions = st.floats(0.01, 1.0)


# ---------------------------------------------------------------- round trips


@settings(max_examples=150, deadline=None)
@given(tensors=tensor_maps(any_f32))
def test_f32_round_trip_is_exact_to_the_bit(tensors: dict[str, np.ndarray]) -> None:
    decoded = decode_tensors(encode_tensors(tensors, encoding="f32"))
    assert list(decoded) == sorted(tensors)
    for name, x in tensors.items():
        y = decoded[name]
        assert y.dtype == np.float32
        assert y.shape == x.shape
        assert y.flags.c_contiguous
        assert y.flags.writeable
        assert y.tobytes() == x.tobytes()


@pytest.mark.parametrize("codec", ["f16", "i8"])
@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_lossy_dense_round_trip_is_within_its_bound(codec: Encoding, data: st.DataObject) -> None:
    tensors = data.draw(tensor_maps(elements_for(codec)))
    decoded = decode_tensors(encode_tensors(tensors, encoding=codec))
    for name, x in tensors.items():
        y = decoded[name]
        assert y.shape == x.shape
        peak = float(np.abs(x).max()) if x.size else 0.0
        assert_within_value_bound(x, y, codec, peak)


@pytest.mark.parametrize("encoding", ["topk-f32", "topk-f16", "topk-i8"])
@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_topk_keeps_the_largest_entries_within_their_value_bound(
    encoding: Encoding, data: st.DataObject
) -> None:
    """Dropped entries decode to 0 (the error is the exact residual) and are never larger
    than a kept one; at most k entries survive, each within its value encoding's bound."""
    fraction = data.draw(fractions)
    tensors = data.draw(tensor_maps(elements_for(encoding)))
    container = encode_tensors(tensors, encoding=encoding, topk_fraction=fraction)
    decoded = decode_tensors(container)
    for name, x in tensors.items():
        y = decoded[name]
        assert y.shape == x.shape
        survived = y != 0
        assert survived.sum() <= kept(x, fraction)
        if survived.any() and not survived.all():
            assert np.abs(x[~survived]).max() <= np.abs(x[survived]).min()
        peak = float(np.abs(x).max()) if x.size else 0.0
        assert_within_value_bound(x[survived], y[survived], encoding[5:], peak)


def test_topk_relative_l2_error_is_the_dropped_residual_plus_value_error() -> None:
    rng = np.random.default_rng(7)
    x = rng.standard_normal(10_000).astype(np.float32)
    k = kept(x, 0.1)
    dropped = np.linalg.norm(np.sort(np.abs(x.astype(np.float64)))[: x.size - k])
    exact = decode_tensors(encode_tensors({"w": x}, encoding="topk-f32"))["w"]
    assert np.linalg.norm(exact.astype(np.float64) - x) == pytest.approx(dropped, rel=1e-12)
    quantized = decode_tensors(encode_tensors({"w": x}, encoding="topk-i8"))["w"]
    value_bound = i8_scale(float(np.abs(x).max())) * (0.5 + 2.0**-17)
    error = np.linalg.norm(quantized.astype(np.float64) - x)
    assert dropped < error <= math.sqrt(dropped**2 + k * value_bound**2)


def test_float16_and_float64_inputs_decode_as_float32() -> None:
    half = np.array([1.5, -0.0009765625, 65504], dtype=np.float16)
    double = np.array([[1 / 3, -2.5e-40]], dtype=np.float64)
    big_endian = np.arange(3, dtype=">f4")
    decoded = decode_tensors(encode_tensors({"h": half, "d": double, "b": big_endian}))
    assert decoded["h"].tolist() == half.astype(np.float32).tolist()
    assert decoded["d"].tobytes() == double.astype(np.float32).tobytes()
    assert decoded["b"].tolist() == [0.0, 1.0, 2.0]


def test_scalars_and_empty_tensors_keep_their_shape() -> None:
    tensors = {"s": np.array(3.5, dtype=np.float32), "e": np.zeros((0, 3), dtype=np.float32)}
    for encoding in ENCODINGS:
        decoded = decode_tensors(encode_tensors(tensors, encoding=encoding, topk_fraction=1.0))
        assert decoded["s"].shape == ()
        assert decoded["e"].shape == (0, 3)


def test_empty_container_round_trips() -> None:
    assert decode_tensors(encode_tensors({})) == {}


def test_encoding_is_deterministic_and_independent_of_insertion_order() -> None:
    a, b = np.arange(6, dtype=np.float32), np.ones((2, 2), dtype=np.float32)
    for encoding in ENCODINGS:
        assert encode_tensors({"a": a, "b": b}, encoding=encoding) == encode_tensors(
            {"b": b, "a": a}, encoding=encoding
        )


def test_topk_gaps_use_the_narrowest_index_width() -> None:
    def width(x: np.ndarray) -> str:
        two_kept = 1.5 / x.size
        plain = inflate(encode_tensors({"w": x}, encoding="topk-f32", topk_fraction=two_kept))
        (length,) = struct.unpack_from(">I", plain)
        return str(canonical.loads(plain[4 : 4 + length])["tensors"][0]["index_dtype"])

    def spikes(gap: int) -> np.ndarray:
        """Two ones ``gap`` apart, the first at index ``gap - 1``: both gaps are ``gap``."""
        x = np.zeros(2 * gap, dtype=np.float32)
        x[gap - 1 :: gap] = 1.0
        return x

    assert [width(spikes(gap)) for gap in (255, 256, 65535, 65536)] == [
        "u8",
        "u16",
        "u16",
        "u32",
    ]


def test_one_million_parameter_topk_i8_delta_is_under_a_tenth_of_dense_f32() -> None:
    delta = np.random.default_rng(2026).normal(0.0, 0.01, size=(1000, 1000)).astype(np.float32)
    container = encode_tensors({"fc.weight": delta}, encoding="topk-i8", topk_fraction=0.1)
    assert len(container) <= 0.1 * delta.nbytes
    assert decode_tensors(container)["fc.weight"].shape == (1000, 1000)


@pytest.mark.parametrize("encoding", ["f16", "topk-i8"])
def test_hundred_thousand_parameter_delta_fits_a_frame(encoding: Encoding) -> None:
    """The frame cap is 256 KiB; dense f32 (400 kB) would not fit, these encodings do."""
    delta = np.random.default_rng(1).normal(0.0, 0.01, size=100_000).astype(np.float32)
    container = encode_tensors({"w": delta}, encoding=encoding)
    assert len(container) < frame.DEFAULT_LIMITS.max_frame_bytes - 4096


# ---------------------------------------------------------------- names, dtypes, arguments


@pytest.mark.parametrize(
    "name",
    ["coefficient", "fc.weight", "/head/Gemm_output_0", "onnx::MatMul_12", "a b", "x" * 256],
)
def test_onnx_initializer_names_are_accepted(name: str) -> None:
    assert list(decode_tensors(encode_tensors({name: np.ones(2, np.float32)}))) == [name]


@pytest.mark.parametrize(
    "name",
    [
        pytest.param("", id="empty"),
        pytest.param("x" * 257, id="too-long"),
        pytest.param("tab\there", id="tab"),
        pytest.param("new\nline", id="newline"),
        pytest.param("caf\u00e9", id="non-ascii"),
        pytest.param("del\x7f", id="del"),
        pytest.param(3, id="not-a-string"),
    ],
)
def test_encoder_refuses_bad_tensor_names(name: Any) -> None:
    with pytest.raises(Malformed, match="tensor name"):
        encode_tensors({name: np.ones(2, np.float32)})


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(np.arange(3, dtype=np.int32), id="int32"),
        pytest.param(np.array([True]), id="bool"),
        pytest.param(np.array([1.0, "a"], dtype=object), id="object"),
        pytest.param(np.ones(2, dtype=np.complex64), id="complex"),
        pytest.param(np.ones(2, dtype=np.longdouble), id="longdouble"),
        pytest.param([1.0, 2.0], id="list"),
    ],
)
def test_encoder_refuses_non_float_tensors(value: Any) -> None:
    with pytest.raises(Malformed, match="float16/32/64"):
        encode_tensors({"w": value})


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        pytest.param({"encoding": "f64"}, "unknown tensor encoding", id="unknown-encoding"),
        pytest.param({"encoding": "topk-i8", "topk_fraction": 0.0}, "topk_fraction", id="zero"),
        pytest.param({"encoding": "topk-i8", "topk_fraction": 1.5}, "topk_fraction", id="above"),
        pytest.param({"encoding": "topk-i8", "topk_fraction": math.nan}, "topk", id="nan"),
    ],
)
def test_encoder_refuses_caller_bugs_with_value_error(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        encode_tensors({"w": np.ones(2, np.float32)}, **kwargs)


def test_encoder_refuses_an_index_the_decoder_would_refuse() -> None:
    many = {f"{i:04d}" + "x" * 250: np.zeros(1, np.float32) for i in range(4000)}
    with pytest.raises(Oversize, match="index of"):
        encode_tensors(many)


def test_encoder_refuses_more_than_eight_dims() -> None:
    with pytest.raises(Malformed, match="8 dims"):
        encode_tensors({"w": np.ones((1,) * 9, np.float32)})


# ---------------------------------------------------------------- non-finite values


@pytest.mark.parametrize("encoding", ENCODINGS)
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf], ids=["nan", "inf", "-inf"])
def test_encoder_refuses_nan_and_inf_in_every_encoding(encoding: Encoding, bad: float) -> None:
    with pytest.raises(NonFinite, match="NaN or Inf"):
        encode_tensors({"w": np.array([1.0, bad], np.float32)}, encoding=encoding)


@pytest.mark.parametrize("encoding", ["i8", "topk-i8"])
def test_i8_refuses_values_whose_scale_would_overflow_float32(encoding: Encoding) -> None:
    edge = np.array([np.finfo(np.float32).max], np.float32)
    with pytest.raises(NonFinite, match="overflows float32"):
        encode_tensors({"w": edge}, encoding=encoding)


def test_encoder_refuses_float64_beyond_float32_range() -> None:
    with pytest.raises(NonFinite):
        encode_tensors({"w": np.array([1e300])})


@pytest.mark.parametrize("encoding", ["f16", "topk-f16"])
def test_f16_refuses_values_that_would_overflow_instead_of_writing_inf(
    encoding: Encoding,
) -> None:
    largest_finite = np.nextafter(np.float32(65520), np.float32(0))
    decoded = decode_tensors(encode_tensors({"w": np.array([largest_finite])}, encoding=encoding))
    assert decoded["w"].tolist() == [65504.0]
    with pytest.raises(NonFinite, match="overflows float16"):
        encode_tensors({"w": np.array([-65520.0], np.float32)}, encoding=encoding)


f16_nan = np.array([np.nan], "<f2").tobytes()
f16_inf = np.array([np.inf], "<f2").tobytes()


@pytest.mark.parametrize(
    ("index", "parts"),
    [
        pytest.param({"tensors": [dense()]}, f32(1, math.nan), id="f32-nan"),
        pytest.param({"tensors": [dense()]}, f32(math.inf, 1), id="f32-inf"),
        pytest.param(
            {"tensors": [dense(encoding="f16", values=[0, 4])]}, f16_nan * 2, id="f16-nan"
        ),
        pytest.param(
            {"tensors": [dense(encoding="f16", values=[0, 4])]}, f16_inf * 2, id="f16-inf"
        ),
        pytest.param(
            {"tensors": [dense(encoding="i8", values=[0, 2], scale=1e37)]},
            b"\x7f\x01",
            id="i8-scale-overflows-float32",
        ),
        pytest.param(*alone(topk([1], f32(math.nan))), id="topk-f32-nan"),
        pytest.param(*alone(topk([1], f16_inf, encoding="topk-f16")), id="topk-f16-inf"),
        pytest.param(
            *alone(topk([2], b"\x01", encoding="topk-i8", scale=3e36)),
            id="topk-i8-scale-overflows-float32",
        ),
    ],
)
def test_decoder_refuses_nan_and_inf_in_every_encoding(index: Index, parts: bytes) -> None:
    with pytest.raises(NonFinite):
        decode_tensors(forge(index, parts))


@pytest.mark.parametrize(
    "raw_scale", [b"NaN", b"Infinity", b"-Infinity", b"1e999"], ids=["nan", "inf", "-inf", "1e999"]
)
@pytest.mark.parametrize("encoding", ["i8", "topk-i8"])
def test_decoder_refuses_non_finite_i8_scale(encoding: str, raw_scale: bytes) -> None:
    if encoding == "i8":
        index, parts = {"tensors": [dense(encoding="i8", values=[0, 2], scale=0.5)]}, b"\x01\x02"
    else:
        entry, parts = topk([1], b"\x01", encoding="topk-i8", scale=0.5)
        index = {"tensors": [entry]}
    raw = canonical.dumps(index).replace(b'"scale":0.5', b'"scale":' + raw_scale)
    with pytest.raises(NonFinite):
        decode_tensors(forge(None, parts, raw_index=raw))


# ---------------------------------------------------------------- pickles, dtypes, bombs


@pytest.fixture
def no_unpickling(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make any attempt to unpickle or np.load fail the test loudly."""

    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("the decoder tried to unpickle")

    for module, attr in [(pickle, "loads"), (pickle, "load"), (np, "load")]:
        monkeypatch.setattr(module, attr, forbidden)


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=True)
    return buffer.getvalue()


OBJECT_ARRAY = np.array([1.0, "payload", None], dtype=object)


@pytest.mark.parametrize(
    ("payload", "error"),
    [
        pytest.param(pickle.dumps(OBJECT_ARRAY), UnknownVersion, id="pickle"),
        pytest.param(npy_bytes(OBJECT_ARRAY), UnknownVersion, id="npy-object-array"),
        pytest.param(
            MAGIC + zlib.compress(pickle.dumps(OBJECT_ARRAY)), Malformed, id="zlib-pickle"
        ),
        pytest.param(MAGIC + zlib.compress(npy_bytes(OBJECT_ARRAY)), Malformed, id="zlib-npy"),
        pytest.param(MAGIC + pickle.dumps(OBJECT_ARRAY), Malformed, id="magic-then-pickle"),
    ],
)
@pytest.mark.usefixtures("no_unpickling")
def test_decoder_refuses_pickled_payload(payload: bytes, error: type[ProtocolError]) -> None:
    with pytest.raises(error):
        decode_tensors(payload)


@pytest.mark.parametrize("dtype", ["object", "|O", "O", "float64", "<f8", "float16", "int8", ""])
def test_decoder_refuses_object_dtype_payload(dtype: str) -> None:
    """Only "float32" is a dtype; everything else is refused before any buffer is read."""
    with pytest.raises(Malformed, match=r"index.*dtype"):
        decode_tensors(forge({"tensors": [dense(dtype=dtype)]}, f32(1, 2)))


def test_zero_bomb_builder_makes_the_stream_it_claims() -> None:
    assert zlib.decompress(zero_bomb(3)) == bytes(3 << 20)


def test_decoder_refuses_zlib_bomb() -> None:
    """1 GiB of zeros in about 1 MB: refused after inflating at most the cap plus one byte."""
    bomb = MAGIC + zero_bomb(1024)
    assert len(bomb) < 2 << 20
    max_elements = 1_000_000
    tracemalloc.start()
    try:
        with pytest.raises(Oversize, match="inflates beyond"):
            decode_tensors(bomb, max_elements=max_elements)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 3 * inflated_cap(max_elements) < 32 << 20


def test_decoder_refuses_oversize_container_before_reading_it() -> None:
    with pytest.raises(Oversize, match="exceeds 100"):
        decode_tensors(b"not even magic" * 10, max_bytes=100)


def test_decoder_refuses_more_elements_than_allowed() -> None:
    container = encode_tensors({"a": np.ones(60, np.float32), "b": np.ones(40, np.float32)})
    assert len(decode_tensors(container, max_elements=100)) == 2
    with pytest.raises(Oversize, match="more than 99 elements"):
        decode_tensors(container, max_elements=99)


def test_decoder_refuses_a_huge_declared_shape_without_allocating_it() -> None:
    entry, parts = topk([], b"", size=2**32 - 1)
    with pytest.raises(Oversize):
        decode_tensors(forge({"tensors": [entry]}, parts))


# ---------------------------------------------------------------- inconsistent containers


def two(first: Index, second: Index) -> Index:
    return {"tensors": [first, second]}


@pytest.mark.parametrize(
    ("index", "parts", "match"),
    [
        pytest.param({"tensors": [dense(shape=[3])]}, f32(1, 2), "part", id="shape-exceeds-values"),
        pytest.param({"tensors": [dense(values=[0, 4])]}, f32(1), "part", id="values-short"),
        pytest.param({"tensors": [dense(shape=[-1, -2])]}, f32(1, 2), "shape", id="negative-dims"),
        pytest.param({"tensors": [dense(shape=[1] * 9)]}, f32(1), "8 dims", id="nine-dims"),
        pytest.param(
            {"tensors": [dense(shape=[0, 2**32, 2])]}, b"", "elements", id="unshapeable-empty"
        ),
        pytest.param({"tensors": [dense(at=-8)]}, f32(1, 2), "offset", id="negative-offset"),
        pytest.param(two(dense("a"), dense("b")), f32(1, 2, 3, 4), "overlaps", id="overlapping"),
        pytest.param(two(dense("a"), dense("b", at=16)), f32(1, 2, 3, 4, 5, 6), "gap", id="gap"),
        pytest.param({"tensors": [dense(at=8)]}, f32(1, 2), "overlaps", id="out-of-range"),
        pytest.param({"tensors": [dense()]}, f32(1, 2, 3), "accounts for", id="trailing-bytes"),
        pytest.param({"tensors": [dense()]}, f32(1), "accounts for", id="parts-short"),
        pytest.param(two(dense("a"), dense("a", at=8)), f32(1, 2, 3, 4), "duplicate", id="dup"),
        pytest.param(
            two(dense("b"), dense("a", at=8)), f32(1, 2, 3, 4), "out-of-order", id="order"
        ),
        pytest.param({"tensors": [dense(name="")]}, f32(1, 2), "tensor name", id="empty-name"),
        pytest.param({"tensors": [dense(name="a\nb")]}, f32(1, 2), "tensor name", id="ctl-name"),
        pytest.param({"tensors": [dense(encoding="f64")]}, f32(1, 2), "encoding", id="encoding"),
        pytest.param(
            {"tensors": [dense(encoding="i8", values=[0, 2])]}, b"\1\2", "scale", id="no-scale"
        ),
        pytest.param({"tensors": [dense(scale=0.5)]}, f32(1, 2), "scale", id="scale-on-f32"),
        pytest.param(
            {"tensors": [dense(encoding="i8", values=[0, 2], scale=-0.5)]},
            b"\1\2",
            "scale",
            id="neg-scale",
        ),
        pytest.param(
            {"tensors": [dense(encoding="i8", values=[0, 2], scale=0.1)]},
            b"\1\2",
            "float32",
            id="f64-scale",
        ),
        pytest.param(
            {"tensors": [dense(encoding="i8", values=[0, 2], scale=0.5)]},
            b"\x80\1",
            "-128",
            id="i8-min",
        ),
        pytest.param({"tensors": [dense(count=2)]}, f32(1, 2), "top-k", id="count-on-dense"),
        pytest.param({"tensors": [dense(extra=1)]}, f32(1, 2), "unknown field", id="unknown-field"),
        pytest.param({"tensors": [dense(shape=[2.0])]}, f32(1, 2), "integer", id="float-dim"),
        pytest.param({"tensors": {}}, b"", "list", id="tensors-not-a-list"),
        pytest.param([], b"", "object", id="index-not-an-object"),
    ],
)
def test_decoder_refuses_inconsistent_index(index: object, parts: bytes, match: str) -> None:
    with pytest.raises(Malformed, match=match):
        decode_tensors(forge(index, parts))


@pytest.mark.parametrize(
    ("gaps", "changes", "match"),
    [
        pytest.param([5], {}, "beyond", id="index-out-of-range"),
        pytest.param([1, 2, 2], {}, "beyond", id="last-index-out-of-range"),
        pytest.param([2, 0], {}, "strictly increasing", id="repeated-index"),
        pytest.param([1, 1, 1, 1, 1], {}, "count", id="count-exceeds-size"),
        pytest.param([1], {"index_dtype": "u64"}, "index_dtype", id="unknown-index-dtype"),
        pytest.param([1], {"index_dtype": "u16"}, "part", id="index-length-mismatch"),
        pytest.param([1], {"count": -1}, "count", id="negative-count"),
    ],
)
def test_decoder_refuses_bad_topk_indices(gaps: list[int], changes: Index, match: str) -> None:
    entry, parts = topk(gaps, f32(*range(1, len(gaps) + 1)), **changes)
    with pytest.raises(Malformed, match=match):
        decode_tensors(forge({"tensors": [entry]}, parts))


def test_decoder_refuses_topk_entry_missing_its_index() -> None:
    entry, parts = topk([1], f32(1))
    del entry["index_dtype"]
    with pytest.raises(Malformed, match="top-k"):
        decode_tensors(forge({"tensors": [entry]}, parts))


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b'{"tensors": []}', id="whitespace"),
        pytest.param(
            b'{"tensors":[{"name":"w","dtype":"float32","shape":[2],"encoding":"f32","values":[0,8]}]}',
            id="unsorted-keys",
        ),
        pytest.param(
            canonical.dumps({"tensors": [dense(scale=None)]}), id="null-for-an-absent-field"
        ),
        pytest.param(
            canonical.dumps({"tensors": [dense(encoding="i8", values=[0, 2], scale=1)]}),
            id="integer-scale",
        ),
    ],
)
def test_decoder_refuses_non_canonical_index(raw: bytes) -> None:
    parts = b"\1\2" if b"i8" in raw else f32(1, 2) if b"values" in raw else b""
    with pytest.raises(Malformed, match="canonical"):
        decode_tensors(forge(None, parts, raw_index=raw))


VALID = encode_tensors({"w": np.ones(4, np.float32)}, encoding="topk-i8")


@pytest.mark.parametrize(
    ("data", "error", "match"),
    [
        pytest.param(b"", UnknownVersion, "magic", id="empty"),
        pytest.param(b"PK\x03\x04" + VALID[4:], UnknownVersion, "magic", id="zip-magic"),
        pytest.param(b"EFT2" + VALID[4:], UnknownVersion, "version", id="future-version"),
        pytest.param(MAGIC + b"not zlib", Malformed, "zlib", id="not-zlib"),
        pytest.param(VALID[:-3], Malformed, "truncated", id="truncated-stream"),
        pytest.param(VALID + b"\0", Malformed, "after", id="trailing-bytes"),
        pytest.param(MAGIC + zlib.compress(b"\0\0"), Malformed, "index length", id="no-length"),
        pytest.param(
            MAGIC + zlib.compress(b"\0\0\0\xff{}"), Malformed, "runs past", id="long-index"
        ),
        pytest.param(
            MAGIC + zlib.compress(b"\x00\x10\x00\x01" + b" " * (1 << 20)),
            Malformed,
            "exceeds 1048576",
            id="index-cap",
        ),
    ],
)
def test_decoder_refuses_bad_framing(data: bytes, error: type[ProtocolError], match: str) -> None:
    with pytest.raises(error, match=match):
        decode_tensors(data)


# ---------------------------------------------------------------- fuzzing


@settings(max_examples=300, deadline=None)
@given(
    data=st.binary(max_size=512)
    | st.binary(max_size=512).map(lambda b: MAGIC + b)
    | st.binary(max_size=512).map(lambda b: MAGIC + zlib.compress(b))
)
def test_decoder_raises_only_protocol_errors_on_arbitrary_bytes(data: bytes) -> None:
    with pytest.raises(ProtocolError):
        decode_tensors(data)


def mutate(data: bytes, position: int, bit: int, cut: bool) -> bytes:
    if cut:
        return data[: position % (len(data) + 1)]
    flipped = bytearray(data)
    flipped[position % len(flipped)] ^= 1 << bit
    return bytes(flipped)


@settings(max_examples=400, deadline=None)
@given(
    tensors=tensor_maps(f16_safe).filter(bool),
    encoding=st.sampled_from(ENCODINGS),
    inside=st.booleans(),
    position=st.integers(0, 10**6),
    bit=st.integers(0, 7),
    cut=st.booleans(),
)
def test_decoder_raises_only_protocol_errors_on_mutated_containers(
    tensors: dict[str, np.ndarray],
    encoding: Encoding,
    inside: bool,
    position: int,
    bit: int,
    cut: bool,
) -> None:
    """Flip a bit or truncate, either the container as sent or its inflated stream
    (recompressed, so the mutation reaches the index and the parts)."""
    container = encode_tensors(tensors, encoding=encoding, topk_fraction=0.5)
    if inside:
        mutated = MAGIC + zlib.compress(mutate(inflate(container), position, bit, cut))
    else:
        mutated = mutate(container, position, bit, cut)
    try:
        decoded = decode_tensors(mutated)
    except ProtocolError:
        return
    for y in decoded.values():  # a mutation may land in a value and still be valid
        assert y.dtype == np.float32
        assert np.isfinite(y).all()


small_or_any = st.integers(-2, 40) | st.integers(-(2**63), 2**63 - 1)
forged_entries = st.fixed_dictionaries(
    {
        "name": tensor_names | st.text(max_size=3),
        "dtype": st.just("float32") | st.sampled_from(["float64", "object", "|O"]),
        "shape": st.lists(small_or_any, max_size=10),
        "encoding": st.sampled_from(ENCODINGS) | st.sampled_from(["f64", "pickle"]),
        "values": st.tuples(small_or_any, small_or_any),
    },
    optional={
        "scale": st.floats(0, 1e39, allow_nan=False) | st.floats(width=32, allow_nan=False),
        "count": small_or_any,
        "index": st.tuples(small_or_any, small_or_any),
        "index_dtype": st.sampled_from(["u8", "u16", "u32", "u64"]),
    },
)


@settings(max_examples=500, deadline=None)
@given(entries=st.lists(forged_entries, max_size=3), parts=st.binary(max_size=256))
def test_decoder_raises_only_protocol_errors_on_forged_indexes(
    entries: list[Index], parts: bytes
) -> None:
    try:
        container = forge({"tensors": entries}, parts)
    except NonFinite:  # an infinite scale cannot even be written canonically
        return
    try:
        decoded = decode_tensors(container)
    except ProtocolError:
        return
    for y in decoded.values():
        assert y.dtype == np.float32
        assert np.isfinite(y).all()


# ---------------------------------------------------------------- norms and clipping


def test_l2_norm_spans_all_tensors() -> None:
    tensors = {"a": np.array([3.0], np.float32), "b": np.array([[0.0, 4.0]], np.float32)}
    assert l2_norm(tensors) == 5.0


def test_clip_l2_scales_a_large_delta_to_the_bound() -> None:
    rng = np.random.default_rng(3)
    delta = {"w": rng.normal(size=(40, 10)).astype(np.float32), "b": np.full(10, 5, np.float32)}
    clipped = clip_l2(delta, 1.0)
    assert 1.0 - 1e-6 < l2_norm(clipped) <= 1.0
    factor = clipped["b"][0] / delta["b"][0]
    for name, x in delta.items():
        np.testing.assert_allclose(clipped[name], x * factor, rtol=1e-6)


def test_clip_l2_leaves_smaller_deltas_untouched() -> None:
    delta = {"w": np.array([0.3, -0.4], np.float32)}
    clipped = clip_l2(delta, 0.5 + 1e-6)
    assert clipped["w"].tobytes() == delta["w"].tobytes()
    clipped["w"][0] = 9.0
    assert delta["w"][0] == np.float32(0.3)


@settings(max_examples=200, deadline=None)
@given(tensors=tensor_maps(st.floats(-(2.0**100), 2.0**100, width=32)), max_norm=st.floats(0, 1e6))
def test_clipped_norm_never_exceeds_the_bound(
    tensors: dict[str, np.ndarray], max_norm: float
) -> None:
    clipped = clip_l2(tensors, max_norm)
    assert l2_norm(clipped) <= max_norm
    for name, x in tensors.items():
        assert isinstance(clipped[name], np.ndarray)
        assert clipped[name].shape == x.shape


def test_clip_l2_refuses_non_finite_deltas() -> None:
    with pytest.raises(NonFinite):
        clip_l2({"w": np.array([1.0, math.nan], np.float32)}, 1.0)


@pytest.mark.parametrize("max_norm", [-1.0, math.inf, math.nan])
def test_clip_l2_refuses_a_meaningless_bound(max_norm: float) -> None:
    with pytest.raises(ValueError, match="max_norm"):
        clip_l2({"w": np.ones(2, np.float32)}, max_norm)
