"""Named float tensors on the wire: model deltas and smoke inputs, compact and safe to decode.

A container is ``b"EFT1"`` (magic ``EFT``, container version ``1``) followed by one zlib
stream holding a 4-byte big-endian index length ``N``, the index (``N`` bytes of canonical
JSON ``{"tensors": [entry, ...]}``, entries in name order) and then the parts: raw
little-endian buffers, back to back in index order. An entry (keys an encoding does not
use are absent)::

    name         1-256 printable ASCII characters ("fc.weight", "onnx::MatMul_12")
    dtype        "float32": what every decoded tensor is (float16/float64 input is converted)
    shape        up to 8 dims, each >= 0
    encoding     f32 | f16 | i8 | topk-f32 | topk-f16 | topk-i8
    values       [offset, length] of the values part in the parts region
    scale        i8 encodings: the symmetric scale, a float32 value
    count        top-k: the number of kept entries k
    index        top-k: [offset, length] of the index part
    index_dtype  top-k: "u8" | "u16" | "u32"

Encodings and their error bounds, for ``x`` the tensor as float32 and ``y`` the decoded one:

========  ==========================================  ==========================================
f32       ``x`` as ``<f4``                            exact: ``y == x``
f16       ``x`` as ``<f2``; ``|x| >= 65520`` (which   ``|y - x| <= max(2^-11 |x|, 2^-25)``:
          would round to inf) is refused at encode    relative 2^-11 in fp16's normal range
                                                      (``|x| >= 2^-14``), absolute below it
i8        ``q = round(x / scale)`` as ``i1`` in       ``|y - x| <= scale (1/2 + 2^-17)``, i.e.
          [-127, 127]; ``scale`` = the smallest       about ``max|x| / 254``; the 2^-17 is the
          float32 >= ``max|x| / 127`` (refused at     float32 rounding of ``q * scale``
          encode if ``127 * scale`` would overflow
          float32: only ``max|x|`` within 2^-23
          of float32's max does)
topk-E    the ``k = ceil(fraction * size)`` entries   kept: E's bound; dropped: ``y = 0``, so the
          of largest magnitude, values as E (i8's     error is exactly the dropped residual and
          scale over the kept values); indices        ``||y - x||^2 = ||dropped||^2 +
          ascending, stored as gaps from the          ||kept error||^2``
          previous one (the first from -1) in the
          narrowest of u8/u16/u32 that fits
========  ==========================================  ==========================================

Round-trip law: ``decode_tensors(encode_tensors(t)) == {n: t[n] as float32}`` (f32), within
the bounds above otherwise; the same input always gives the same bytes.

Decoding is strict and never unpickles (threat-model B29). The compressed size is capped by
``max_bytes`` and the inflated size by a cap derived from ``max_elements``: zlib never
produces more than that cap plus one byte, so a bomb costs at most about twice the cap in
memory however far it would expand (T4). The index must be the canonical JSON this module
writes, the parts must tile the parts region exactly, and every value must be finite
(B27). It raises only :class:`~protocol.errors.ProtocolError` subclasses and never
returns a partial result.

What it does not do: compare names, shapes or dtypes against a model (B26 is the caller's
check against the base model's head), or bound a delta's norm. :func:`clip_l2` bounds it
before sending; a lossy encoding then moves the norm by up to its error bound, so a
receiver enforcing ``clip_norm`` should clip again rather than refuse.
"""

from __future__ import annotations

import math
import re
import struct
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal, cast

import numpy as np
import numpy.typing as npt

from protocol import canonical, schema
from protocol.errors import Malformed, NonFinite, Oversize, UnknownVersion

Encoding = Literal["f32", "f16", "i8", "topk-f32", "topk-f16", "topk-i8"]
ValueCodec = Literal["f32", "f16", "i8"]
IndexDtype = Literal["u8", "u16", "u32"]
Part = tuple[int, int]
Floats = npt.NDArray[np.float32]

