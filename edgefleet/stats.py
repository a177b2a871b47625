"""Small statistics both sides report the same way (latency percentiles)."""

from __future__ import annotations

import math
from collections.abc import Sequence


def nearest_rank(ordered: Sequence[float], pct: float) -> float:
    """The nearest-rank ``pct`` percentile of already sorted values; 0.0 when there are
    none. Nearest rank returns an observed value, so a p95 latency is one that happened."""
    if not ordered:
        return 0.0
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return float(ordered[rank - 1])


__all__ = ["nearest_rank"]
