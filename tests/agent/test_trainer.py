"""The head trainer: exact gradients, convergence, determinism, and refusing bad results."""

from __future__ import annotations

import math

import numpy as np
import pytest

from agent.errors import TrainingError
from agent.trainer import (
    TrainResult,
    evaluate,
    improved,
    loss_and_gradient,
    split_holdout,
    train_head,
)
from protocol.manifest import Head


def make_head(task: str, n_features: int, n_outputs: int, *, bias: str | None = "b") -> Head:
    activation = "identity" if task == "regression" else "softmax"
    if task == "classification" and n_outputs == 1:
        activation = "sigmoid"
    return Head(
        kind="gemm",
        node="head",
        weight="w",
        bias=bias,
        feature="features",
        activation=activation,  # type: ignore[arg-type]
        task=task,  # type: ignore[arg-type]
        n_features=n_features,
        n_outputs=n_outputs,
    )


SOFTMAX = make_head("classification", 5, 3)
SIGMOID = make_head("classification", 5, 1)
REGRESSION = make_head("regression", 5, 2)


def labels_for(head: Head, rows: int, rng: np.random.Generator) -> np.ndarray:
    if head.task == "regression":
        return rng.normal(size=(rows, head.n_outputs))
    return rng.integers(0, max(2, head.n_outputs), size=rows)


@pytest.mark.parametrize(
    "head", [SOFTMAX, SIGMOID, REGRESSION], ids=["softmax-ce", "sigmoid-bce", "squared-error"]
)
def test_gradient_matches_finite_differences(head: Head) -> None:
    rng = np.random.default_rng(3)
    x = rng.normal(size=(7, head.n_features))
    y = labels_for(head, 7, rng)
    w = rng.normal(size=(head.n_features, head.n_outputs))
    b = rng.normal(size=head.n_outputs)
    anchor = (rng.normal(size=w.shape), rng.normal(size=b.shape))
    y = y.astype(np.int64) if head.task == "classification" else y

    def loss(w: np.ndarray, b: np.ndarray) -> float:
        return loss_and_gradient(head, w, b, x, y, l2=0.3, anchor=anchor)[0]

    _, grad_w, grad_b = loss_and_gradient(head, w, b, x, y, l2=0.3, anchor=anchor)
    eps = 1e-6
    for params, grad in ((w, grad_w), (b, grad_b)):
        numeric = np.zeros_like(params)
        for index in np.ndindex(params.shape):
            saved = params[index]
            params[index] = saved + eps
            up = loss(w, b)
            params[index] = saved - eps
            down = loss(w, b)
            params[index] = saved
            numeric[index] = (up - down) / (2 * eps)
        np.testing.assert_allclose(grad, numeric, rtol=1e-6, atol=1e-8)


def test_softmax_loss_stays_finite_for_huge_logits() -> None:
    x = np.array([[1e3, -1e3, 0, 0, 0]])
    w = np.full((5, 3), 50.0)
    w[:, 1] = -50.0
    loss, grad_w, _ = loss_and_gradient(
        SOFTMAX, w, np.zeros(3), x, np.array([1]), l2=0.0, anchor=(w, np.zeros(3))
    )
    assert math.isfinite(loss)
    assert np.isfinite(grad_w).all()


def separable(head: Head, rows: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Rows labelled by a hidden linear rule (regression: a linear map plus small noise)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, head.n_features)).astype(np.float32)
    rule = rng.normal(size=(head.n_features, max(2, head.n_outputs)))
    if head.task == "regression":
        return x, x @ rule[:, : head.n_outputs] + 0.01 * rng.normal(size=(rows, head.n_outputs))
    labels = np.argmax(x @ rule, axis=1)  # binary: two columns, class 1 where the second wins
    return x, labels


@pytest.mark.parametrize("head", [SOFTMAX, SIGMOID], ids=["softmax", "sigmoid"])
def test_trainer_converges_on_a_separable_task(head: Head) -> None:
    x, y = separable(head, 600)
    zeros = (np.zeros((head.n_features, head.n_outputs)), np.zeros(head.n_outputs))

    result = train_head(head, *zeros, x, y, rng=np.random.default_rng(0), epochs=40)

    assert result.metric == "accuracy"
    assert result.before < 0.7
    assert result.after >= 0.95
    assert (result.n_train, result.n_holdout) == (450, 150)
    assert improved(result, min_gain=0.05)


def test_trainer_fits_a_linear_regression_and_reports_mse() -> None:
    x, y = separable(REGRESSION, 400)
    zeros = (np.zeros((5, 2)), np.zeros(2))

    result = train_head(REGRESSION, *zeros, x, y, rng=np.random.default_rng(0), l2=0.0)

    assert result.metric == "mse"
    assert result.after < 0.01 * result.before
    assert improved(result, min_gain=0.5)


