"""A shadow run's agreement with the served model, counted per class: pure, no I/O.

The shell (agent/shadow.py) hands in both models' classes and the shadow's latency.
Agreement is keyed by the *served* model's class, because the hub's ``shadow_agreement``
gate asks, per class the served model predicted, how often the shadow predicted the same
(docs/rollouts.md): a version with two classes swapped agrees on no row of either class
while agreeing everywhere else, which a fleet-wide agreement rate would dilute.

A row the shadow failed on (onnxruntime error, NaN scores, refused input) counts as an
input that did not agree, and as an error: a shadow that cannot answer must not look
like one that agrees.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from edgefleet.stats import nearest_rank
from protocol.messages import MAX_CLASSES, ModelRef, ShadowReport

MAX_LATENCIES = 4096
"""Requests whose latency a window keeps for its p95 (the oldest are dropped beyond it)."""


def classes(scores: npt.NDArray[np.floating] | npt.NDArray[np.integer]) -> npt.NDArray[np.int64]:
    """Each row's class: the argmax of its scores; a single column is a binary sigmoid
    (class 1's probability), as the sketch window reads it. A row with NaN is class -1."""
    rows = np.asarray(scores, dtype=np.float64).reshape(len(scores), -1)
    if rows.shape[1] == 1:
        rows = np.hstack([1.0 - rows, rows])
    label: npt.NDArray[np.int64] = rows.argmax(axis=1).astype(np.int64)
    label[np.isnan(rows).any(axis=1)] = -1
    return label


class ShadowTally:
    """One window's counts for the shadow ``model``; :meth:`take` hands them over and
    starts the next window.

    Not thread-safe: the shadow runner calls it under its lock.
    """

    def __init__(self, model: ModelRef) -> None:
        self.model = model
        self._inputs: npt.NDArray[np.int64] = np.zeros(0, dtype=np.int64)
        self._agreed: npt.NDArray[np.int64] = np.zeros(0, dtype=np.int64)
        self._outputs: npt.NDArray[np.int64] = np.zeros(0, dtype=np.int64)
        self._errors = 0
        self._latencies: list[float] = []

    def add(
        self,
        served: npt.NDArray[np.int64],
        shadow: npt.NDArray[np.int64] | None,
        latency_ms: float,
    ) -> None:
        """One request: the served model's class per row, the shadow's (None: it failed
        on the whole request), and how long the shadow took."""
        valid = (served >= 0) & (served < MAX_CLASSES)
        if shadow is None:
            self._errors += int(valid.sum())
            self._count(served[valid], np.zeros(int(valid.sum()), dtype=bool), None)
        else:
            failed = valid & ((shadow < 0) | (shadow >= MAX_CLASSES))
            self._errors += int(failed.sum())
            kept = shadow[valid]
            answered = kept[(kept >= 0) & (kept < MAX_CLASSES)]
            self._count(served[valid], kept == served[valid], answered)
        if len(self._latencies) < MAX_LATENCIES:
            self._latencies.append(latency_ms)

    def take(self) -> ShadowReport | None:
        """The window's report, or None when the shadow saw no input; counting restarts."""
        if not self._inputs.any():
            self._reset()
            return None
        report = ShadowReport(
            model=self.model,
            inputs=tuple(int(n) for n in self._inputs),
            agreed=tuple(int(n) for n in self._agreed),
            outputs=tuple(int(n) for n in self._outputs),
            errors=min(self._errors, int(self._inputs.sum())),
            latency_p95_ms=nearest_rank(sorted(self._latencies), 95),
        )
        self._reset()
        return report

    def _count(
        self,
        served: npt.NDArray[np.int64],
        agreed: npt.NDArray[np.bool_],
        outputs: npt.NDArray[np.int64] | None,
    ) -> None:
        width = max(
            len(self._inputs),
            int(served.max()) + 1 if len(served) else 0,
            int(outputs.max()) + 1 if outputs is not None and len(outputs) else 0,
        )
        self._inputs = _grown(self._inputs, width)
        self._agreed = _grown(self._agreed, width)
        self._outputs = _grown(self._outputs, width)
        np.add.at(self._inputs, served, 1)
        np.add.at(self._agreed, served[agreed], 1)
        if outputs is not None:
            np.add.at(self._outputs, outputs, 1)

    def _reset(self) -> None:
        self._inputs = np.zeros(0, dtype=np.int64)
        self._agreed = np.zeros(0, dtype=np.int64)
        self._outputs = np.zeros(0, dtype=np.int64)
        self._errors = 0
        self._latencies = []


def _grown(counts: npt.NDArray[np.int64], width: int) -> npt.NDArray[np.int64]:
    if len(counts) >= width:
        return counts
    return np.concatenate([counts, np.zeros(width - len(counts), dtype=np.int64)])


__all__ = ["MAX_LATENCIES", "ShadowTally", "classes"]
