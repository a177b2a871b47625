"""Mergeable data sketches: the wire form of a device's data delta.

A feature sketch is a histogram over the reference bin edges from the model manifest
(plus underflow, overflow and NaN counts) and running moments (count, mean and the sum
of squared deviations, merged with Chan et al.'s parallel formula). Sketches of the
same feature over the same edges merge exactly: ``merge(a, b)`` equals the sketch of
the two windows' rows together (moments to float rounding), so the hub can combine
devices and windows in any order. Raw rows never leave the device.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Literal

from protocol.errors import Malformed
from protocol.schema import check_range

MAX_BINS = 1024


def _check_counts(counts: tuple[int, ...], *extra: int) -> None:
    if len(counts) > MAX_BINS:
        raise Malformed(f"more than {MAX_BINS} bins")
    for c in (*counts, *extra):
        check_range(c, "count", 0)


@dataclass(frozen=True)
class FeatureSketch:
    """One input feature over one window."""

    name: str
    counts: tuple[int, ...]
    underflow: int = 0
    overflow: int = 0
    nan: int = 0
    n: int = 0
    mean: float = 0.0
    m2: float = 0.0
    min: float | None = None
    max: float | None = None

    def __post_init__(self) -> None:
        _check_counts(self.counts, self.underflow, self.overflow, self.nan, self.n)
        check_range(self.m2, "m2", 0.0)
        if len(self.name) > 128:
            raise Malformed("feature name longer than 128")

    @property
    def variance(self) -> float:
        return self.m2 / self.n if self.n else 0.0

    def merge(self, other: FeatureSketch) -> FeatureSketch:
        """The sketch of both windows together.

        Raises:
            Malformed: different features or bin counts.
        """
        if other.name != self.name or len(other.counts) != len(self.counts):
            raise Malformed(f"cannot merge sketches of {self.name!r} and {other.name!r}")
        n = self.n + other.n
        if n == 0:
            mean, m2 = 0.0, 0.0
        else:
            delta = other.mean - self.mean
            mean = self.mean + delta * other.n / n
            m2 = self.m2 + other.m2 + delta * delta * self.n * other.n / n
        return FeatureSketch(
            name=self.name,
            counts=tuple(a + b for a, b in zip(self.counts, other.counts, strict=True)),
            underflow=self.underflow + other.underflow,
            overflow=self.overflow + other.overflow,
            nan=self.nan + other.nan,
            n=n,
            mean=mean,
            m2=max(m2, 0.0),
            min=_pick(min, self.min, other.min),
            max=_pick(max, self.max, other.max),
        )


def _pick(fn: Callable[[float, float], float], a: float | None, b: float | None) -> float | None:
    if a is None:
        return b
    if b is None:
        return a
    return fn(a, b)


@dataclass(frozen=True)
class PredictionSketch:
    """Predicted class counts (classification) or counts over reference bins (regression)."""

    kind: Literal["classes", "bins"]
    counts: tuple[int, ...]
    underflow: int = 0
    overflow: int = 0
    nan: int = 0

    def __post_init__(self) -> None:
        _check_counts(self.counts, self.underflow, self.overflow, self.nan)

    def merge(self, other: PredictionSketch) -> PredictionSketch:
        """Both windows' predictions together.

        Raises:
            Malformed: different kinds or bin counts.
        """
        if other.kind != self.kind or len(other.counts) != len(self.counts):
            raise Malformed("cannot merge prediction sketches of different shapes")
        return replace(
            self,
            counts=tuple(a + b for a, b in zip(self.counts, other.counts, strict=True)),
            underflow=self.underflow + other.underflow,
            overflow=self.overflow + other.overflow,
            nan=self.nan + other.nan,
        )


@dataclass(frozen=True)
class ConfidenceSketch:
    """Label-free performance of one window: per bin of calibrated top-label confidence,
    the predictions and the sum of their confidences; of the rows whose labelled feedback
    arrived in the window, their number, how many were correct, and the sum of their
    confidences. Five sums of equal length, so sketches merge by addition
    (docs/drift.md, "Label-free performance")."""

    counts: tuple[int, ...]
    confidence: tuple[float, ...]
    labelled: tuple[int, ...] = ()
    correct: tuple[int, ...] = ()
    labelled_confidence: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        bins = len(self.counts)
        if not 1 <= bins <= MAX_BINS:
            raise Malformed(f"a confidence sketch has 1 to {MAX_BINS} bins")
        labelled = (self.labelled, self.correct, self.labelled_confidence)
        if len(self.confidence) != bins or any(len(x) not in (0, bins) for x in labelled):
            raise Malformed("confidence sketch rows must have one value per bin")
        _check_counts(self.counts, *self.labelled, *self.correct)
        for c in (*self.confidence, *self.labelled_confidence):
            check_range(c, "confidence sum", 0.0)

    def rows(self) -> list[list[float]]:
        """The five sums as rows (empty labelled rows as zeros): the hub's array."""
        zeros = [0.0] * len(self.counts)
        return [
            [float(c) for c in self.counts],
            list(self.confidence),
            [float(c) for c in self.labelled] or zeros,
            [float(c) for c in self.correct] or zeros,
            list(self.labelled_confidence) or zeros,
        ]

    def merge(self, other: ConfidenceSketch) -> ConfidenceSketch:
        """Both windows' sums together.

        Raises:
            Malformed: sketches over different numbers of bins.
        """
        if len(other.counts) != len(self.counts):
            raise Malformed("cannot merge confidence sketches of different bins")
        a, b = self.rows(), other.rows()
        total = [[x + y for x, y in zip(r, q, strict=True)] for r, q in zip(a, b, strict=True)]
        return ConfidenceSketch(
            tuple(round(x) for x in total[0]),
            tuple(total[1]),
            tuple(round(x) for x in total[2]),
            tuple(round(x) for x in total[3]),
            tuple(total[4]),
        )
