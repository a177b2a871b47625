"""Drift policies and calibrations are validated where they are loaded (named bad inputs)."""

from __future__ import annotations

import pytest

from hub.drift.performance import Calibration
from hub.drift.policy import DriftPolicy
from hub.errors import InvalidRequest

BAD_POLICIES = [
    pytest.param({"warn_alpha": 0.0}, id="alpha-zero"),
    pytest.param({"device_alpha": 1.5}, id="alpha-above-one"),
    pytest.param({"psi_warn": -0.1}, id="negative-threshold"),
    pytest.param({"psi_warn": float("nan")}, id="nan-threshold"),
    pytest.param({"psi_alert": 0.05}, id="alert-below-warning"),
    pytest.param({"alert_hits": 4}, id="more-hits-than-window"),
    pytest.param({"bucket_ms": 7 * 60_000}, id="bucket-not-dividing-an-hour"),
    pytest.param({"min_rows": 1}, id="one-row"),
    pytest.param({"min_expected": 0.0}, id="no-expected-count"),
    pytest.param({"nan_alert": 0.001}, id="nan-alert-below-warning"),
]


@pytest.mark.parametrize("fields", BAD_POLICIES)
def test_policy_refuses_thresholds_that_cannot_work(fields: dict[str, float]) -> None:
    with pytest.raises(InvalidRequest) as info:
        DriftPolicy(**fields)  # type: ignore[arg-type]
    assert info.value.status_hint == 422


def test_default_policy_is_the_documented_one() -> None:
    policy = DriftPolicy()
    assert (policy.warn_alpha, policy.psi_warn, policy.psi_alert) == (0.001, 0.1, 0.25)
    assert (policy.alert_hits, policy.alert_window, policy.history) == (2, 3, 3)
    assert DriftPolicy(bucket_ms=60_000).bucket_ms == 60_000


@pytest.mark.parametrize(
    ("x", "y"),
    [
        pytest.param((), (), id="empty"),
        pytest.param((0.2, 0.5), (0.3,), id="unequal"),
        pytest.param((0.5, 0.2), (0.3, 0.4), id="unsorted"),
        pytest.param((0.2, 1.5), (0.3, 0.4), id="outside-unit-interval"),
    ],
)
def test_calibration_refuses_malformed_knots(x: tuple[float, ...], y: tuple[float, ...]) -> None:
    with pytest.raises(InvalidRequest):
        Calibration(x, y)
