"""Uploaded rows (reference and validation data), read without trusting them.

Data arrives as ``.npz`` (``numpy.savez``): array ``X`` (rows × features, any real
dtype, read as float32), optional ``y`` and optional ``feature_names`` (strings). It is
read with ``allow_pickle=False`` (never unpickled: a pickle runs code), and every array's
declared size is checked from its header before numpy allocates it (zip bombs). Only
the three arrays are accepted, ``X`` must be 2-D and finite, ``y`` and the names must
match its rows and columns.
"""

from __future__ import annotations

import io
import math
import zipfile
from dataclasses import dataclass
from typing import IO

import numpy as np

from hub.errors import InvalidRequest

MAX_DATA_BYTES = 64 * 1024 * 1024  # the uploaded .npz
MAX_ARRAY_BYTES = 256 * 1024 * 1024  # one array, uncompressed
MAX_ROWS = 1_000_000
MAX_FEATURES = 4096  # protocol.messages.DataDelta carries at most 4096 feature sketches
MAX_NAME = 128  # protocol.sketches.FeatureSketch name length
_ARRAYS = ("X", "y", "feature_names")


@dataclass(frozen=True)
class Dataset:
    """Uploaded rows: ``x`` float32 ``[rows, features]``, ``y`` float64 or None."""

    x: np.ndarray
    y: np.ndarray | None
    feature_names: tuple[str, ...]


def load_dataset(data: bytes, *, what: str, max_bytes: int = MAX_DATA_BYTES) -> Dataset:
    """Read an uploaded ``.npz`` without unpickling anything.

    ``what`` names the upload in error messages ("reference", "validation").

    Raises:
        InvalidRequest: too large, not an ``.npz``, an object (pickled) array, an
            unknown array, ``X`` missing or not 2-D real numbers, non-finite values,
            ``y`` or ``feature_names`` not matching ``X``'s rows or columns.
    """
    if len(data) > max_bytes:
        raise InvalidRequest(f"{what} data of {len(data)} bytes exceeds {max_bytes}")
    arrays = _read_npz(data, what)
    if "X" not in arrays:
        raise InvalidRequest(f"{what} data has no array 'X' (rows x features)")
    x = arrays["X"]
    if x.ndim != 2 or x.shape[0] < 1 or x.shape[1] < 1:
        raise InvalidRequest(f"{what} X must be 2-D [rows, features], got shape {x.shape}")
    if x.shape[0] > MAX_ROWS or x.shape[1] > MAX_FEATURES:
        raise InvalidRequest(
            f"{what} X of shape {x.shape} exceeds {MAX_ROWS} rows or {MAX_FEATURES} features"
        )
    x = _real(x, what, "X").astype(np.float32)
    _check_finite(x, what, "X")
    y = arrays.get("y")
    if y is not None:
        if y.ndim not in (1, 2) or y.shape[0] != x.shape[0]:
            raise InvalidRequest(
                f"{what} y of shape {y.shape} does not match X's {x.shape[0]} rows"
            )
        y = _real(y, what, "y").astype(np.float64)
        _check_finite(y, what, "y")
    return Dataset(x, y, _feature_names(arrays.get("feature_names"), x.shape[1], what))


def _read_npz(data: bytes, what: str) -> dict[str, np.ndarray]:
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        members = archive.namelist()
        for member in members:
            name = member.removesuffix(".npy")
            if name not in _ARRAYS:
                raise InvalidRequest(
                    f"{what} data has an unexpected array {name[:40]!r}; "
                    "expected X, y and feature_names"
                )
            with archive.open(member) as f:
                _check_header(f, what, name)
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            return {name: np.asarray(npz[name]) for name in npz.files}
    except InvalidRequest:
        raise
    except ValueError as e:  # numpy refusing an object array without pickle (B29), or a bad header
        raise InvalidRequest(f"{what} data is not a plain numeric .npz: {str(e)[:120]}") from e
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise InvalidRequest(f"{what} data is not an .npz archive: {str(e)[:120]}") from e


def _check_header(f: IO[bytes], what: str, name: str) -> None:
    """Refuse an object array or one whose declared size is too large, before loading it."""
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        shape, _, dtype = np.lib.format.read_array_header_1_0(f)
    elif version == (2, 0):
        shape, _, dtype = np.lib.format.read_array_header_2_0(f)
    else:
        raise InvalidRequest(f"{what} array {name} uses .npy format {version}; save with numpy")
    if dtype.hasobject:
        raise InvalidRequest(f"{what} array {name} holds Python objects (pickle): refused")
    if math.prod(shape) * max(dtype.itemsize, 1) > MAX_ARRAY_BYTES:
        raise InvalidRequest(
            f"{what} array {name} of shape {shape} exceeds {MAX_ARRAY_BYTES} bytes"
        )


def _real(array: np.ndarray, what: str, name: str) -> np.ndarray:
    if array.dtype.kind not in "fiub":
        raise InvalidRequest(f"{what} {name} must hold real numbers, not {array.dtype}")
    return array


def _check_finite(array: np.ndarray, what: str, name: str) -> None:
    bad = ~np.isfinite(array).reshape(array.shape[0], -1).all(axis=1)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise InvalidRequest(
            f"{what} {name} has NaN or infinite values in {int(bad.sum())} rows "
            f"(first: row {first})"
        )


def _feature_names(names: np.ndarray | None, count: int, what: str) -> tuple[str, ...]:
    if names is None:
        return tuple(f"f{i}" for i in range(count))
    if names.dtype.kind != "U" or names.shape != (count,):
        raise InvalidRequest(f"{what} feature_names must be {count} strings, one per X column")
    result = tuple(str(n) for n in names)
    if any(not 0 < len(n) <= MAX_NAME for n in result) or len(set(result)) != count:
        raise InvalidRequest(f"{what} feature_names must be distinct, 1-{MAX_NAME} characters")
    return result