MAGIC = b"EFT1"
MAX_DIMS = 8
MAX_INDEX_BYTES = 1024 * 1024
MAX_TENSOR_ELEMENTS = 2**32 - 1
"""Per tensor; also bounds the non-zero dims of an empty tensor (numpy cannot shape more)."""
DEFAULT_MAX_BYTES = 16 * 1024 * 1024
DEFAULT_MAX_ELEMENTS = 4 * 1024 * 1024
F16_OVERFLOW = 65520.0
"""The smallest magnitude float16 rounds to infinity (halfway past its largest, 65504)."""
_F32_MAX = float(np.finfo(np.float32).max)
_LENGTH = struct.Struct(">I")
_LEVEL = 6
_NAME = re.compile(r"[\x20-\x7e]{1,256}")
_ENCODINGS: dict[str, tuple[bool, ValueCodec]] = {
    "f32": (False, "f32"),
    "f16": (False, "f16"),
    "i8": (False, "i8"),
    "topk-f32": (True, "f32"),
    "topk-f16": (True, "f16"),
    "topk-i8": (True, "i8"),
}
_VALUE_DTYPES: dict[ValueCodec, np.dtype[np.generic]] = {
    "f32": np.dtype("<f4"),
    "f16": np.dtype("<f2"),
    "i8": np.dtype("i1"),
}
_INDEX_DTYPES: dict[IndexDtype, np.dtype[np.generic]] = {
    "u8": np.dtype("u1"),
    "u16": np.dtype("<u2"),
    "u32": np.dtype("<u4"),
}


def check_tensor_name(name: object) -> None:
    """Raise Malformed unless ``name`` is 1-256 printable ASCII characters.

    Tensor names are ONNX initializer names (``"/head/Gemm_output_0"``), so they are wider
    than :data:`protocol.schema.NAME_PATTERN`; they never become topics or paths.
    """
    if not isinstance(name, str) or _NAME.fullmatch(name) is None:
        raise Malformed(f"tensor name {str(name)[:40]!r} is not 1-256 printable ASCII characters")


@dataclass(frozen=True)
class _Entry:
    """One tensor in the index; construction checks it against itself (not the parts)."""

    name: str
    dtype: Literal["float32"]
    shape: tuple[int, ...]
    encoding: Encoding
    values: Part
    scale: float | None = None
    count: int | None = None
    index: Part | None = None
    index_dtype: IndexDtype | None = None

    def __post_init__(self) -> None:
        check_tensor_name(self.name)
        if len(self.shape) > MAX_DIMS or min(self.shape, default=0) < 0:
            raise Malformed(f"tensor {self.name!r}: shape must be at most {MAX_DIMS} dims >= 0")
        if math.prod(max(d, 1) for d in self.shape) > MAX_TENSOR_ELEMENTS:
            raise Malformed(f"tensor {self.name!r}: more than {MAX_TENSOR_ELEMENTS} elements")
        sparse, codec = _ENCODINGS[self.encoding]
        if (self.scale is not None) != (codec == "i8"):
            raise Malformed(f"tensor {self.name!r}: scale belongs to the i8 encodings only")
        if self.scale is not None:
            _check_scale(self.name, self.scale)
        topk = (self.count, self.index, self.index_dtype)
        if any((v is not None) != sparse for v in topk):
            raise Malformed(f"tensor {self.name!r}: count, index and index_dtype are for top-k")
        kept = self.size
        if self.count is not None and self.index is not None and self.index_dtype is not None:
            if not 0 <= self.count <= self.size:
                raise Malformed(f"tensor {self.name!r}: top-k count outside [0, {self.size}]")
            kept = self.count
            _check_part(self.name, self.index, kept * _INDEX_DTYPES[self.index_dtype].itemsize)
        _check_part(self.name, self.values, kept * _VALUE_DTYPES[codec].itemsize)

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    def parts(self) -> tuple[Part, ...]:
        """The entry's parts in the order they are laid out."""
        return (self.values,) if self.index is None else (self.index, self.values)

    def to_json(self) -> dict[str, object]:
        return {k: v for k, v in schema.to_json(self).items() if v is not None}


@dataclass(frozen=True)
class _Index:
    tensors: tuple[_Entry, ...]


def _check_scale(name: str, scale: float) -> None:
    if scale * 127 > _F32_MAX:
        raise NonFinite(f"tensor {name!r}: scale {scale} overflows float32")
    if scale < 0 or float(np.float32(scale)) != scale:
        raise Malformed(f"tensor {name!r}: scale must be a non-negative float32 value")


def _check_part(name: str, part: Part, length: int) -> None:
    if part[0] < 0 or part[1] != length:
        raise Malformed(f"tensor {name!r}: part {list(part)} is not {length} bytes at offset >= 0")


# ---------------------------------------------------------------- encode


