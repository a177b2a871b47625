"""Gate verdicts: three outcomes, never a pass or a failure on too little data, and the
test, alpha and effect stated in every verdict."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from hub.rollouts import DeviceMetrics, GateSpec, InvalidGateInput
from hub.rollouts.gates import (
    Columns,
    evaluate_comparative,
    evaluate_shadow,
    evaluate_update_success,
)

ERRORS = GateSpec.default("error_rate")


def fleet_metrics(
    rng: np.random.Generator, n: int, rate: float, *, spread: float = 0.01, served: int = 2000
) -> list[DeviceMetrics]:
    rates = np.clip(rng.normal(rate, spread, n), 0.0, 1.0)
    return [DeviceMetrics(served, int(rng.binomial(served, r))) for r in rates]


def columns(rows: list[DeviceMetrics], strata: list[int] | None = None) -> Columns:
    return Columns.rows(rows, strata if strata is not None else [0] * len(rows))


def test_clearly_worse_canaries_fail_and_the_verdict_states_test_alpha_and_effect() -> None:
    rng = np.random.default_rng(0)
    canary = columns(fleet_metrics(rng, 30, 0.10))
    control = columns(fleet_metrics(rng, 270, 0.05))
    verdict = evaluate_comparative(ERRORS, 0.0125, canary, control)
    assert verdict.outcome == "fail"
    assert verdict.estimate == pytest.approx(0.05, abs=0.01)
    assert verdict.lower is not None
    assert verdict.lower > ERRORS.tolerance
    assert (verdict.alpha, verdict.tolerance, verdict.effect) == (0.0125, 0.01, 0.05)
    assert "mSPRT" in verdict.test
    assert "tau=0.05" in verdict.test
    assert (verdict.canaries, verdict.controls) == (30, 270)


def test_equal_canaries_pass_once_the_guarded_effect_is_ruled_out() -> None:
    rng = np.random.default_rng(1)
    canary = columns(fleet_metrics(rng, 30, 0.05))
    control = columns(fleet_metrics(rng, 270, 0.05))
    verdict = evaluate_comparative(ERRORS, 0.0125, canary, control)
    assert verdict.outcome == "pass"
    assert verdict.upper is not None
    assert verdict.upper < ERRORS.effect


def test_too_few_canaries_is_inconclusive_even_when_they_look_terrible() -> None:
    rng = np.random.default_rng(2)
    canary = columns(fleet_metrics(rng, 4, 0.50))
    control = columns(fleet_metrics(rng, 100, 0.05))
    verdict = evaluate_comparative(ERRORS, 0.05, canary, control)
    assert verdict.outcome == "inconclusive"
    assert "need 5 each" in verdict.reason
    assert verdict.estimate is None


def test_canaries_without_traffic_are_inconclusive_never_a_rollback() -> None:
    silent = columns([DeviceMetrics() for _ in range(30)])
    control = columns(fleet_metrics(np.random.default_rng(3), 100, 0.05))
    assert evaluate_comparative(ERRORS, 0.05, silent, control).outcome == "inconclusive"


def test_no_shared_stratum_is_inconclusive() -> None:
    rng = np.random.default_rng(4)
    verdict = evaluate_comparative(
        ERRORS,
        0.05,
        columns(fleet_metrics(rng, 10, 0.05), [1] * 10),
        columns(fleet_metrics(rng, 10, 0.05), [2] * 10),
    )
    assert verdict.outcome == "inconclusive"
    assert "stratum" in verdict.reason


def test_every_device_without_errors_is_a_pass_not_a_crash() -> None:
    clean = columns([DeviceMetrics(500, 0) for _ in range(20)])
    verdict = evaluate_comparative(ERRORS, 0.05, clean, clean)
    assert verdict.outcome == "pass"
    assert verdict.estimate == 0.0


def test_latency_is_judged_as_a_ratio() -> None:
    rng = np.random.default_rng(5)
    base = np.exp(rng.normal(np.log(20), 0.1, 60))
    gate = GateSpec.default("latency_p95")
    slow = columns([DeviceMetrics(100, 0, float(ms * 2.0)) for ms in base[:30]])
    same = columns([DeviceMetrics(100, 0, float(ms)) for ms in base[30:]])
    verdict = evaluate_comparative(gate, 0.05, slow, same)
    assert verdict.outcome == "fail"
    assert verdict.estimate == pytest.approx(2.0, rel=0.1)
    assert evaluate_comparative(gate, 0.05, same, same).outcome == "pass"


@pytest.mark.parametrize("metric", ["label_free_accuracy", "feedback_accuracy"])
def test_a_drop_in_accuracy_is_the_harm(metric: Any) -> None:
    gate = GateSpec.default(metric)

    def device(accuracy: float) -> DeviceMetrics:
        return DeviceMetrics(
            1000,
            0,
            label_free_accuracy=accuracy,
            feedback_total=1000,
            feedback_correct=int(accuracy * 1000),
        )

    rng = np.random.default_rng(6)
    worse = columns([device(a) for a in rng.normal(0.80, 0.01, 30)])
    usual = columns([device(a) for a in rng.normal(0.90, 0.01, 30)])
    assert evaluate_comparative(gate, 0.05, worse, usual).outcome == "fail"
    assert evaluate_comparative(gate, 0.05, usual, worse).outcome == "pass"


def test_a_baseline_per_device_settles_a_gate_the_spread_between_devices_cannot() -> None:
    """Latency differs 3x between devices; each device's own baseline removes that."""
    rng = np.random.default_rng(7)
    gate = GateSpec.default("latency_p95")
    hardware = np.exp(rng.normal(np.log(20), 0.6, 40))
    noise = np.exp(rng.normal(0, 0.03, (2, 40)))

    def rows(ids: slice, baseline: bool) -> list[DeviceMetrics]:
        return [
            DeviceMetrics(
                100,
                0,
                float(hardware[i] * noise[0, i]),
                baseline=DeviceMetrics(1000, 0, float(hardware[i] * noise[1, i]))
                if baseline
                else None,
            )
            for i in range(40)[ids]
        ]

    unpaired = evaluate_comparative(
        gate, 0.05, columns(rows(slice(0, 6), False)), columns(rows(slice(6, 40), False))
    )
    paired = evaluate_comparative(
        gate, 0.05, columns(rows(slice(0, 6), True)), columns(rows(slice(6, 40), True))
    )
    assert unpaired.outcome == "inconclusive"
    assert paired.outcome == "pass"
    assert "own baseline" in paired.test


