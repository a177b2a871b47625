"""Shared builders for the drift core's tests: real references, real binning, seeded data.

References are built the way registration builds them (:mod:`hub.registry.profile`'s
quantile edges and proportions over seeded reference rows); window counts follow the
agent's binning rule (:func:`agent.sketches.bin_counts`), vectorised over many windows
(``binned`` is checked against the agent's function in test_scores.py).
"""

from __future__ import annotations

import numpy as np

from hub.drift.aggregate import PERFORMANCE_ROWS, Aggregate
from hub.drift.reference import Reference
from hub.registry.profile import bin_proportions, quantile_edges
from protocol.manifest import FeatureProfile, PredictionProfile, Profile


def make_profile(
    rng: np.random.Generator,
    *,
    features: int = 10,
    bins: int = 10,
    m: int = 5000,
    classes: tuple[float, ...] | None = None,
) -> tuple[Profile, list[np.ndarray]]:
    """A registration profile over ``m`` standard normal rows per feature, and the edges."""
    profiles, edges = [], []
    for j in range(features):
        column = rng.normal(size=m).astype(np.float32)
        e = quantile_edges(column, bins)
        profiles.append(FeatureProfile(f"f{j}", e, bin_proportions(e, column)))
        edges.append(np.asarray(e))
    predictions = PredictionProfile("classes", classes) if classes else None
    return Profile(tuple(profiles), predictions, rows=m), edges


def make_reference(
    rng: np.random.Generator, **kwargs: object
) -> tuple[Reference, list[np.ndarray]]:
    profile, edges = make_profile(rng, **kwargs)  # type: ignore[arg-type]
    return Reference.from_profile(profile), edges


def binned(edges: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Counts per bin, underflow, overflow of each row of ``x`` (``[windows, rows]``)."""
    bins = len(edges) - 1
    index = np.searchsorted(edges, x, side="right") - 1
    index[x == edges[-1]] = bins - 1
    under = (index < 0).sum(axis=-1)
    over = (index >= bins).sum(axis=-1)
    parked = np.where((index >= 0) & (index < bins), index, bins)
    counts = np.zeros((x.shape[0], bins + 1), dtype=np.int64)
    rows = np.broadcast_to(np.arange(x.shape[0])[:, None], parked.shape)
    np.add.at(counts, (rows, parked), 1)
    return counts[:, :bins], under, over


def window_counts(reference: Reference, edges: list[np.ndarray], x: np.ndarray) -> np.ndarray:
    """Count matrices ``[windows, rows, width + 3]`` of ``x`` (``[windows, n, features]``)."""
    counts = np.zeros((x.shape[0], *reference.shape), dtype=np.int64)
    width = reference.width
    for j, e in enumerate(edges):
        column = x[:, :, j]
        nan = np.isnan(column)
        c, under, over = binned(e, np.where(nan, np.inf, column))
        counts[:, j, : len(e) - 1] = c
        counts[:, j, width] = under
        counts[:, j, width + 1] = over - nan.sum(axis=-1)  # NaNs were parked above the range
        counts[:, j, width + 2] = nan.sum(axis=-1)
    return counts


def aggregate(reference: Reference, counts: np.ndarray, part: tuple[str, int]) -> Aggregate:
    """An aggregate of one window's count matrix (moments left at zero)."""
    return Aggregate(
        scope=reference.digest,
        counts=counts.astype(np.int64),
        moments=np.zeros((reference.features, 3)),
        performance=np.zeros((PERFORMANCE_ROWS, reference.confidence_bins)),
        inferences=int(counts[0, :-1].sum()),
        errors=0,
        windows=1,
        parts=frozenset({part}),
    )