def encode_tensors(
    tensors: Mapping[str, np.ndarray], *, encoding: Encoding = "f32", topk_fraction: float = 0.1
) -> bytes:
    """Pack ``tensors`` into one container, every tensor in ``encoding``.

    ``topk_fraction`` is the share of each tensor's entries a ``topk-*`` encoding keeps
    (at least one of a non-empty tensor). Encode refuses what decode would refuse, with
    the same errors.

    Raises:
        Malformed: a bad tensor name, a dtype other than float16/32/64, more than 8 dims
            or more than ``MAX_TENSOR_ELEMENTS`` elements.
        NonFinite: a NaN or Inf, a float64 beyond float32's range, or (f16) ``|x| >= 65520``.
        Oversize: so many tensors that the index exceeds ``MAX_INDEX_BYTES``.
        ValueError: an unknown ``encoding`` or a ``topk_fraction`` outside (0, 1]; these are
            the caller's bugs, not a peer's.
    """
    if encoding not in _ENCODINGS:
        raise ValueError(f"unknown tensor encoding {encoding!r}")
    if not 0.0 < topk_fraction <= 1.0:
        raise ValueError(f"topk_fraction {topk_fraction} is outside (0, 1]")
    for name in tensors:
        check_tensor_name(name)
    entries: list[dict[str, object]] = []
    chunks: list[bytes] = []
    offset = 0
    for name in sorted(tensors):
        entry, parts = _encode_one(name, tensors[name], encoding, topk_fraction, offset)
        entries.append(entry.to_json())
        chunks.extend(parts)
        offset += sum(len(part) for part in parts)
    index = canonical.dumps({"tensors": entries})
    if len(index) > MAX_INDEX_BYTES:
        raise Oversize(f"index of {len(index)} bytes exceeds {MAX_INDEX_BYTES}")
    plain = b"".join([_LENGTH.pack(len(index)), index, *chunks])
    return MAGIC + zlib.compress(plain, _LEVEL)


def _encode_one(
    name: str, tensor: object, encoding: Encoding, fraction: float, offset: int
) -> tuple[_Entry, list[bytes]]:
    """One tensor's entry and parts, its parts starting at ``offset``."""
    sparse, codec = _ENCODINGS[encoding]
    x = _as_float32(name, tensor)
    values = x.ravel()
    if not sparse:
        data, scale = _encode_values(name, values, codec)
        entry = _Entry(name, "float32", x.shape, encoding, (offset, len(data)), scale)
        return entry, [data]
    kept = _top_k(values, math.ceil(fraction * values.size))
    gaps = np.diff(kept, prepend=-1)
    width = _index_dtype(int(gaps.max(initial=0)))
    index = gaps.astype(_INDEX_DTYPES[width]).tobytes()
    data, scale = _encode_values(name, values[kept], codec)
    entry = _Entry(
        name,
        "float32",
        x.shape,
        encoding,
        values=(offset + len(index), len(data)),
        scale=scale,
        count=int(kept.size),
        index=(offset, len(index)),
        index_dtype=width,
    )
    return entry, [index, data]


def _as_float32(name: str, x: object) -> Floats:
    if not isinstance(x, np.ndarray) or x.dtype.kind != "f" or x.dtype.itemsize not in (2, 4, 8):
        what = x.dtype if isinstance(x, np.ndarray) else type(x).__name__
        raise Malformed(f"tensor {name!r}: {what} is not a float16/32/64 array")
    with np.errstate(over="ignore"):  # a float64 beyond float32's range becomes inf: refused
        x32 = np.asarray(x, dtype=np.float32)
    if not np.isfinite(x32).all():
        raise NonFinite(f"tensor {name!r} holds NaN or Inf (in float32)")
    return x32


def _top_k(values: Floats, k: int) -> npt.NDArray[np.int64]:
    """Flat indices of the ``k`` entries of largest magnitude, ascending."""
    if k >= values.size:
        return np.arange(values.size, dtype=np.int64)
    kept = np.argpartition(np.abs(values), values.size - k)[values.size - k :]
    return np.sort(kept).astype(np.int64)


def _index_dtype(max_gap: int) -> IndexDtype:
    if max_gap <= 0xFF:
        return "u8"
    return "u16" if max_gap <= 0xFFFF else "u32"


def _max_abs(values: Floats) -> float:
    return float(np.abs(values).max()) if values.size else 0.0


def _encode_values(name: str, values: Floats, codec: ValueCodec) -> tuple[bytes, float | None]:
    if codec == "f32":
        return values.astype("<f4").tobytes(), None
    if codec == "f16":
        if _max_abs(values) >= F16_OVERFLOW:
            raise NonFinite(
                f"tensor {name!r}: {_max_abs(values)} overflows float16 (max 65504); use f32 or i8"
            )
        return values.astype("<f2").tobytes(), None
    scale = i8_scale(_max_abs(values))
    if scale == 0.0:
        return bytes(values.size), scale
    q = np.rint(values.astype(np.float64) / scale)
    return q.astype("i1").tobytes(), scale


