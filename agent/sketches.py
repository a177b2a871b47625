"""The data delta of one window: sketches of the inputs and predictions, and inference stats.

Every inference is folded into the current :class:`SketchWindow`; every ``window_s``
(60 s by default) the daemon flushes it into a :class:`~protocol.messages.DataDelta` and
sends it as a ``data`` message. Raw rows never leave the device: only counts and moments
do (threat-model B30 is the hub's side of this).

Features. When the model has one float input of shape ``[N, F]``, each of its ``F``
columns is a feature, named and binned as the manifest's drift profile says (names
``f0``, ``f1``... and moments only, without bins, when there is no profile or its width
differs). Models with another input signature (several inputs, images, sequences) get
no per-feature sketches, only prediction and inference stats: binning a pixel or a token
position as a "feature" would be noise.

Counting follows the hub's binning rule (:mod:`hub.registry.profile`): bin ``i`` is
``[edges[i], edges[i+1])`` and the last bin includes its upper edge; values below the
first edge count as ``underflow`` (``-inf`` too), above the last as ``overflow`` (``+inf``
too), NaN as ``nan``. The moments (``n``, ``mean``, ``m2``, ``min``, ``max``) are over the
finite values only, folded per batch with Chan et al.'s parallel update, so merging the
sketches of two windows equals the sketch of their rows together (counts exactly,
moments to float rounding).

Predictions. Classification: the argmax class of the scores, counted per class (a
single probability column, a binary sigmoid, is read as ``[1 - p, p]``: two classes);
the class count comes from the profile, else the head. Regression: the first score
column, binned over the profile's prediction edges (no sketch without a profile). Rows
with a NaN score count as ``nan``; an argmax beyond the known classes as ``overflow``.

Label-free performance (classifiers with a drift profile). Each predicted row's top
probability is calibrated through the profile's knots (``np.interp``; the raw maximum
without a calibration), binned into ``confidence_bins`` equal bins over [0, 1], and
counted with its confidence; when labelled feedback for a recent prediction arrives
(:meth:`SketchWindow.label`), the *current* window counts it as labelled, correct or not,
with its confidence. The window sends the five sums as its
:class:`~protocol.sketches.ConfidenceSketch` (the hub's ``hub.drift.performance.sketch``
is the same computation).

Inference stats. ``inference_count`` and ``error_count`` count rows, as the telemetry
does (agent/stats.py): the rows predicted, and the rows of failed or invalid requests;
latency percentiles (nearest rank) are over a uniform reservoir sample of the window's
requests (exact while a window has at most ``latency_samples`` of them).
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

from edgefleet.stats import nearest_rank
from protocol.manifest import ModelManifest
from protocol.messages import DataDelta, ModelRef
from protocol.sketches import ConfidenceSketch, FeatureSketch, PredictionSketch

Floats = npt.NDArray[np.float64]
Counts = npt.NDArray[np.int64]
LATENCY_SAMPLES = 1024
CONFIDENCE_KEPT = 10_000
"""Recent predictions whose labelled feedback still counts in the confidence sketch."""
_FLOAT_INPUTS = frozenset({"float32", "float64", "float16"})


@dataclass(frozen=True)
class _Layout:
    """What a window sketches for one manifest, decided once."""

    names: tuple[str, ...]
    edges: tuple[Floats | None, ...]
    predictions: Literal["classes", "bins"] | None
    n_classes: int
    prediction_edges: Floats | None

    @classmethod
    def of(cls, manifest: ModelManifest) -> _Layout:
        profile = manifest.profile
        width = _feature_width(manifest)
        names = tuple(f"f{i}" for i in range(width))
        edges: tuple[Floats | None, ...] = (None,) * width
        if profile is not None and len(profile.features) == width:
            names = tuple(p.name for p in profile.features)
            edges = tuple(np.asarray(p.edges, np.float64) for p in profile.features)
        reference = profile.predictions if profile is not None else None
        head = manifest.head
        if reference is not None and reference.kind == "bins":
            return cls(names, edges, "bins", 0, np.asarray(reference.edges, np.float64))
        if reference is not None:
            return cls(names, edges, "classes", len(reference.proportions), None)
        if head is not None and head.task == "classification":
            return cls(names, edges, "classes", max(2, head.n_outputs), None)
        return cls(names, edges, None, 0, None)


def _feature_width(manifest: ModelManifest) -> int:
    """Columns of the single float ``[N, F]`` input; 0 for any other input signature."""
    if len(manifest.inputs) != 1:
        return 0
    spec = manifest.inputs[0]
    if spec.dtype not in _FLOAT_INPUTS or len(spec.shape) != 2:
        return 0
    width = spec.shape[1]
    if width is None and manifest.profile is not None:
        width = len(manifest.profile.features)
    return width or 0


def bin_counts(edges: Floats, values: Floats) -> tuple[Counts, int, int]:
    """Counts of non-NaN ``values`` per bin of ``edges``, plus underflow and overflow."""
    bins = len(edges) - 1
    index = np.searchsorted(edges, values, side="right") - 1
    index[values == edges[-1]] = bins - 1  # the last bin includes its upper edge
    inside = (index >= 0) & (index < bins)
    counts = np.bincount(index[inside], minlength=bins).astype(np.int64)
    return counts, int(np.count_nonzero(index < 0)), int(np.count_nonzero(index >= bins))


class _Features:
    """Running per-feature state, vectorised over features where numpy allows."""

    def __init__(self, layout: _Layout) -> None:
        width = len(layout.names)
        self.edges = layout.edges
        self.counts = [np.zeros(0 if e is None else len(e) - 1, np.int64) for e in self.edges]
        self.under = np.zeros(width, np.int64)
        self.over = np.zeros(width, np.int64)
        self.nan = np.zeros(width, np.int64)
        self.n = np.zeros(width, np.int64)
        self.mean = np.zeros(width)
        self.m2 = np.zeros(width)
        self.min = np.full(width, math.inf)
        self.max = np.full(width, -math.inf)

    def add(self, x: Floats) -> None:
        nan = np.isnan(x)
        self.nan += nan.sum(axis=0)
        for j, edges in enumerate(self.edges):
            if edges is not None:
                counts, under, over = bin_counts(edges, x[~nan[:, j], j])
                self.counts[j] += counts
                self.under[j] += under
                self.over[j] += over
            else:  # no bins: out-of-range means infinite
                self.under[j] += np.count_nonzero(x[:, j] == -math.inf)
                self.over[j] += np.count_nonzero(x[:, j] == math.inf)
        finite = np.isfinite(x)
        n_b = finite.sum(axis=0)
        values = np.where(finite, x, 0.0)
        mean_b = values.sum(axis=0) / np.maximum(n_b, 1)
        m2_b = np.where(finite, np.square(values - mean_b), 0.0).sum(axis=0)
        n = self.n + n_b
        delta = mean_b - self.mean
        share = np.divide(n_b, n, out=np.zeros(len(n)), where=n > 0)
        self.mean = self.mean + delta * share
        self.m2 = self.m2 + m2_b + delta * delta * self.n * share
        self.n = n
        self.min = np.minimum(self.min, np.where(finite, x, math.inf).min(axis=0, initial=math.inf))
        self.max = np.maximum(
            self.max, np.where(finite, x, -math.inf).max(axis=0, initial=-math.inf)
        )

    def sketches(self, names: tuple[str, ...]) -> tuple[FeatureSketch, ...]:
        return tuple(
            FeatureSketch(
                name=name,
                counts=tuple(int(c) for c in self.counts[j]),
                underflow=int(self.under[j]),
                overflow=int(self.over[j]),
                nan=int(self.nan[j]),
                n=int(self.n[j]),
                mean=float(self.mean[j]),
                m2=max(float(self.m2[j]), 0.0),
                min=float(self.min[j]) if self.n[j] else None,
                max=float(self.max[j]) if self.n[j] else None,
            )
            for j, name in enumerate(names)
        )


class _Predictions:
    def __init__(self, layout: _Layout) -> None:
        self.kind = layout.predictions
        self.n_classes = layout.n_classes
        self.edges = layout.prediction_edges
        size = self.n_classes if self.edges is None else len(self.edges) - 1
        self.counts = np.zeros(size, np.int64)
        self.under = self.over = self.nan = 0

    def add(self, scores: Floats) -> None:
        rows = scores.reshape(len(scores), -1)
        nan = np.isnan(rows).any(axis=1)
        self.nan += int(nan.sum())
        rows = rows[~nan]
        if self.edges is not None:
            counts, under, over = bin_counts(self.edges, rows[:, 0])
            self.under += under
        else:
            if rows.shape[1] == 1:  # a binary sigmoid: class 1's probability
                rows = np.hstack([1.0 - rows, rows])
            label = rows.argmax(axis=1)
            counts = np.bincount(label[label < self.n_classes], minlength=self.n_classes)
            over = int(np.count_nonzero(label >= self.n_classes))
        self.counts += counts
        self.over += over

    def sketch(self) -> PredictionSketch | None:
        if self.kind is None:
            return None
        counts = tuple(int(c) for c in self.counts)
        return PredictionSketch(self.kind, counts, self.under, self.over, self.nan)


class _Confidence:
    """The confidence sketch's five sums for one window (module docstring)."""

    def __init__(self, knots: tuple[Floats, Floats] | None, bins: int) -> None:
        self.knots = knots
        self.bins = bins
        self.sums = np.zeros((5, bins))

    def add(self, scores: Floats) -> tuple[npt.NDArray[np.int64], Floats, npt.NDArray[np.int64]]:
        """Count a batch; per row its bin, calibrated confidence and argmax (-1: NaN row)."""
        rows = scores.reshape(len(scores), -1)
        if rows.shape[1] == 1:
            rows = np.hstack([1.0 - rows, rows])
        finite = np.isfinite(rows).all(axis=1)
        top = np.where(finite, np.nan_to_num(rows).max(axis=1), 0.0)
        c = np.clip(np.interp(top, *self.knots) if self.knots else top, 0.0, 1.0)
        k = np.clip((c * self.bins).astype(np.int64), 0, self.bins - 1)
        self.sums[0] += np.bincount(k[finite], minlength=self.bins)
        self.sums[1] += np.bincount(k[finite], weights=c[finite], minlength=self.bins)
        argmax = np.where(finite, np.nan_to_num(rows).argmax(axis=1), -1)
        return k, c, argmax

    def sketch(self) -> ConfidenceSketch | None:
        if not self.sums[0].any():
            return None
        counts, confidence, labelled, correct, labelled_confidence = self.sums
        return ConfidenceSketch(
            tuple(int(x) for x in counts),
            tuple(float(x) for x in confidence),
            tuple(int(x) for x in labelled),
            tuple(int(x) for x in correct),
            tuple(float(x) for x in labelled_confidence),
        )


