"""Top-k sparsification with error feedback: send few values, lose nothing over time.

A device that sends only the ``k`` largest entries of its delta would drop the rest for
good. With error feedback (Seide et al. 2014; Stich et al. 2018, "Sparsified SGD with
memory") it keeps what it did not send as a *residual* and adds it to its next delta,
so every entry is sent eventually and the hub's sum of received deltas tracks the sum of
true ones to within one residual::

    corrected = delta + residual
    sent      = clip(top_k(corrected))          # what goes on the wire
    residual' = corrected - sent                # kept on the device for next time

It lives in ``protocol/`` because the agent computes it and the hub's simulations and
tests use it: both sides may import this package, not each other. It pairs with the
container's top-k encodings (:mod:`protocol.tensors`): ``k`` is spread over the tensors
as ``encode_tensors(..., topk_fraction=k / total)`` keeps them (``ceil`` of each
tensor's share), so encoding ``sent`` with that fraction transmits exactly its non-zero
entries. ``values="f16"`` rounds the sent values to float16 first and keeps the rounding
error in the residual too, so a ``topk-f16`` container then carries ``sent`` exactly.

``max_norm`` keeps the sent delta within the hub's bound (what ``clip_l2`` does for a
dense one): the clipped-off part stays in the residual rather than being refused as
``norm_exceeded`` or lost.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Literal

import numpy as np
import numpy.typing as npt

from protocol.tensors import F16_OVERFLOW

Floats = npt.NDArray[np.float32]


def topk_fraction(k: int, total: int) -> float:
    """The container's ``topk_fraction`` that keeps ``k`` of ``total`` values (in (0, 1])."""
    if total < 1 or not 1 <= k <= total:
        raise ValueError(f"k {k} must be in [1, {total}]")
    return k / total


def sparsify(
    delta: Mapping[str, np.ndarray],
    residual: Mapping[str, np.ndarray] | None,
    k: int,
    *,
    max_norm: float = math.inf,
    values: Literal["f32", "f16"] = "f32",
) -> tuple[dict[str, Floats], dict[str, Floats]]:
    """``(sent, new_residual)`` for ``delta`` plus the carried ``residual`` (module docstring).

    ``k`` is the number of values to send in all tensors together (each tensor keeps
    ``ceil(k / total × size)``, as the codec does); ``residual=None`` starts from zeros.
    Invariant: ``sent + new_residual == delta + residual`` (to float32 rounding).

    Raises:
        ValueError: ``k`` outside [1, total], a residual whose names or shapes differ
            from the delta's, non-finite values, or a negative ``max_norm``.
    """
    total = sum(int(np.asarray(x).size) for x in delta.values())
    fraction = topk_fraction(k, total)
    if not max_norm >= 0.0:
        raise ValueError("max_norm must be >= 0")
    corrected: dict[str, npt.NDArray[np.float64]] = {}
    for name, x in delta.items():
        c = np.asarray(x, dtype=np.float64)
        if residual is not None:
            r = residual.get(name)
            if r is None or np.shape(r) != c.shape:
                raise ValueError(f"residual does not match tensor {name!r}")
            c = c + np.asarray(r, dtype=np.float64)
        if not np.isfinite(c).all():
            raise ValueError(f"tensor {name!r} holds NaN or Inf")
        corrected[name] = c
    if residual is not None and set(residual) != set(delta):
        raise ValueError("residual names differ from the delta's")
    sent: dict[str, npt.NDArray[np.float64]] = {}
    for name, c in corrected.items():
        flat = c.ravel()
        keep = min(flat.size, math.ceil(fraction * flat.size))
        chosen = np.zeros(flat.size, dtype=np.float64)
        if keep:
            top = np.argpartition(np.abs(flat), flat.size - keep)[flat.size - keep :]
            chosen[top] = flat[top]
        sent[name] = chosen.reshape(c.shape)
    norm = math.sqrt(sum(float(np.square(s).sum()) for s in sent.values()))
    if norm > max_norm:
        factor = max_norm / norm * (1 - 2**-20)  # headroom for the rounding below
        sent = {name: s * factor for name, s in sent.items()}
    out = {name: _round(s, values) for name, s in sent.items()}
    new_residual = {
        name: (corrected[name] - out[name].astype(np.float64)).astype(np.float32)
        for name in corrected
    }
    return out, new_residual


def _round(x: npt.NDArray[np.float64], values: Literal["f32", "f16"]) -> Floats:
    if values == "f16":
        if x.size and float(np.abs(x).max()) >= F16_OVERFLOW:
            raise ValueError("values beyond float16's range: use values='f32' or a max_norm")
        return x.astype(np.float16).astype(np.float32)
    if values != "f32":
        raise ValueError(f"values {values!r} must be 'f32' or 'f16'")
    return x.astype(np.float32)


__all__ = ["sparsify", "topk_fraction"]
