"""Which cohorts carry a drift: explain-away over the finest cells of the fleet.

Cohorts overlap (every device is in the fleet, its version, and one cohort per tag), so
"region=eu drifts" and "hw=a drifts" can be one drift seen twice. The devices of a bucket
are grouped into *cells*, the sets of devices sharing every cohort membership; a cohort
is a union of cells, and so is the rest of the fleet without it. For one feature:

1. The candidates are the cohorts drifting on their own (not the fleet, nor a cohort
   holding every cell).
2. A candidate *explains* the drift when the fleet without it does not drift. Named are
   the explaining candidates that hold no other explaining candidate: with eu devices
   shifted, ``region=eu`` explains and ``hw=a`` (a mix of eu and us) does not; with only
   eu devices of hardware a shifted, both explain, and naming both says where (their
   intersection).
3. When no single cohort explains it, cohorts are peeled greedily, the one carrying the
   largest share of the drift first, until the rest is quiet. If the rest never goes
   quiet, or the named cohorts hold at least ``fleet_share`` of the fleet's rows, the
   drift is fleet-wide and the fleet alone is named (a minority of devices spread over
   every region is a fleet matter, not three regional ones).

Named cohorts are ranked by the share of the fleet's drift they carry (``share``:
``Callable`` from the caller, e.g. excess displaced rows or excess drifting devices).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import numpy.typing as npt

from hub.drift.buckets import FLEET, Cohort

Bools = npt.NDArray[np.bool_]
Floats = npt.NDArray[np.float64]


def attribute(
    cohorts: Sequence[Cohort],
    membership: Bools,
    drifting: Callable[[Bools], bool],
    share: Callable[[Bools], float],
    rows: Floats,
    *,
    candidates: Sequence[int],
    fleet_share: float = 0.9,
) -> tuple[tuple[int, float], ...]:
    """Named cohorts as ``(index into cohorts, share of the drift)``, largest share first.

    ``membership[k, c]``: cohort ``k`` holds cell ``c``; ``drifting(mask)`` and
    ``share(mask)`` judge the union of the cells in ``mask``; ``rows[c]`` weighs cells;
    ``candidates`` are the cohorts drifting on their own.
    """
    everything = np.ones(membership.shape[1], dtype=bool)
    fleet_index = cohorts.index(FLEET)
    pool = [k for k in candidates if k != fleet_index and not membership[k].all()]
    explaining = [k for k in pool if not drifting(everything & ~membership[k])]
    if explaining:
        named = [
            k
            for k in explaining
            if not any(j != k and _strict_subset(membership[j], membership[k]) for j in explaining)
        ]
    else:
        named = _peel(pool, membership, drifting, share, everything)
        covered = np.any(membership[named], axis=0) if named else ~everything
        if (
            not named
            or drifting(everything & ~covered)
            or (rows[covered].sum() >= fleet_share * rows.sum())
        ):
            named = [fleet_index]
    ranked = [(k, share(membership[k])) for k in named]
    ranked.sort(key=lambda item: (-item[1], cohorts[item[0]]))
    return tuple(ranked)


def _peel(
    pool: list[int],
    membership: Bools,
    drifting: Callable[[Bools], bool],
    share: Callable[[Bools], float],
    remaining: Bools,
) -> list[int]:
    named: list[int] = []
    left = list(pool)
    while left and drifting(remaining):
        best = max(left, key=lambda k: share(remaining & membership[k]))
        named.append(best)
        remaining = remaining & ~membership[best]
        left = [k for k in left if k != best and drifting(remaining & membership[k])]
    return named


def _strict_subset(a: Bools, b: Bools) -> bool:
    return bool(np.all(~a | b)) and bool(np.any(b & ~a))


__all__ = ["attribute"]