def i8_scale(max_abs: float) -> float:
    """The i8 scale for values up to ``max_abs``: the smallest float32 >= ``max_abs / 127``.

    Rounding up keeps every ``|x| / scale <= 127``, so ``round`` never leaves int8; being
    a float32 makes ``q * scale`` exact before the final rounding to float32.
    """
    scale = np.float32(max_abs / 127)
    while float(scale) * 127 < max_abs:  # exact: 24-bit times 7-bit fits a float64
        scale = np.nextafter(scale, np.float32(np.inf))
    return float(scale)


# ---------------------------------------------------------------- decode


def decode_tensors(
    data: bytes,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_elements: int = DEFAULT_MAX_ELEMENTS,
) -> dict[str, Floats]:
    """Unpack a container into float32, C-contiguous, finite arrays, in name order.

    ``max_bytes`` caps the container as received and ``max_elements`` the total number
    of elements of all its tensors; the inflated stream may not exceed what a valid
    container of ``max_elements`` needs (:func:`inflated_cap`). Pass the sizes the caller
    expects (a head's parameter count), not the defaults, where they are known.

    Raises:
        Oversize: more than ``max_bytes``, an inflated stream beyond the cap, or more than
            ``max_elements`` elements.
        UnknownVersion: not a ``EFT1`` container.
        Malformed: a broken zlib stream, an index that is not canonical or is inconsistent
            (shape, lengths, overlapping or stray parts, duplicate or unordered names,
            unknown dtype or encoding), top-k indices out of range or not increasing.
        NonFinite: a NaN or Inf value, or an i8 scale that would overflow.
    """
    if len(data) > max_bytes:
        raise Oversize(f"tensor container of {len(data)} bytes exceeds {max_bytes}")
    if data[:4] != MAGIC:
        if data[:3] == MAGIC[:3] and len(data) >= 4:
            raise UnknownVersion(f"tensor container version {data[3:4]!r} is not supported")
        raise UnknownVersion("not a tensor container (bad magic)")
    plain = memoryview(_inflate(memoryview(data)[4:], inflated_cap(max_elements)))
    entries = _read_index(plain)
    parts = plain[_LENGTH.size + _LENGTH.unpack_from(plain)[0] :]
    _check_layout(entries, len(parts), max_elements)
    return {entry.name: _decode_entry(entry, parts) for entry in entries}


def inflated_cap(max_elements: int) -> int:
    """The largest inflated stream a valid container of ``max_elements`` elements needs.

    Worst case per element: a top-k entry keeping everything, with a 4-byte value and a
    4-byte gap.
    """
    return _LENGTH.size + MAX_INDEX_BYTES + 8 * max_elements


def _inflate(compressed: memoryview, cap: int) -> bytes:
    inflater = zlib.decompressobj()
    try:
        plain = inflater.decompress(compressed, cap + 1)
    except zlib.error as e:
        raise Malformed(f"tensor container is not a zlib stream: {e}") from e
    if len(plain) > cap:
        raise Oversize(f"tensor container inflates beyond {cap} bytes")
    if not inflater.eof:
        raise Malformed("tensor container's zlib stream is truncated")
    if inflater.unused_data:
        raise Malformed("bytes after the tensor container's zlib stream")
    return plain


def _read_index(plain: memoryview) -> tuple[_Entry, ...]:
    if len(plain) < _LENGTH.size:
        raise Malformed("tensor container has no index length")
    (length,) = _LENGTH.unpack_from(plain)
    if length > MAX_INDEX_BYTES:
        raise Malformed(f"index of {length} bytes exceeds {MAX_INDEX_BYTES}")
    if _LENGTH.size + length > len(plain):
        raise Malformed(f"index length {length} runs past the container")
    raw = bytes(plain[_LENGTH.size : _LENGTH.size + length])
    index = schema.from_json(_Index, canonical.loads(raw), path="index")
    if canonical.dumps({"tensors": [e.to_json() for e in index.tensors]}) != raw:
        raise Malformed("tensor index is not in canonical form")
    return index.tensors


