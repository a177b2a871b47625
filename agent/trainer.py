"""Train a model's head in numpy: pure functions, no I/O, no clock, randomness passed in.

The agent retrains only the final linear layer (docs/agent-architecture.md), on the
features the frozen part of the network produces (the head's input), so training is a
convex problem over ``weight (n_features, n_outputs)`` and ``bias (n_outputs,)`` in the
layout :mod:`protocol.headparams` uses. The loss follows the head's task, not its
activation (an ``ai.onnx.ml`` LinearClassifier without post-transform is still a
classifier):

=================================  ============================  ==================
head                               loss (mean over rows)         holdout metric
=================================  ============================  ==================
classification, ``n_outputs >= 2``  softmax cross-entropy          accuracy (argmax)
classification, ``n_outputs == 1``  sigmoid BCE on class 1's logit accuracy (logit > 0)
regression                          squared error ``½‖z - y‖²``    mse (lower is better)
=================================  ============================  ==================

plus ``½ · l2 · ‖W - W_anchor‖²``, a proximal term that pulls the weight towards the
anchor (the base version's head, as FedProx does) rather than towards zero, which would
undo what the base model learned. Everything is computed in float64 with the usual
stabilisations (log-sum-exp with max subtraction, ``logaddexp``).

Optimiser: mini-batch SGD with heavy-ball momentum. ``lr`` is relative to the features'
scale: the step is ``lr / (1 + mean ‖x‖²)`` over the training rows, which bounds every
loss's curvature here, so one default works for features in [0, 1] and for unnormalised
ReLU activations alike. With ``max_distance`` the parameters are projected back into the
L2 ball of that radius around the anchor after every step (projected SGD): the agent
uses the delta clip norm, so the head it serves is the one whose clipped delta it sends.

The rows are split once, with ``rng``, into a training set and a holdout set; the result
reports the holdout metric of the starting head (``before``) and of the trained one
(``after``); :func:`improved` is the keep-or-drop policy. A result that is not finite is
never returned (threat-model B27): :class:`~agent.errors.TrainingError` instead.

What it does not do: choose when to train, decide which labels to trust, or read and
write models (see :mod:`agent.learner`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

from agent.errors import TrainingError
from protocol.manifest import Head

Metric = Literal["accuracy", "mse"]
Floats = npt.NDArray[np.float64]
Indices = npt.NDArray[np.int64]


@dataclass(frozen=True, eq=False)
class TrainResult:
    """A trained head and how it and the starting head did on the holdout rows.

    ``holdout`` holds the indices (into the rows given) of the holdout set, so a caller
    can score another head (the base version's) on exactly the same rows.
    """

    weight: npt.NDArray[np.float32]
    bias: npt.NDArray[np.float32]
    before: float
    after: float
    metric: Metric
    n_train: int
    n_holdout: int
    holdout: Indices


def metric_for(head: Head) -> Metric:
    """``accuracy`` for classifiers, ``mse`` for regressors."""
    return "accuracy" if head.task == "classification" else "mse"


def train_head(
    head: Head,
    weight: np.ndarray,
    bias: np.ndarray,
    features: np.ndarray,
    labels: np.ndarray,
    *,
    rng: np.random.Generator,
    epochs: int = 30,
    batch_size: int = 32,
    lr: float = 0.5,
    momentum: float = 0.9,
    l2: float = 1e-3,
    holdout_fraction: float = 0.25,
    anchor: tuple[np.ndarray, np.ndarray] | None = None,
    max_distance: float = math.inf,
) -> TrainResult:
    """Train the head from ``(weight, bias)`` on ``features`` and ``labels``.

    ``labels`` are class indices ``(n,)`` for a classifier (``0..n_outputs-1``, or 0/1
    for a binary head) and targets ``(n, n_outputs)`` (or ``(n,)`` for one output) for a
    regressor. ``anchor`` (default: the starting head) is the centre of the L2 term and of
    the ``max_distance`` ball; the same ``rng`` state gives the same result. A head
    without a bias (``head.bias is None``) keeps its (zero) bias.

    Raises:
        TrainingError: fewer than two rows, labels or features that do not fit the head,
            non-finite inputs, or a non-finite result (diverged, or overflowing float32).
        ValueError: hyperparameters out of range (a caller's bug).
    """
    _check_settings(epochs, batch_size, lr, momentum, l2, holdout_fraction, max_distance)
    x, y = _rows(head, features, labels)
    w0, b0 = _params(head, weight, bias)
    aw, ab = (w0, b0) if anchor is None else _params(head, *anchor)
    train, holdout = split_holdout(len(x), rng=rng, holdout_fraction=holdout_fraction)
    step = lr / (1.0 + float(np.mean(np.sum(np.square(x[train]), axis=1))))
    w, b = w0.copy(), b0.copy()
    vw, vb = np.zeros_like(w), np.zeros_like(b)
    with np.errstate(over="ignore", invalid="ignore"):  # divergence is checked below
        for _ in range(epochs):
            order = rng.permutation(train)
            for start in range(0, len(order), batch_size):
                batch = order[start : start + batch_size]
                loss, gw, gb = loss_and_gradient(
                    head, w, b, x[batch], y[batch], l2=l2, anchor=(aw, ab)
                )
                if not math.isfinite(loss):
                    raise TrainingError(f"training diverged: the {_loss_name(head)} is not finite")
                if head.bias is None:  # the graph has no bias to write back: keep it at zero
                    gb = np.zeros_like(gb)
                vw, vb = momentum * vw - step * gw, momentum * vb - step * gb
                w, b = _project(w + vw, b + vb, aw, ab, max_distance)
    w32, b32 = _as_float32(w, b)
    return TrainResult(
        weight=w32,
        bias=b32,
        before=evaluate(head, w0, b0, x[holdout], y[holdout]),
        after=evaluate(head, w32, b32, x[holdout], y[holdout]),
        metric=metric_for(head),
        n_train=int(train.size),
        n_holdout=int(holdout.size),
        holdout=holdout,
    )


def improved(result: TrainResult, min_gain: float) -> bool:
    """Whether the trained head beats the starting one on the holdout by a margin.

    Accuracy must rise by more than ``min_gain`` (absolute: 0.01 is one point); mse must
    fall by more than ``min_gain`` times the starting mse (relative, as mse has the
    targets' units). ``min_gain = 0`` still demands a strict improvement.
    """
    if result.metric == "accuracy":
        return result.after - result.before > min_gain
    return result.before - result.after > min_gain * result.before


def split_holdout(
    n: int, *, rng: np.random.Generator, holdout_fraction: float
) -> tuple[Indices, Indices]:
    """Shuffled training and holdout indices of ``n`` rows; each set has at least one row.

    Raises:
        TrainingError: fewer than two rows.
    """
    if n < 2:
        raise TrainingError(f"{n} labelled rows: need at least 2 (one to train, one to hold out)")
    order = rng.permutation(n).astype(np.int64)
    n_holdout = min(n - 1, max(1, round(n * holdout_fraction)))
    return order[n_holdout:], order[:n_holdout]


def evaluate(
    head: Head, weight: np.ndarray, bias: np.ndarray, features: np.ndarray, labels: np.ndarray
) -> float:
    """The head's metric on the rows: accuracy (higher is better) or mse (lower is better).

    Raises:
        TrainingError: rows or parameters that do not fit the head, or non-finite values.
    """
    x, y = _rows(head, features, labels)
    w, b = _params(head, weight, bias)
    if len(x) == 0:
        raise TrainingError("no rows to evaluate on")
    z = x @ w + b
    if head.task == "regression":
        value = float(np.mean(np.square(z - y)))
    elif head.n_outputs == 1:
        value = float(np.mean((z[:, 0] > 0) == (y == 1)))
    else:
        value = float(np.mean(np.argmax(z, axis=1) == y))
    if not math.isfinite(value):
        raise TrainingError("the holdout metric is not finite")
    return value


def loss_and_gradient(
    head: Head,
    weight: Floats,
    bias: Floats,
    x: Floats,
    y: np.ndarray,
    *,
    l2: float,
    anchor: tuple[Floats, Floats],
) -> tuple[float, Floats, Floats]:
    """The mean loss over the rows plus the L2 term, and its gradient (module docstring).

    ``x`` and ``y`` as :func:`train_head` prepares them: float64 ``(n, n_features)``, and
    int64 class indices or float64 ``(n, n_outputs)`` targets.
    """
    n = len(x)
    z = x @ weight + bias
    if head.task == "regression":
        residual = z - y
        loss = 0.5 * float(np.sum(np.square(residual))) / n
        dz = residual / n
    elif head.n_outputs == 1:
        logit, target = z[:, 0], y.astype(np.float64)
        loss = float(np.mean(np.logaddexp(0.0, logit) - target * logit))
        dz = ((_sigmoid(logit) - target) / n)[:, None]
    else:
        shifted = z - z.max(axis=1, keepdims=True)
        log_norm = np.log(np.sum(np.exp(shifted), axis=1))
        rows = np.arange(n)
        loss = float(np.mean(log_norm - shifted[rows, y]))
        dz = np.exp(shifted - log_norm[:, None])
        dz[rows, y] -= 1.0
        dz /= n
    distance = weight - anchor[0]
    loss += 0.5 * l2 * float(np.sum(np.square(distance)))
    grad_w: Floats = x.T @ dz + l2 * distance
    grad_b: Floats = dz.sum(axis=0)
    return loss, grad_w, grad_b


def _sigmoid(z: Floats) -> Floats:
    result: Floats = np.exp(-np.logaddexp(0.0, -z))
    return result


def _loss_name(head: Head) -> str:
    if head.task == "regression":
        return "squared error"
    return "sigmoid cross-entropy" if head.n_outputs == 1 else "softmax cross-entropy"


def _project(w: Floats, b: Floats, aw: Floats, ab: Floats, radius: float) -> tuple[Floats, Floats]:
    """``(w, b)`` moved into the L2 ball of ``radius`` around ``(aw, ab)``."""
    if math.isinf(radius):
        return w, b
    dw, db = w - aw, b - ab
    norm = math.sqrt(float(np.sum(np.square(dw)) + np.sum(np.square(db))))
    if norm <= radius:
        return w, b
    factor = radius / norm
    return aw + dw * factor, ab + db * factor


def _check_settings(
    epochs: int,
    batch_size: int,
    lr: float,
    momentum: float,
    l2: float,
    holdout_fraction: float,
    max_distance: float,
) -> None:
    if epochs < 1 or batch_size < 1:
        raise ValueError("epochs and batch_size must be at least 1")
    if not (0.0 < lr < math.inf and 0.0 <= momentum < 1.0 and 0.0 <= l2 < math.inf):
        raise ValueError("lr must be positive, momentum in [0, 1), l2 >= 0, all finite")
    if not 0.0 < holdout_fraction < 1.0:
        raise ValueError("holdout_fraction must be in (0, 1)")
    if not max_distance >= 0.0:
        raise ValueError("max_distance must be >= 0")


def _params(head: Head, weight: np.ndarray, bias: np.ndarray) -> tuple[Floats, Floats]:
    w, b = np.asarray(weight, np.float64), np.asarray(bias, np.float64)
    if w.shape != (head.n_features, head.n_outputs) or b.shape != (head.n_outputs,):
        raise TrainingError(
            f"weight {w.shape} and bias {b.shape} do not fit a head of "
            f"({head.n_features}, {head.n_outputs})"
        )
    if not (np.isfinite(w).all() and np.isfinite(b).all()):
        raise TrainingError("the starting head is not finite")
    return w, b


def _rows(head: Head, features: np.ndarray, labels: np.ndarray) -> tuple[Floats, np.ndarray]:
    """Features as float64 ``(n, n_features)`` and labels as the loss expects them."""
    x = np.asarray(features, np.float64)
    if x.ndim != 2 or x.shape[1] != head.n_features:
        raise TrainingError(f"features {x.shape} do not fit a head of {head.n_features} inputs")
    if not np.isfinite(x).all():
        raise TrainingError("features hold NaN or infinity")
    y = np.asarray(labels)
    if head.task == "regression":
        y = y.astype(np.float64).reshape(len(y), -1)
        if y.shape != (len(x), head.n_outputs) or not np.isfinite(y).all():
            raise TrainingError(f"targets {y.shape} do not fit {len(x)} rows of {head.n_outputs}")
        return x, y
    classes = max(2, head.n_outputs)
    if y.shape != (len(x),) or y.dtype.kind not in "iu" or ((y < 0) | (y >= classes)).any():
        raise TrainingError(f"labels must be {len(x)} class indices in [0, {classes})")
    return x, y.astype(np.int64)


def _as_float32(w: Floats, b: Floats) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    with np.errstate(over="ignore"):  # beyond float32's range becomes inf: refused below
        w32, b32 = w.astype(np.float32), b.astype(np.float32)
    if not (np.isfinite(w32).all() and np.isfinite(b32).all()):
        raise TrainingError("the trained head is not finite in float32")
    return w32, b32


__all__ = [
    "Metric",
    "TrainResult",
    "evaluate",
    "improved",
    "loss_and_gradient",
    "metric_for",
    "split_holdout",
    "train_head",
]
