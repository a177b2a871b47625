"""Deltas as the aggregator sees them: named float tensors laid end to end in one vector.

A delta arrives as a :mod:`protocol.tensors` container of the head's tensors (weight
``(n_features, n_outputs)`` and bias ``(n_outputs,)``, named as in the manifest's
:class:`~protocol.manifest.Head`). The maths of aggregation is over flat vectors, so a
:class:`Layout` fixes where each tensor lives in one: names in sorted order (the
container's order), each tensor row-major. ``unflatten(flatten(t)) == t`` for every ``t``
that :meth:`Layout.mismatch` accepts.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from protocol.manifest import Head

Floats32 = npt.NDArray[np.float32]
Floats64 = npt.NDArray[np.float64]
Tensors = Mapping[str, np.ndarray]
"""Named float arrays: a decoded delta, an aggregate, a head's parameters."""


@dataclass(frozen=True)
class Layout:
    """Tensor names and shapes, sorted by name, and so their offsets in a flat vector."""

    shapes: tuple[tuple[str, tuple[int, ...]], ...]

    def __post_init__(self) -> None:
        names = [name for name, _ in self.shapes]
        if names != sorted(set(names)):
            raise ValueError("layout names must be unique and sorted")

    @classmethod
    def of_head(cls, head: Head) -> Layout:
        """What a delta of ``head`` must hold: its weight, and its bias when it has one."""
        shapes: dict[str, tuple[int, ...]] = {head.weight: (head.n_features, head.n_outputs)}
        if head.bias is not None:
            shapes[head.bias] = (head.n_outputs,)
        return cls.from_shapes(shapes)

    @classmethod
    def of(cls, tensors: Tensors) -> Layout:
        return cls.from_shapes({name: tuple(x.shape) for name, x in tensors.items()})

    @classmethod
    def from_shapes(cls, shapes: Mapping[str, Iterable[int]]) -> Layout:
        return cls(tuple((name, tuple(int(d) for d in shapes[name])) for name in sorted(shapes)))

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.shapes)

    @property
    def size(self) -> int:
        """Parameters in all tensors together: the length of the flat vector."""
        return sum(math.prod(shape) for _, shape in self.shapes)

    def slices(self) -> list[tuple[str, tuple[int, ...], slice]]:
        """Each tensor's name, shape and place in the flat vector."""
        out, offset = [], 0
        for name, shape in self.shapes:
            size = math.prod(shape)
            out.append((name, shape, slice(offset, offset + size)))
            offset += size
        return out

    def mismatch(self, tensors: Tensors) -> str | None:
        """Why ``tensors`` does not fit this layout (``None``: it fits).

        Names, shapes and a float dtype are checked; values are not (finiteness is
        screening's job, and the decoder's).
        """
        expected, got = set(self.names), set(tensors)
        if expected != got:
            missing, extra = sorted(expected - got), sorted(got - expected)
            return f"tensors differ from the head: missing {missing[:4]}, extra {extra[:4]}"
        for name, shape in self.shapes:
            x = tensors[name]
            if not isinstance(x, np.ndarray) or x.dtype.kind != "f":
                return f"tensor {name[:60]!r} is not a float array"
            if tuple(x.shape) != shape:
                return f"tensor {name[:60]!r} is {list(x.shape)}, the head's is {list(shape)}"
        return None

    def flatten(self, tensors: Tensors, dtype: type[np.floating] = np.float64) -> np.ndarray:
        """One vector holding every tensor in layout order (a copy, in ``dtype``)."""
        flat = np.empty(self.size, dtype=dtype)
        for name, _, where in self.slices():
            flat[where] = np.asarray(tensors[name]).ravel()
        return flat

    def unflatten(self, flat: np.ndarray) -> dict[str, Floats32]:
        """The named float32 tensors in ``flat`` (the codec's dtype)."""
        if flat.shape != (self.size,):
            raise ValueError(f"a flat vector of {flat.shape} for a layout of {self.size}")
        return {
            name: np.ascontiguousarray(flat[where], dtype=np.float32).reshape(shape)
            for name, shape, where in self.slices()
        }

    def zeros(self) -> dict[str, Floats32]:
        return {name: np.zeros(shape, dtype=np.float32) for name, shape in self.shapes}


__all__ = ["Floats32", "Floats64", "Layout", "Tensors"]
