"""Is the candidate better than its parent? Metrics of a head in numpy, and the decision.

Two kinds of evidence exist for a candidate version:

- the **hub-held validation set** (features at the head's input, and labels), when the
  model has one: :func:`evaluate_head` scores candidate and parent on the same rows;
- the **devices' holdout reports**: each delta says how the device's trained head did
  on rows it held out (``before`` for the base, ``after`` for its own head).
  :func:`summarize_holdouts` condenses them. They describe the devices' own heads on
  their own data, not the candidate, and a device can lie about them, so they are
  shown beside the decision and never decide it alone.

:func:`judge` is the policy "beats the parent by a margin": accuracy must rise by at
least ``margin`` (absolute, 0.01 is one point); mse must fall by at least ``margin``
times the parent's (relative, as mse carries the targets' units). Metrics follow
:mod:`agent.trainer`: argmax accuracy (a binary head's logit > 0), and the mean loss
(cross-entropy, or squared error ``½‖z - y‖²``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from protocol.manifest import Head

Metric = Literal["accuracy", "mse"]


@dataclass(frozen=True)
class HeadMetrics:
    """A head's metric (accuracy or mse) and mean loss over ``n`` rows."""

    metric: Metric
    value: float
    loss: float
    n: int


def metric_for(head: Head) -> Metric:
    return "accuracy" if head.task == "classification" else "mse"


def evaluate_head(
    head: Head, weight: np.ndarray, bias: np.ndarray, features: np.ndarray, labels: np.ndarray
) -> HeadMetrics:
    """The head's metric and loss on labelled rows, computed in float64.

    Raises:
        ValueError: no rows, or arrays that do not fit the head (the validation set is
            the hub's own data, so a mismatch is a set-up error, not a peer's).
    """
    x = np.asarray(features, dtype=np.float64)
    w, b = np.asarray(weight, dtype=np.float64), np.asarray(bias, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] != head.n_features or len(x) == 0:
        raise ValueError(f"features {x.shape} do not fit a head of {head.n_features} inputs")
    if w.shape != (head.n_features, head.n_outputs) or b.shape != (head.n_outputs,):
        raise ValueError(f"weight {w.shape} / bias {b.shape} do not fit the head")
    z = x @ w + b
    y = np.asarray(labels)
    n = len(x)
    if head.task == "regression":
        residual = z - y.astype(np.float64).reshape(n, head.n_outputs)
        mse = float(np.mean(np.square(residual)))
        loss = 0.5 * float(np.sum(np.square(residual))) / n
        return HeadMetrics("mse", mse, loss, n)
    classes = y.astype(np.int64)
    if head.n_outputs == 1:
        logit = z[:, 0]
        accuracy = float(np.mean((logit > 0) == (classes == 1)))
        loss = float(np.mean(np.logaddexp(0.0, logit) - (classes == 1) * logit))
        return HeadMetrics("accuracy", accuracy, loss, n)
    shifted = z - z.max(axis=1, keepdims=True)
    log_norm = np.log(np.exp(shifted).sum(axis=1))
    loss = float(np.mean(log_norm - shifted[np.arange(n), classes]))
    accuracy = float(np.mean(np.argmax(z, axis=1) == classes))
    return HeadMetrics("accuracy", accuracy, loss, n)


@dataclass(frozen=True)
class HoldoutReport:
    """What one delta said about its device's holdout, with the samples it was given."""

    device_id: str
    metric: Metric
    before: float
    after: float
    samples_used: int


@dataclass(frozen=True)
class HoldoutSummary:
    """The devices' reports condensed: sample-weighted means (with the *capped* counts),
    the median gain, and the share of devices whose own head improved."""

    metric: Metric
    devices: int
    mean_before: float
    mean_after: float
    median_gain: float
    share_improved: float


def summarize_holdouts(reports: Sequence[HoldoutReport]) -> HoldoutSummary | None:
    """``None`` when there are no reports (or they mix metrics, which one head never does).

    A gain is ``after - before`` for accuracy and ``before - after`` for mse, so a
    positive gain is an improvement either way.
    """
    if not reports or len({r.metric for r in reports}) != 1:
        return None
    metric = reports[0].metric
    weights = np.array([max(1, r.samples_used) for r in reports], dtype=np.float64)
    before = np.array([r.before for r in reports])
    after = np.array([r.after for r in reports])
    gains = after - before if metric == "accuracy" else before - after
    return HoldoutSummary(
        metric=metric,
        devices=len(reports),
        mean_before=float(np.average(before, weights=weights)),
        mean_after=float(np.average(after, weights=weights)),
        median_gain=float(np.median(gains)),
        share_improved=float(np.mean(gains > 0)),
    )


@dataclass(frozen=True)
class Judgement:
    """The decision on a candidate: ``passed``, the ``gain`` over the parent in the
    margin's units, and a one-line reason for the round's record."""

    passed: bool
    gain: float
    reason: str


def judge(candidate: HeadMetrics, parent: HeadMetrics, *, margin: float) -> Judgement:
    """Whether ``candidate`` beats ``parent`` by ``margin`` (module docstring).

    Raises:
        ValueError: the metrics differ in kind, or ``margin`` is negative or not finite.
    """
    if candidate.metric != parent.metric:
        raise ValueError("candidate and parent were scored with different metrics")
    if not 0.0 <= margin < math.inf:
        raise ValueError("margin must be finite and >= 0")
    if candidate.metric == "accuracy":
        gain = candidate.value - parent.value
        unit = f"{gain * 100:+.2f} points"
    else:
        gain = (parent.value - candidate.value) / parent.value if parent.value > 0 else 0.0
        unit = f"{gain * 100:+.2f}% mse"
    passed = gain >= margin and (margin > 0 or gain > 0)
    verdict = "beats" if passed else "does not beat"
    return Judgement(passed, gain, f"{verdict} the parent by the margin: {unit}")


__all__ = [
    "HeadMetrics",
    "HoldoutReport",
    "HoldoutSummary",
    "Judgement",
    "Metric",
    "evaluate_head",
    "judge",
    "metric_for",
    "summarize_holdouts",
]