class SketchWindow:
    """One window's sketches of a model's inputs and predictions, and its inference stats.

    Thread-safe: predictions observe concurrently; the window job flushes. When the
    active model changes, flush the old window and start a new one for the new manifest.
    """

    def __init__(
        self,
        manifest: ModelManifest,
        start_ms: int,
        *,
        model: ModelRef | None = None,
        latency_samples: int = LATENCY_SAMPLES,
        rng: np.random.Generator | None = None,
    ) -> None:
        if latency_samples < 1:
            raise ValueError("latency_samples must be at least 1")
        self.model = model
        self._layout = _Layout.of(manifest)
        profile = manifest.profile
        self._confidence_of: tuple[tuple[Floats, Floats] | None, int] | None = None
        if profile is not None and self._layout.predictions == "classes":
            cal = profile.calibration
            knots = (np.asarray(cal.knots_x), np.asarray(cal.knots_y)) if cal else None
            self._confidence_of = (knots, profile.confidence_bins)
        self._recent: OrderedDict[str, tuple[int, float, int]] = OrderedDict()
        self._capacity = latency_samples
        self._rng = rng or np.random.default_rng()
        self._lock = threading.Lock()
        self._reset(start_ms)

    @property
    def feature_names(self) -> tuple[str, ...]:
        """The features sketched (empty for a model without one ``[N, F]`` float input)."""
        return self._layout.names

    def observe(
        self,
        inputs: np.ndarray | None,
        scores: np.ndarray | None,
        latency_ms: float,
        *,
        rows: int = 1,
        error: bool = False,
        ids: Sequence[str] = (),
    ) -> None:
        """Fold one predict request of ``rows`` rows in: its inputs, scores and latency
        (``ids``: the rows' prediction ids, for :meth:`label`).

        A failed or invalid request (``error=True``) counts its rows as errors and records
        its latency only (a non-finite one is not recorded); so does a successful one
        whose inputs are not ``[N, F]`` for this model (those rows are not sketched).
        """
        with self._lock:
            self._rows += rows
            self._errors += rows if error else 0
            if math.isfinite(latency_ms) and latency_ms >= 0:
                self._sample_latency(latency_ms)
            if error:
                return
            width = len(self._layout.names)
            if width and inputs is not None:
                x = np.asarray(inputs, np.float64)
                if x.ndim == 2 and x.shape[1] == width:
                    self._features.add(x)
            if self._layout.predictions is not None and scores is not None:
                self._predictions.add(np.asarray(scores, np.float64))
            if self._confidence is not None and scores is not None:
                self._remember(ids, *self._confidence.add(np.asarray(scores, np.float64)))

    def _remember(
        self,
        ids: Sequence[str],
        k: npt.NDArray[np.int64],
        c: Floats,
        argmax: npt.NDArray[np.int64],
    ) -> None:
        if len(ids) != len(k):
            return
        for i, prediction in enumerate(ids):
            if argmax[i] >= 0:
                self._recent[prediction] = (int(k[i]), float(c[i]), int(argmax[i]))
        while len(self._recent) > CONFIDENCE_KEPT:
            self._recent.popitem(last=False)

    def label(self, labels: Mapping[str, object]) -> int:
        """Count labelled feedback for recent predictions in the current window (class
        indices only; each prediction once); how many were counted."""
        counted = 0
        with self._lock:
            if self._confidence is None:
                return 0
            sums = self._confidence.sums
            for prediction, label in labels.items():
                if type(label) is not int or prediction not in self._recent:
                    continue
                k, c, argmax = self._recent.pop(prediction)
                sums[2, k] += 1
                sums[3, k] += argmax == label
                sums[4, k] += c
                counted += 1
        return counted

    def flush(self, now_ms: int) -> DataDelta:
        """The window ``[start, now_ms]`` as a data delta; a new window starts at ``now_ms``.

        A clock that stepped back before the window's start closes it at its start.
        """
        with self._lock:
            start = self._start
            end = max(now_ms, start)
            latencies = sorted(self._latencies)
            delta = DataDelta(
                window_start=start,
                window_end=end,
                features=self._features.sketches(self._layout.names),
                predictions=self._predictions.sketch(),
                model=self.model,
                inference_count=self._rows,
                error_count=self._errors,
                latency_p50_ms=nearest_rank(latencies, 50),
                latency_p95_ms=nearest_rank(latencies, 95),
                confidence=self._confidence.sketch() if self._confidence is not None else None,
            )
            self._reset(end)
        return delta

    def _reset(self, start_ms: int) -> None:
        self._start = start_ms
        self._features = _Features(self._layout)
        self._predictions = _Predictions(self._layout)
        self._rows = self._errors = self._seen = 0
        self._latencies: list[float] = []
        of = self._confidence_of
        self._confidence = _Confidence(*of) if of is not None else None

    def _sample_latency(self, latency_ms: float) -> None:
        """Algorithm R: after ``k`` calls each is in the sample with probability cap/k."""
        self._seen += 1
        if len(self._latencies) < self._capacity:
            self._latencies.append(latency_ms)
            return
        slot = int(self._rng.integers(0, self._seen))
        if slot < self._capacity:
            self._latencies[slot] = latency_ms


__all__ = ["LATENCY_SAMPLES", "SketchWindow", "bin_counts"]
