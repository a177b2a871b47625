"""Label-free performance that merges: confidence sketches, isotonic calibration, CBPE.

NannyML's CBPE estimates a classifier's accuracy without labels as the mean of its
*calibrated* confidence: if the top-label confidence ``c`` is calibrated
(``P(correct | c) = c``) and ``P(y | x)`` does not change, then under covariate shift
the expected accuracy of any set of rows is the mean of their ``c``. CBPE keeps the rows;
a fleet cannot. So each device sends, per window, a *confidence sketch*: per bin of
calibrated confidence, the number of predictions and the sum of their confidences, and
for the rows that received labelled feedback, their number, how many were correct, and
the sum of their confidences. All five are sums, so sketches merge by addition like the
data sketches, and the hub estimates any cohort's accuracy from the merged sums.

What the agent computes per prediction (``agent.sketches``, sent as ``DataDelta.confidence``):

1. ``probabilities``: the model's class scores as probabilities (the profile's rule: a
   single column ``p`` is ``[1 - p, p]``);
2. ``c = calibration(max(probabilities))`` with the manifest's knots (``np.interp``
   through ``knots_x``, ``knots_y``, clipped at the ends; no calibration: ``c`` is the raw
   maximum);
3. ``k = min(floor(c * bins), bins - 1)``; ``predictions[k] += 1``; ``confidence[k] += c``;
4. when labelled feedback for that prediction arrives: ``labelled[k] += 1``;
   ``labelled_confidence[k] += c``; ``correct[k] += (argmax == label)``.

:func:`sketch` is that computation over a batch, the executable form of this list.

Calibration is top-label isotonic regression (pool adjacent violators) of "correct"
on the raw maximum probability over the validation rows at registration, kept only if it
lowers the expected calibration error in cross-validation (:func:`choose_calibration`):
accuracy only needs the top label's confidence, so one monotone map suffices where
NannyML calibrates every class and renormalises.

Two tests per cohort (:func:`estimate`): the estimate against the reference accuracy
(has the model got worse where labels are missing?), and the labelled feedback against
what the calibrated confidence of those same rows predicts (concept drift: inputs look
the same but the labels moved, which no input test can see). The second compares like
with like even when feedback comes mostly from confident or unconfident rows, but not
when it comes mostly from *wrong* predictions (users reporting errors): then the
feedback accuracy is biased low and the test says so only as much as it is told.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from hub.drift import stats
from hub.drift.policy import DriftPolicy
from hub.errors import InvalidRequest

Floats = npt.NDArray[np.float64]
PREDICTIONS, CONFIDENCE, LABELLED, CORRECT, LABELLED_CONFIDENCE = range(5)


@dataclass(frozen=True)
class Calibration:
    """A monotone map of raw top-label confidence: linear between knots, flat outside."""

    knots_x: tuple[float, ...]
    knots_y: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.knots_x) != len(self.knots_y) or not self.knots_x:
            raise InvalidRequest("calibration needs as many x as y knots, at least one")
        if any(b < a for a, b in zip(self.knots_x, self.knots_x[1:], strict=False)):
            raise InvalidRequest("calibration knots_x must be sorted")
        if not all(0.0 <= v <= 1.0 for v in (*self.knots_x, *self.knots_y)):
            raise InvalidRequest("calibration knots must lie in [0, 1]")

    def apply(self, confidence: npt.ArrayLike) -> Floats:
        result: Floats = np.interp(np.asarray(confidence, np.float64), self.knots_x, self.knots_y)
        return result


def fit_isotonic(x: npt.ArrayLike, y: npt.ArrayLike) -> Calibration:
    """Non-decreasing least-squares fit of ``y`` on ``x`` by pool adjacent violators.

    Equal ``x`` are pooled first (their mean ``y``, weighted by count); the knots keep the
    first and last ``x`` of each constant block, so :meth:`Calibration.apply` is the
    step function with linear ramps between blocks, as scikit-learn's
    ``IsotonicRegression(out_of_bounds="clip")`` predicts.
    """
    xs = np.asarray(x, np.float64)
    ys = np.asarray(y, np.float64)
    if xs.shape != ys.shape or xs.ndim != 1 or not len(xs):
        raise InvalidRequest("isotonic fit needs two equal, non-empty 1-D arrays")
    order = np.argsort(xs, kind="mergesort")
    unique, start = np.unique(xs[order], return_index=True)
    weights = np.diff(np.append(start, len(xs))).astype(np.float64)
    values = np.add.reduceat(ys[order], start) / weights
    # pool adjacent violators over blocks (value, weight, first index, last index)
    block_v: list[float] = []
    block_w: list[float] = []
    block_lo: list[int] = []
    block_hi: list[int] = []
    for i, (v, w) in enumerate(zip(values.tolist(), weights.tolist(), strict=True)):
        block_v.append(v)
        block_w.append(w)
        block_lo.append(i)
        block_hi.append(i)
        while len(block_v) > 1 and block_v[-2] >= block_v[-1]:
            w2 = block_w[-2] + block_w[-1]
            block_v[-2] = (block_v[-2] * block_w[-2] + block_v[-1] * block_w[-1]) / w2
            block_w[-2] = w2
            block_hi[-2] = block_hi[-1]
            del block_v[-1], block_w[-1], block_lo[-1], block_hi[-1]
    knots_x: list[float] = []
    knots_y: list[float] = []
    for v, lo, hi in zip(block_v, block_lo, block_hi, strict=True):
        knots_x.append(float(unique[lo]))
        knots_y.append(v)
        if hi != lo:
            knots_x.append(float(unique[hi]))
            knots_y.append(v)
    return Calibration(tuple(knots_x), tuple(knots_y))


def expected_calibration_error(
    confidence: npt.ArrayLike, correct: npt.ArrayLike, bins: int = 10
) -> float:
    """``Σ_k (n_k / n) |accuracy_k - mean confidence_k|`` over equal-width bins."""
    c = np.asarray(confidence, np.float64)
    hit = np.asarray(correct, np.float64)
    k = np.minimum((c * bins).astype(np.int64), bins - 1)
    gap = np.bincount(k, weights=hit, minlength=bins) - np.bincount(k, weights=c, minlength=bins)
    return float(np.abs(gap).sum() / max(len(c), 1))


@dataclass(frozen=True)
class CalibrationChoice:
    """The calibration registration keeps (None: the raw confidence is better), and the
    cross-validated calibration errors that decided it."""

    calibration: Calibration | None
    ece_raw: float
    ece_calibrated: float


def choose_calibration(
    probabilities: npt.ArrayLike,
    labels: npt.ArrayLike,
    rng: np.random.Generator,
    *,
    folds: int = 5,
    bins: int = 10,
) -> CalibrationChoice:
    """Fit top-label isotonic calibration on validation rows; keep it only if it lowers the
    expected calibration error on held-out folds (each row is scored by a map fitted
    without it)."""
    scores = _as_probabilities(probabilities)
    raw = scores.max(axis=1)
    correct = (scores.argmax(axis=1) == np.asarray(labels).astype(np.int64)).astype(np.float64)
    fold = rng.permutation(len(raw)) % folds
    held = np.empty(len(raw))
    for f in range(folds):
        train = fold != f
        if not train.any() or train.all():
            held[~train] = raw[~train]
            continue
        held[~train] = fit_isotonic(raw[train], correct[train]).apply(raw[~train])
    ece_raw = expected_calibration_error(raw, correct, bins)
    ece_cal = expected_calibration_error(held, correct, bins)
    keep = fit_isotonic(raw, correct) if ece_cal < ece_raw else None
    return CalibrationChoice(keep, ece_raw, ece_cal)


def _as_probabilities(probabilities: npt.ArrayLike) -> Floats:
    scores = np.asarray(probabilities, np.float64)
    scores = scores.reshape(scores.shape[0], -1)
    return np.hstack([1.0 - scores, scores]) if scores.shape[1] == 1 else scores


def sketch(
    probabilities: npt.ArrayLike,
    calibration: Calibration | None,
    bins: int,
    *,
    labels: npt.ArrayLike | None = None,
) -> Floats:
    """The ``[5, bins]`` confidence sketch of a batch (module docstring, steps 1-4);
    ``labels`` (class indices, -1 for rows without feedback) fill the labelled rows."""
    scores = _as_probabilities(probabilities)
    top = scores.max(axis=1)
    c = calibration.apply(top) if calibration is not None else top
    k = np.clip((c * bins).astype(np.int64), 0, bins - 1)
    result = np.zeros((5, bins))
    result[PREDICTIONS] = np.bincount(k, minlength=bins)
    result[CONFIDENCE] = np.bincount(k, weights=c, minlength=bins)
    if labels is not None:
        y = np.asarray(labels).astype(np.int64)
        has = y >= 0
        hit = (scores.argmax(axis=1) == y) & has
        result[LABELLED] = np.bincount(k[has], minlength=bins)
        result[LABELLED_CONFIDENCE] = np.bincount(k[has], weights=c[has], minlength=bins)
        result[CORRECT] = np.bincount(k[hit], minlength=bins)
    return result


Level = int  # 0 ok, 1 warn, 2 alert


@dataclass(frozen=True)
class PerformanceEstimate:
    """One cohort's label-free estimate beside its labelled feedback (module docstring).

    ``accuracy_se`` is the spread of the realised accuracy around the estimate (for the
    band drawn around it); ``drop_p`` tests the estimate against ``reference_accuracy``;
    ``feedback_p`` tests feedback accuracy against the estimate on the same rows.
    """

    predictions: int
    estimated_accuracy: float | None
    accuracy_se: float | None
    reference_accuracy: float | None
    drop_p: float | None
    labelled: int
    feedback_accuracy: float | None
    feedback_expected: float | None
    feedback_p: float | None
    level: Level
    reasons: tuple[str, ...]


def estimate(
    rows: npt.ArrayLike, reference_accuracy: float | None, policy: DriftPolicy
) -> PerformanceEstimate:
    """The label-free accuracy of a merged ``[5, bins]`` sketch, and both tests' levels."""
    r = np.asarray(rows, np.float64)
    n, s = r[PREDICTIONS], r[CONFIDENCE]
    total = float(n.sum())
    level, reasons = 0, []
    est = se = drop_p = None
    if total >= policy.min_rows:
        est = float(s.sum() / total)
        se = math.sqrt(max(float(_spread(n, s)), 0.0)) / total
        if reference_accuracy is not None:
            means = np.divide(s, n, out=np.zeros_like(s), where=n > 0)
            # variance of c: between bins, plus at most a uniform spread inside each bin
            spread = float((n * (means - est) ** 2).sum() / total) + 1 / (12 * len(n) ** 2)
            sd_mean = math.sqrt(max(spread, 1e-12) / total)
            drop = reference_accuracy - est
            drop_p = 1.0 - stats.norm_cdf(drop / sd_mean)
            if drop_p < policy.performance_alpha and drop >= policy.accuracy_drop_warn:
                level = 2 if drop >= policy.accuracy_drop_alert else 1
                reasons.append("estimated_accuracy_drop")
    labelled = int(r[LABELLED].sum())
    feedback = expected = feedback_p = None
    if labelled >= policy.min_labelled:
        correct = float(r[CORRECT].sum())
        mu = float(r[LABELLED_CONFIDENCE].sum())
        sigma = math.sqrt(max(float(_spread(r[LABELLED], r[LABELLED_CONFIDENCE])), 1e-12))
        feedback, expected = correct / labelled, mu / labelled
        feedback_p = 1.0 - stats.norm_cdf((mu - correct) / sigma)
        gap = expected - feedback
        if feedback_p < policy.performance_alpha and gap >= policy.accuracy_drop_warn:
            level = max(level, 2 if gap >= policy.accuracy_drop_alert else 1)
            reasons.append("feedback_below_estimate")
    return PerformanceEstimate(
        predictions=int(total),
        estimated_accuracy=est,
        accuracy_se=se,
        reference_accuracy=reference_accuracy,
        drop_p=drop_p,
        labelled=labelled,
        feedback_accuracy=feedback,
        feedback_expected=expected,
        feedback_p=feedback_p,
        level=level,
        reasons=tuple(reasons),
    )


def _spread(n: Floats, s: Floats) -> float:
    """``Σ c (1 - c)`` over rows, from per-bin counts and sums (bin means for ``c²``)."""
    return float(np.sum(s - np.divide(s * s, n, out=np.zeros_like(s), where=n > 0)))


__all__ = [
    "Calibration",
    "CalibrationChoice",
    "PerformanceEstimate",
    "choose_calibration",
    "estimate",
    "expected_calibration_error",
    "fit_isotonic",
    "sketch",
]