def update_success(**counts: Any) -> str:
    return evaluate_update_success(GateSpec.default("update_success"), 0.05, **counts).outcome


def test_update_success_fails_on_evidence_of_failures_above_tolerance() -> None:
    assert update_success(succeeded=0, failed=2, unresolved=0, census=False) == "fail"
    assert update_success(succeeded=3, failed=5, unresolved=0, census=True) == "fail"


def test_early_failures_cannot_fake_evidence_while_others_are_still_updating() -> None:
    """Failures report fast, successes after the watch window: 2 of 100 failing early."""
    assert update_success(succeeded=0, failed=2, unresolved=98, census=False) == "inconclusive"


def test_update_success_passes_by_census_of_the_stage() -> None:
    assert update_success(succeeded=5, failed=0, unresolved=0, census=True) == "pass"
    assert update_success(succeeded=5, failed=0, unresolved=0, census=False) == "inconclusive"
    assert update_success(succeeded=0, failed=0, unresolved=0, census=True) == "inconclusive"


def test_one_failure_in_five_is_neither_a_pass_nor_proof() -> None:
    verdict = evaluate_update_success(
        GateSpec.default("update_success"), 0.05, succeeded=4, failed=1, unresolved=0, census=True
    )
    assert verdict.outcome == "inconclusive"
    assert "no proof" in verdict.reason


def shadow_reports(
    agree: list[float], n_devices: int = 5, inputs: int = 200
) -> list[DeviceMetrics]:
    rng = np.random.default_rng(8)
    reports = []
    for _ in range(n_devices):
        per_class = rng.multinomial(inputs, [0.4, 0.3, 0.2, 0.1])
        agreed = rng.binomial(per_class, agree)
        reports.append(
            DeviceMetrics(
                shadow_inputs=tuple(map(int, per_class)), shadow_agreed=tuple(map(int, agreed))
            )
        )
    return reports


SHADOW = GateSpec.default("shadow_agreement")


def test_shadow_with_two_classes_swapped_fails() -> None:
    verdict = evaluate_shadow(SHADOW, 0.05, shadow_reports([0.98, 0.0, 0.0, 0.98]))
    assert verdict.outcome == "fail"
    assert "class 1" in verdict.reason


def test_shadow_with_a_rare_class_swapped_still_fails() -> None:
    verdict = evaluate_shadow(SHADOW, 0.05, shadow_reports([0.98, 0.98, 0.98, 0.0]))
    assert verdict.outcome == "fail"
    assert "class 3" in verdict.reason


def test_shadow_that_agrees_passes() -> None:
    verdict = evaluate_shadow(SHADOW, 0.05, shadow_reports([0.97, 0.95, 0.97, 0.9]))
    assert verdict.outcome == "pass"
    assert verdict.estimate is not None
    assert verdict.estimate < 0.15


def test_shadow_with_too_few_devices_is_inconclusive() -> None:
    verdict = evaluate_shadow(SHADOW, 0.05, shadow_reports([0.0] * 4, n_devices=2))
    assert verdict.outcome == "inconclusive"


@pytest.mark.parametrize(
    "fields",
    [
        pytest.param({"inferences": 5, "errors": 6}, id="errors>inferences"),
        pytest.param({"inferences": -1}, id="negative"),
        pytest.param({"feedback_total": 2, "feedback_correct": 3}, id="correct>total"),
        pytest.param({"shadow_inputs": (3,), "shadow_agreed": ()}, id="ragged-shadow"),
        pytest.param({"shadow_inputs": (3,), "shadow_agreed": (4,)}, id="agreed>inputs"),
        pytest.param({"latency_p95_ms": float("nan")}, id="nan-latency"),
        pytest.param({"latency_p95_ms": 0.0}, id="zero-latency"),
        pytest.param({"prediction_drift": float("inf")}, id="inf-drift"),
    ],
)
def test_metrics_no_device_can_report_are_refused(fields: dict[str, Any]) -> None:
    with pytest.raises(InvalidGateInput):
        DeviceMetrics(**fields)