def _check_layout(entries: tuple[_Entry, ...], parts_length: int, max_elements: int) -> None:
    """Names strictly in order, elements within the cap, parts tiling the region exactly."""
    elements = offset = 0
    previous = ""
    for entry in entries:
        if entry.name <= previous:
            what = "duplicate" if entry.name == previous else "out-of-order"
            raise Malformed(f"{what} tensor name {entry.name!r}")
        previous = entry.name
        elements += entry.size
        if elements > max_elements:
            raise Oversize(f"tensors hold more than {max_elements} elements")
        for start, length in entry.parts():
            if start != offset:
                raise Malformed(
                    f"tensor {entry.name!r}: part at {start} overlaps or leaves a gap "
                    f"(expected {offset})"
                )
            offset += length
    if offset != parts_length:
        raise Malformed(f"index accounts for {offset} part bytes, container has {parts_length}")


def _decode_entry(entry: _Entry, parts: memoryview) -> Floats:
    _, codec = _ENCODINGS[entry.encoding]
    start, length = entry.values
    values = _decode_values(entry, codec, parts[start : start + length])
    if not np.isfinite(values).all():
        raise NonFinite(f"tensor {entry.name!r} holds NaN or Inf")
    if entry.index is None or entry.index_dtype is None:
        return values.reshape(entry.shape)
    start, length = entry.index
    gaps = np.frombuffer(parts[start : start + length], dtype=_INDEX_DTYPES[entry.index_dtype])
    if gaps.size and int(gaps.min()) == 0:
        raise Malformed(f"tensor {entry.name!r}: top-k indices are not strictly increasing")
    kept = np.cumsum(gaps, dtype=np.int64) - 1
    if kept.size and int(kept[-1]) >= entry.size:
        raise Malformed(f"tensor {entry.name!r}: top-k index beyond its {entry.size} entries")
    dense = np.zeros(entry.size, dtype=np.float32)
    dense[kept] = values
    return dense.reshape(entry.shape)


def _decode_values(entry: _Entry, codec: ValueCodec, buffer: memoryview) -> Floats:
    raw = np.frombuffer(buffer, dtype=_VALUE_DTYPES[codec])
    if codec != "i8":
        return raw.astype(np.float32)
    if raw.size and int(raw.min()) == -128:
        raise Malformed(f"tensor {entry.name!r}: i8 value -128 is outside [-127, 127]")
    return cast(Floats, raw.astype(np.float32) * np.float32(entry.scale or 0.0))


# ---------------------------------------------------------------- norms


def l2_norm(tensors: Mapping[str, np.ndarray]) -> float:
    """The L2 norm of all tensors taken as one vector, accumulated in float64.

    NaN or Inf if any value is; it never raises.
    """
    return math.sqrt(sum(float(np.square(x, dtype=np.float64).sum()) for x in tensors.values()))


def clip_l2(tensors: Mapping[str, np.ndarray], max_norm: float) -> dict[str, Floats]:
    """Scale all tensors together so their joint L2 norm is at most ``max_norm``.

    Returns float32 copies, the codec's dtype: a delta already within the bound comes
    back with its values unchanged. A clipped delta's norm lands just below
    ``max_norm``, never above: the products are rounded to float32 toward zero, and the
    factor keeps 2^-32 of headroom for float64 rounding in the norms.

    Raises:
        Malformed: a tensor that is not a float16/32/64 array.
        NonFinite: a tensor holds NaN or Inf, or float64 values beyond float32's range.
        ValueError: ``max_norm`` is negative or not finite (a caller's bug).
    """
    if not 0.0 <= max_norm < math.inf:
        raise ValueError(f"max_norm {max_norm} must be finite and >= 0")
    converted = {name: _as_float32(name, x) for name, x in tensors.items()}
    norm = l2_norm(converted)
    if norm <= max_norm:
        return {name: x.copy() for name, x in converted.items()}
    factor = max_norm / norm * (1 - 2**-32)
    return {name: _scale_toward_zero(x, factor) for name, x in converted.items()}


def _scale_toward_zero(x: Floats, factor: float) -> Floats:
    exact = x.ravel().astype(np.float64) * factor
    scaled = exact.astype(np.float32)
    rounded_up = np.abs(scaled) > np.abs(exact)
    scaled[rounded_up] = np.nextafter(scaled[rounded_up], np.float32(0))
    return scaled.reshape(x.shape)


__all__ = [
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_ELEMENTS",
    "MAGIC",
    "Encoding",
    "check_tensor_name",
    "clip_l2",
    "decode_tensors",
    "encode_tensors",
    "i8_scale",
    "inflated_cap",
    "l2_norm",
]
