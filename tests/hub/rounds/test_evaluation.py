"""Candidate evaluation: numpy metrics against an independent computation, and the margin rule."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import log_softmax

from hub.rounds.evaluation import (
    HeadMetrics,
    HoldoutReport,
    evaluate_head,
    judge,
    summarize_holdouts,
)
from protocol.headparams import head_forward
from tests.hub.rounds.helpers import make_head

SOFTMAX, SIGMOID = make_head(), make_head(n_outputs=1)
REGRESSION = make_head("regression", n_outputs=2)


def rows(h, n: int = 300, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, h.n_features))
    w, b = rng.normal(size=(h.n_features, h.n_outputs)), rng.normal(size=h.n_outputs)
    if h.task == "regression":
        return x, rng.normal(size=(n, h.n_outputs)), w, b
    return x, rng.integers(0, max(2, h.n_outputs), size=n), w, b


def test_softmax_accuracy_and_cross_entropy_match_scipy_and_the_onnx_twin() -> None:
    x, y, w, b = rows(SOFTMAX)
    m = evaluate_head(SOFTMAX, w, b, x, y)
    probabilities = head_forward(SOFTMAX, w, b, x)
    assert m.value == pytest.approx(np.mean(probabilities.argmax(axis=1) == y))
    assert m.loss == pytest.approx(-np.mean(log_softmax(x @ w + b, axis=1)[np.arange(len(y)), y]))
    assert (m.metric, m.n) == ("accuracy", 300)


def test_binary_head_reads_one_logit() -> None:
    x, y, w, b = rows(SIGMOID)
    m = evaluate_head(SIGMOID, w, b, x, y)
    p = head_forward(SIGMOID, w, b, x)[:, 0]
    assert m.value == pytest.approx(np.mean((p > 0.5) == (y == 1)))
    expected = -np.mean(np.where(y == 1, np.log(p), np.log1p(-p)))
    assert m.loss == pytest.approx(expected, rel=1e-4)


def test_regression_reports_mse() -> None:
    x, y, w, b = rows(REGRESSION)
    m = evaluate_head(REGRESSION, w, b, x, y)
    assert m.value == pytest.approx(np.mean((x @ w + b - y) ** 2))
    assert m.loss == pytest.approx(m.value * REGRESSION.n_outputs / 2)


def test_a_validation_set_that_does_not_fit_is_a_setup_error() -> None:
    x, y, w, b = rows(SOFTMAX)
    with pytest.raises(ValueError, match="features"):
        evaluate_head(SOFTMAX, w, b, x[:, :2], y)


@pytest.mark.parametrize(
    ("candidate", "parent", "margin", "passed"),
    [
        (0.82, 0.80, 0.01, True),
        (0.805, 0.80, 0.01, False),
        (0.80, 0.80, 0.0, False),  # no margin still needs a strict gain
        (0.8001, 0.80, 0.0, True),
    ],
)
def test_accuracy_must_beat_the_parent_by_the_margin_in_points(
    candidate: float, parent: float, margin: float, passed: bool
) -> None:
    j = judge(
        HeadMetrics("accuracy", candidate, 0.5, 100),
        HeadMetrics("accuracy", parent, 0.5, 100),
        margin=margin,
    )
    assert j.passed is passed
    assert j.gain == pytest.approx(candidate - parent)
    assert "points" in j.reason


def test_mse_must_fall_by_the_margin_relative_to_the_parent() -> None:
    parent = HeadMetrics("mse", 2.0, 1.0, 100)
    assert judge(HeadMetrics("mse", 1.9, 1.0, 100), parent, margin=0.05).passed
    assert not judge(HeadMetrics("mse", 1.95, 1.0, 100), parent, margin=0.05).passed


def test_holdout_reports_are_summarised_with_capped_weights() -> None:
    reports = [
        HoldoutReport("a", "accuracy", 0.6, 0.7, 100),
        HoldoutReport("b", "accuracy", 0.5, 0.45, 100),
        HoldoutReport("c", "accuracy", 0.7, 0.9, 200),
    ]
    s = summarize_holdouts(reports)
    assert s is not None
    assert s.devices == 3
    assert s.mean_before == pytest.approx((60 + 50 + 140) / 400)
    assert s.mean_after == pytest.approx((70 + 45 + 180) / 400)
    assert s.median_gain == pytest.approx(0.1)
    assert s.share_improved == pytest.approx(2 / 3)


def test_no_reports_no_summary() -> None:
    assert summarize_holdouts([]) is None
