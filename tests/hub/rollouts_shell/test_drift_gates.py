"""The drift gates end to end over simulated windows: per-device window bodies as devices
send them, turned into gate inputs by :mod:`hub.fleet.rollout_drift` (the shell's own
functions), judged by :func:`hub.rollouts.gates.evaluate_comparative` at every tick.

The simulated fleet: 150 devices of a 3-class model whose reference predicts
(0.5, 0.3, 0.2); each device has its own class mix (Dirichlet around the reference, its
inputs differ by site) and its own mean calibrated confidence (around 0.8, sd 0.03). A
stage of 30 canaries against 120 controls, one window of 60 predictions per device and
minute, the gate evaluated each minute for 15 minutes (the canaries' windows are of the
new version, the control's of the old, both since the stage began).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from hub.drift.reference import PREDICTION, Reference
from hub.fleet import rollout_drift
from hub.rollouts import DeviceMetrics
from hub.rollouts.gates import Columns, evaluate_comparative
from hub.rollouts.spec import GateSpec

DEVICES, CANARIES, ROWS, MINUTES = 150, 30, 60, 15
CLASSES = np.array([0.5, 0.3, 0.2])
SEEDS = 20
ALPHA = 0.05 / 3  # the rollout's budget split over three gate metrics, as the planner does
REFERENCE = Reference(
    names=(PREDICTION,),
    kinds=("classes",),
    bins=np.array([3]),
    proportions=CLASSES[None, :],
    rows=5_000,
    features=0,
    confidence_bins=10,
    digest="sim",
)

Version = Callable[[np.ndarray, float], tuple[np.ndarray, float]]
"""A version as it serves one device: (the device's class mix, mean confidence) -> the
version's class mix and mean confidence there."""


def same(mix: np.ndarray, confidence: float) -> tuple[np.ndarray, float]:
    return mix, confidence


def shifted(mix: np.ndarray, confidence: float) -> tuple[np.ndarray, float]:
    """15 points of class 0 predicted as class 1."""
    moved = min(0.15, float(mix[0]))
    return mix + np.array([-moved, moved, 0.0]), confidence


def less_confident(mix: np.ndarray, confidence: float) -> tuple[np.ndarray, float]:
    """Estimated accuracy 8 points lower."""
    return mix, confidence - 0.08


def window(rng: np.random.Generator, mix: np.ndarray, confidence: float) -> dict[str, Any]:
    """One window's body as a device sends it (predictions and confidence sketches)."""
    counts = rng.multinomial(ROWS, mix / mix.sum())
    c = np.clip(rng.beta(confidence * 40, (1 - confidence) * 40, ROWS), 1 / 3, 1.0)
    bins = np.minimum((c * 10).astype(int), 9)
    return {
        "inference_count": ROWS,
        "predictions": {"kind": "classes", "counts": counts.tolist()},
        "confidence": {
            "counts": np.bincount(bins, minlength=10).tolist(),
            "confidence": np.bincount(bins, weights=c, minlength=10).tolist(),
        },
    }


def run(seed: int, version: Version, metric: str) -> str:
    """One stage's gate over MINUTES ticks: "fail" at the first failing tick, else the
    last outcome."""
    rng = np.random.default_rng(seed)
    mixes = rng.dirichlet(CLASSES * 200, DEVICES)
    confidences = rng.normal(0.8, 0.03, DEVICES)
    gate = GateSpec.default(metric)  # type: ignore[arg-type]
    bodies: list[list[dict[str, Any]]] = [[] for _ in range(DEVICES)]
    outcome = "inconclusive"
    for _ in range(MINUTES):
        for d in range(DEVICES):
            mix, confidence = mixes[d], confidences[d]
            if d < CANARIES:
                mix, confidence = version(mix, confidence)
            bodies[d] = [merged(bodies[d] + [window(rng, mix, confidence)])]
        metrics = inputs(bodies)
        ids = [str(d) for d in range(DEVICES)]
        canary = Columns.of(ids[:CANARIES], metrics, [0] * CANARIES)
        control = Columns.of(ids[CANARIES:], metrics, [0] * (DEVICES - CANARIES))
        outcome = evaluate_comparative(gate, ALPHA, canary, control).outcome
        if outcome == "fail":
            return outcome
    return outcome


def merged(bodies: list[dict[str, Any]]) -> dict[str, Any]:
    """The windows as one body (what the shell's sums make of them), so a tick costs one
    window per device, not all of them again."""
    sums = rollout_drift.summed_predictions(bodies)
    assert sums is not None
    sketches = [b["confidence"] for b in bodies]
    return {
        "inference_count": sum(b["inference_count"] for b in bodies),
        "predictions": {"kind": sums.kind, "counts": list(sums.counts)},
        "confidence": {
            key: np.sum([s[key] for s in sketches], axis=0).tolist()
            for key in ("counts", "confidence")
        },
    }


def inputs(bodies: list[list[dict[str, Any]]]) -> dict[str, DeviceMetrics]:
    """What the shell computes from each device's windows."""
    sums = {str(d): rollout_drift.summed_predictions(b) for d, b in enumerate(bodies)}
    drift = rollout_drift.prediction_drift(
        {d: s for d, s in sums.items() if s is not None}, REFERENCE
    )
    return {
        str(d): DeviceMetrics(
            inferences=sum(w["inference_count"] for w in b),
            prediction_drift=drift.get(str(d)),
            label_free_accuracy=rollout_drift.label_free_accuracy(b),
        )
        for d, b in enumerate(bodies)
    }


@pytest.mark.parametrize("metric", ["prediction_drift", "label_free_accuracy"])
def test_a_good_version_is_not_failed_by_the_drift_gates(metric: str) -> None:
    outcomes = [run(seed, same, metric) for seed in range(SEEDS)]
    assert outcomes.count("fail") == 0, outcomes
    assert outcomes.count("pass") >= SEEDS - 2, outcomes


def test_a_version_whose_prediction_distribution_shifts_fails_the_prediction_drift_gate() -> None:
    outcomes = [run(seed, shifted, "prediction_drift") for seed in range(SEEDS)]
    assert outcomes.count("fail") >= SEEDS - 2, outcomes


def test_a_version_whose_estimated_accuracy_drops_fails_the_label_free_accuracy_gate() -> None:
    outcomes = [run(seed, less_confident, "label_free_accuracy") for seed in range(SEEDS)]
    assert outcomes.count("fail") >= SEEDS - 2, outcomes


def test_a_shift_the_accuracy_gate_cannot_see_is_left_to_the_drift_gate() -> None:
    """The gates watch different harms: moving predictions between classes at the same
    confidence does not fail label-free accuracy."""
    outcomes = [run(seed, shifted, "label_free_accuracy") for seed in range(10)]
    assert "fail" not in outcomes, outcomes


def test_device_sums_and_scores_follow_the_drift_core() -> None:
    bodies: list[dict[str, Any]] = [
        {"predictions": {"kind": "classes", "counts": [30, 20, 10], "overflow": 1}},
        {"predictions": {"kind": "classes", "counts": [20, 10, 10]}},
        {"confidence": {"counts": [0] * 8 + [10, 30], "confidence": [0] * 8 + [8.5, 28.5]}},
    ]
    sums = rollout_drift.summed_predictions(bodies)
    assert sums == rollout_drift.PredictionSums("classes", (50, 30, 20), overflow=1)
    assert rollout_drift.label_free_accuracy(bodies) == pytest.approx(37 / 40)
    psi = rollout_drift.prediction_drift({"d": sums}, REFERENCE)["d"]
    # overflow folds into the last class; pseudo-count 1/2 per bin on both sides
    q = (np.array([50, 30, 21]) + 0.5) / (101 + 1.5)
    p = (5_000 * CLASSES + 0.5) / (5_000 + 1.5)
    assert psi == pytest.approx(float(((q - p) * np.log(q / p)).sum()))
    mismatched = rollout_drift.PredictionSums("bins", (1, 2, 3))
    assert rollout_drift.prediction_drift({"d": mismatched}, REFERENCE) == {}
    assert rollout_drift.summed_predictions([bodies[0], {"predictions": {
        "kind": "classes", "counts": [1, 2]}}]) is None  # fmt: skip
    assert rollout_drift.reference_version("classes", running=2, previous=1) == 1
    assert rollout_drift.reference_version("bins", running=2, previous=1) == 2