def test_trainer_is_deterministic_for_a_seed() -> None:
    x, y = separable(SOFTMAX, 200)
    start = (np.zeros((5, 3)), np.zeros(3))
    runs = [train_head(SOFTMAX, *start, x, y, rng=np.random.default_rng(42)) for _ in range(2)]
    other = train_head(SOFTMAX, *start, x, y, rng=np.random.default_rng(43))

    np.testing.assert_array_equal(runs[0].weight, runs[1].weight)
    np.testing.assert_array_equal(runs[0].holdout, runs[1].holdout)
    assert not np.array_equal(runs[0].weight, other.weight)


def test_trainer_stays_within_max_distance_of_the_anchor() -> None:
    x, y = separable(SOFTMAX, 300)
    anchor = (np.ones((5, 3)), np.ones(3))

    result = train_head(
        SOFTMAX, *anchor, x, y, rng=np.random.default_rng(0), anchor=anchor, max_distance=0.5
    )

    distance = np.sqrt(np.sum((result.weight - 1.0) ** 2) + np.sum((result.bias - 1.0) ** 2))
    assert distance <= 0.5 + 1e-6
    assert result.after > result.before


def test_trainer_keeps_a_missing_bias_at_zero() -> None:
    head = make_head("classification", 5, 3, bias=None)
    x, y = separable(head, 200)

    result = train_head(head, np.zeros((5, 3)), np.zeros(3), x, y, rng=np.random.default_rng(0))

    np.testing.assert_array_equal(result.bias, np.zeros(3, np.float32))
    assert result.after > result.before


@pytest.mark.parametrize(
    ("lr", "scale", "match"),
    [
        pytest.param(1e4, 1.0, "diverged", id="step-too-large"),
        pytest.param(0.5, 1e60, "not finite in float32", id="beyond-float32"),
    ],
)
def test_trainer_refuses_a_non_finite_result(lr: float, scale: float, match: str) -> None:
    x, y = separable(REGRESSION, 100)
    with pytest.raises(TrainingError, match=match):
        train_head(
            REGRESSION,
            np.zeros((5, 2)),
            np.zeros(2),
            x,
            y * scale,
            rng=np.random.default_rng(0),
            lr=lr,
        )


@pytest.mark.parametrize(
    ("features", "labels", "match"),
    [
        pytest.param(np.full((4, 5), np.nan), np.zeros(4, np.int64), "NaN", id="nan-features"),
        pytest.param(np.zeros((4, 6)), np.zeros(4, np.int64), "do not fit", id="wrong-width"),
        pytest.param(np.zeros((4, 5)), np.array([0, 1, 2, 3]), "class indices", id="bad-class"),
        pytest.param(np.zeros((4, 5)), np.zeros(4), "class indices", id="float-labels"),
        pytest.param(np.zeros((1, 5)), np.zeros(1, np.int64), "at least 2", id="one-row"),
    ],
)
def test_trainer_refuses_rows_it_cannot_learn_from(
    features: np.ndarray, labels: np.ndarray, match: str
) -> None:
    with pytest.raises(TrainingError, match=match):
        train_head(
            SOFTMAX, np.zeros((5, 3)), np.zeros(3), features, labels, rng=np.random.default_rng(0)
        )


def test_trainer_refuses_a_non_finite_starting_head() -> None:
    x, y = separable(SOFTMAX, 20)
    with pytest.raises(TrainingError, match="not finite"):
        train_head(SOFTMAX, np.full((5, 3), np.inf), np.zeros(3), x, y, rng=np.random.default_rng())


def test_holdout_split_is_disjoint_covering_and_never_empty() -> None:
    for n in (2, 3, 10, 101):
        train, holdout = split_holdout(n, rng=np.random.default_rng(n), holdout_fraction=0.25)
        assert sorted([*train, *holdout]) == list(range(n))
        assert len(train) >= 1
        assert len(holdout) >= 1


def result(metric: str, before: float, after: float) -> TrainResult:
    empty = np.zeros(0, np.float32)
    return TrainResult(empty, empty, before, after, metric, 1, 1, np.zeros(1, np.int64))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("metric", "before", "after", "min_gain", "expected"),
    [
        ("accuracy", 0.60, 0.70, 0.05, True),
        ("accuracy", 0.60, 0.62, 0.05, False),
        ("accuracy", 0.60, 0.60, 0.0, False),
        ("mse", 1.0, 0.5, 0.1, True),
        ("mse", 1.0, 0.95, 0.1, False),
        ("mse", 0.0, 0.0, 0.0, False),
    ],
)
def test_improved_demands_a_margin_in_the_metrics_direction(
    metric: str, before: float, after: float, min_gain: float, expected: bool
) -> None:
    assert improved(result(metric, before, after), min_gain) is expected


def test_evaluate_reads_binary_logits_as_class_one_above_zero() -> None:
    x = np.array([[1.0, 0, 0, 0, 0], [-1.0, 0, 0, 0, 0]])
    w = np.zeros((5, 1))
    w[0, 0] = 2.0
    assert evaluate(SIGMOID, w, np.zeros(1), x, np.array([1, 0])) == 1.0
    assert evaluate(SIGMOID, w, np.zeros(1), x, np.array([0, 1])) == 0.0
