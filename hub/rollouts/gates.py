"""Gate verdicts: pass, fail or inconclusive, each with the test, alpha and effect stated.

Every gate watches one *harm* (hub/rollouts/spec.py lists them) and decides with an
anytime-valid interval (hub/rollouts/sequential.py), so it may be evaluated at every tick:

- **fail** when the interval lies wholly above ``tolerance``: a good version (harm at
  most the tolerance) is failed with probability at most ``alpha``, however long it bakes;
- **pass** when the interval lies wholly below ``effect``: a version at least that harmful
  passes with probability at most ``alpha``;
- **inconclusive** otherwise, and whenever fewer than ``min_devices`` devices (each with
  ``min_samples`` observations) stand on either side: not enough data is never a pass and
  never a failure. The planner extends the bake and then pauses for a human.

Comparative gates take one value per device (its error rate, log p95 latency, drift
score, estimated or labelled accuracy) and compare the canaries' mean with the control's,
stratified (:func:`~hub.rollouts.sequential.stratified_difference`). The device, not the
inference, is the unit: inferences of one device are not independent (they share its
inputs, hardware and hour), and treating them as if they were is how per-request canary
judges false-alarm. When devices report a baseline from before the rollout, each value is
the device's change since then (a difference in differences): the spread between devices
(hardware, site, workload) drops out, and far fewer canaries settle a gate.

``update_success`` counts devices: it fails on sequential evidence that more than
``tolerance`` of updates fail (devices still updating count as successes, so the order in
which outcomes arrive cannot fake evidence) and passes once every device of the stage has
an outcome and the failed share is within the tolerance (a census: baking longer adds no
devices). ``shadow_agreement`` pools, per class the served model predicted, how often the
shadow model agreed, and tests each class's disagreement rate.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from hub.rollouts.errors import InvalidGateInput
from hub.rollouts.sequential import (
    FloatArray,
    IntArray,
    log_evidence_above,
    log_evidence_below,
    normal_mixture_radius,
    stratified_difference,
)
from hub.rollouts.spec import RATIO_METRICS, GateMetric, GateSpec

Outcome = Literal["pass", "fail", "inconclusive"]

MIXTURE_TEST = "normal-mixture mSPRT confidence sequence on device means, canary - control"
BERNOULLI_TEST = "Bernoulli mixture SPRT (one-sided, 64-point grid) on device outcomes"
SHADOW_TEST = "Bernoulli mixture SPRT per class (one-sided, Bonferroni over classes)"


@dataclass(frozen=True)
class DeviceMetrics:
    """What one device reported over the gate window (canaries: since they updated;
    control: over the same period), as the shell sums it from telemetry and data windows.

    ``shadow_inputs[c]``: sampled inputs the served model put in class ``c`` while the
    shadow model ran beside it; ``shadow_agreed[c]``: of those, how many the shadow model
    put in ``c`` too. Drift and label-free accuracy come from the drift subsystem.
    ``baseline``: the same device's metrics over a window before the rollout started
    (the same window for every device); with it, gates compare each device with itself.

    Raises:
        InvalidGateInput: counts no device could report.
    """

    inferences: int = 0
    errors: int = 0
    latency_p95_ms: float | None = None
    prediction_drift: float | None = None
    label_free_accuracy: float | None = None
    feedback_total: int = 0
    feedback_correct: int = 0
    shadow_inputs: tuple[int, ...] = ()
    shadow_agreed: tuple[int, ...] = ()
    baseline: DeviceMetrics | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.errors <= self.inferences:
            raise InvalidGateInput("need 0 <= errors <= inferences")
        if not 0 <= self.feedback_correct <= self.feedback_total:
            raise InvalidGateInput("need 0 <= feedback_correct <= feedback_total")
        if len(self.shadow_inputs) != len(self.shadow_agreed):
            raise InvalidGateInput("shadow_inputs and shadow_agreed differ in length")
        if any(
            not 0 <= a <= n for a, n in zip(self.shadow_agreed, self.shadow_inputs, strict=True)
        ):
            raise InvalidGateInput("need 0 <= shadow_agreed <= shadow_inputs per class")
        p95 = self.latency_p95_ms
        if p95 is not None and not (math.isfinite(p95) and p95 > 0.0):
            raise InvalidGateInput("latency_p95_ms must be finite and positive")
        for name in ("prediction_drift", "label_free_accuracy"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and 0.0 <= value <= 1e6):
                raise InvalidGateInput(f"{name} must be finite and >= 0")


NO_METRICS = DeviceMetrics()


@dataclass(frozen=True)
class GateVerdict:
    """One gate's decision at one tick, with everything needed to audit it.

    ``estimate``, ``lower`` and ``upper`` are the harm and its anytime-valid interval in
    the metric's units (a ratio for latency); None when there was not enough data.
    """

    metric: GateMetric
    outcome: Outcome
    estimate: float | None
    lower: float | None
    upper: float | None
    tolerance: float
    effect: float
    alpha: float
    test: str
    canaries: int
    controls: int
    reason: str


@dataclass(frozen=True)
class Columns:
    """Per-device metrics as arrays (one row per device), and each device's stratum."""

    inferences: FloatArray
    errors: FloatArray
    latency: FloatArray
    drift: FloatArray
    accuracy: FloatArray
    feedback_total: FloatArray
    feedback_correct: FloatArray
    strata: IntArray
    baseline: Columns | None = None

    @classmethod
    def of(
        cls, ids: Sequence[str], metrics: Mapping[str, DeviceMetrics], strata: Sequence[int]
    ) -> Columns:
        rows = [metrics.get(i, NO_METRICS) for i in ids]
        return cls.rows(rows, strata)

    @classmethod
    def rows(cls, rows: Sequence[DeviceMetrics], strata: Sequence[int]) -> Columns:
        nan = math.nan
        bases = [m.baseline for m in rows]
        has_base = any(b is not None for b in bases)

        def column(values: list[float]) -> FloatArray:
            return np.asarray(values, dtype=np.float64)

        return cls(
            inferences=column([m.inferences for m in rows]),
            errors=column([m.errors for m in rows]),
            latency=column([nan if m.latency_p95_ms is None else m.latency_p95_ms for m in rows]),
            drift=column([nan if m.prediction_drift is None else m.prediction_drift for m in rows]),
            accuracy=column(
                [nan if m.label_free_accuracy is None else m.label_free_accuracy for m in rows]
            ),
            feedback_total=column([m.feedback_total for m in rows]),
            feedback_correct=column([m.feedback_correct for m in rows]),
            strata=np.asarray(strata, dtype=np.int64).reshape(-1),
            baseline=cls.rows([b or NO_METRICS for b in bases], strata) if has_base else None,
        )


def evaluate_comparative(
    gate: GateSpec, alpha: float, canary: Columns, control: Columns, *, strata_note: str = ""
) -> GateVerdict:
    """Canary against control on one device-level metric (module docstring)."""
    x, x_ok, y, y_ok, paired = _paired(gate, canary, control)
    ratio = gate.metric in RATIO_METRICS
    tolerance = math.log(gate.tolerance) if ratio else gate.tolerance
    effect = math.log(gate.effect) if ratio else gate.effect
    pairing = ", each device against its own baseline" if paired else ""
    test = f"{MIXTURE_TEST}{pairing}{strata_note}, tau={gate.effect:g}"

    def verdict(
        outcome: Outcome, reason: str, est: float | None = None, r: float = 0.0
    ) -> GateVerdict:
        unit = math.exp if ratio else float
        return GateVerdict(
            gate.metric,
            outcome,
            None if est is None else unit(est),
            None if est is None else unit(est - r),
            None if est is None else unit(est + r),
            gate.tolerance,
            gate.effect,
            alpha,
            test,
            int(x_ok.sum()),
            int(y_ok.sum()),
            reason,
        )

    need = _shortfall(gate, int(x_ok.sum()), int(y_ok.sum()))
    if need:
        return verdict("inconclusive", need)
    floor = _binomial_floor(gate, canary, x_ok, control, y_ok)
    diff = stratified_difference(
        x[x_ok], canary.strata[x_ok], y[y_ok], control.strata[y_ok], variance_floor=floor
    )
    if diff is None:
        return verdict("inconclusive", "no control device shares a stratum with the canaries")
    need = _shortfall(gate, diff.canaries, diff.controls, " in shared strata")
    if need:
        return verdict("inconclusive", need)
    harm = -diff.estimate if gate.metric in _HIGHER_IS_BETTER else diff.estimate
    r = normal_mixture_radius(diff.variance, effect, alpha)
    if harm - r > tolerance:
        return verdict("fail", f"harm above the tolerance {gate.tolerance:g}", harm, r)
    if harm + r < effect:
        return verdict("pass", f"a harm of {gate.effect:g} is ruled out", harm, r)
    return verdict("inconclusive", "the interval spans the tolerance or the effect", harm, r)


def no_canaries(
    gate: GateSpec, alpha: float, controls: int, *, strata_note: str = ""
) -> GateVerdict:
    """What :func:`evaluate_comparative` says while no device serves the new version yet
    (without building the control's columns, the bulk of a tick over a large fleet)."""
    return GateVerdict(
        gate.metric,
        "inconclusive",
        None,
        None,
        None,
        gate.tolerance,
        gate.effect,
        alpha,
        f"{MIXTURE_TEST}{strata_note}, tau={gate.effect:g}",
        0,
        controls,
        f"no canary serves the new version yet; need {gate.min_devices}",
    )


def evaluate_update_success(
    gate: GateSpec, alpha: float, *, succeeded: int, failed: int, unresolved: int, census: bool
) -> GateVerdict:
    """Failed share of the updated devices (module docstring). ``census``: every device
    the stage takes has an outcome (or has timed out) and none is left to update."""
    assigned = succeeded + failed + unresolved
    decided = succeeded + failed
    share = failed / decided if decided else None
    evidence = log_evidence_above(failed, assigned, gate.tolerance) if assigned else 0.0

    def verdict(outcome: Outcome, reason: str) -> GateVerdict:
        return GateVerdict(
            "update_success",
            outcome,
            share,
            failed / assigned if assigned else None,
            (failed + unresolved) / assigned if assigned else None,
            gate.tolerance,
            gate.effect,
            alpha,
            f"{BERNOULLI_TEST}; pass: census of the stage within tolerance",
            assigned,
            0,
            reason,
        )

    if evidence >= math.log(1.0 / alpha):
        return verdict("fail", f"{failed} of {assigned} updates failed: above {gate.tolerance:g}")
    if decided < gate.min_devices:
        return verdict(
            "inconclusive", f"{decided} devices with an outcome; need {gate.min_devices}"
        )
    if not census:
        return verdict("inconclusive", f"{unresolved} devices of the stage still updating")
    if share is not None and share > gate.tolerance:
        return verdict("inconclusive", f"{failed} of {decided} failed: above tolerance, no proof")
    return verdict("pass", f"{failed} of {decided} updates failed")


def evaluate_shadow(gate: GateSpec, alpha: float, reports: Sequence[DeviceMetrics]) -> GateVerdict:
    """Per-class disagreement of the shadow model with the served one (module docstring)."""
    usable = [m for m in reports if sum(m.shadow_inputs) >= gate.min_samples]
    width = max((len(m.shadow_inputs) for m in usable), default=0)
    inputs = np.zeros(width, dtype=np.int64)
    agreed = np.zeros(width, dtype=np.int64)
    for m in usable:
        inputs[: len(m.shadow_inputs)] += m.shadow_inputs
        agreed[: len(m.shadow_agreed)] += m.shadow_agreed
    seen = np.flatnonzero(inputs)
    judged = [int(c) for c in seen if inputs[c] >= gate.min_samples]
    rates = {int(c): 1.0 - agreed[c] / inputs[c] for c in seen}
    worst = max((rates[c] for c in judged), default=None)

    def verdict(outcome: Outcome, reason: str) -> GateVerdict:
        return GateVerdict(
            "shadow_agreement",
            outcome,
            worst,
            None,
            None,
            gate.tolerance,
            gate.effect,
            alpha,
            SHADOW_TEST,
            len(usable),
            0,
            reason,
        )

    if len(usable) < gate.min_devices:
        return verdict(
            "inconclusive",
            f"{len(usable)} shadow devices with >= {gate.min_samples} inputs; "
            f"need {gate.min_devices}",
        )
    bar = math.log(len(seen) / alpha)
    for c in map(int, seen):
        n, disagreed = int(inputs[c]), int(inputs[c] - agreed[c])
        if log_evidence_above(disagreed, n, gate.tolerance) >= bar:
            return verdict("fail", f"class {c}: the shadow disagrees on {disagreed} of {n} inputs")
    if not judged:
        return verdict("inconclusive", f"no class with >= {gate.min_samples} inputs yet")
    for c in judged:
        n, disagreed = int(inputs[c]), int(inputs[c] - agreed[c])
        if log_evidence_below(disagreed, n, gate.effect) < bar:
            return verdict("inconclusive", f"class {c}: {disagreed} of {n} disagree; not proven")
    return verdict("pass", f"{len(judged)} classes agree within {gate.effect:g}")


_HIGHER_IS_BETTER = frozenset({"label_free_accuracy", "feedback_accuracy"})
_PROPORTIONS = frozenset({"error_rate", "feedback_accuracy"})


def _paired(
    gate: GateSpec, canary: Columns, control: Columns
) -> tuple[FloatArray, np.ndarray, FloatArray, np.ndarray, bool]:
    """Each device's value (its change since its baseline when both arms have enough
    devices with one), which devices count, and whether the values are paired."""
    x, x_ok = _values(gate, canary)
    y, y_ok = _values(gate, control)
    if canary.baseline is None or control.baseline is None:
        return x, x_ok, y, y_ok, False
    bx, bx_ok = _values(gate, canary.baseline)
    by, by_ok = _values(gate, control.baseline)
    px, py = x_ok & bx_ok, y_ok & by_ok
    if px.sum() < gate.min_devices or py.sum() < gate.min_devices:
        return x, x_ok, y, y_ok, False
    return x - bx, px, y - by, py, True


def _values(gate: GateSpec, c: Columns) -> tuple[FloatArray, np.ndarray]:
    """Each device's value for the gate's metric, and which devices count."""
    enough = c.inferences >= max(gate.min_samples, 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        match gate.metric:
            case "error_rate":
                return c.errors / c.inferences, enough
            case "latency_p95":
                return np.log(c.latency), enough & np.isfinite(c.latency)
            case "prediction_drift":
                return c.drift, enough & np.isfinite(c.drift)
            case "label_free_accuracy":
                return c.accuracy, enough & np.isfinite(c.accuracy)
            case "feedback_accuracy":
                labelled = c.feedback_total >= max(gate.min_samples, 1)
                return c.feedback_correct / c.feedback_total, labelled
    raise InvalidGateInput(f"{gate.metric} is not a comparative gate")


def _binomial_floor(
    gate: GateSpec, canary: Columns, x_ok: np.ndarray, control: Columns, y_ok: np.ndarray
) -> float:
    """For rates: the binomial variance of one typical device's rate, a floor under the
    between-device variance (which can be estimated as 0 when every rate is 0)."""
    if gate.metric not in _PROPORTIONS:
        return 0.0
    if gate.metric == "error_rate":
        hits = canary.errors[x_ok].sum() + control.errors[y_ok].sum()
        trials = np.concatenate([canary.inferences[x_ok], control.inferences[y_ok]])
    else:
        hits = canary.feedback_correct[x_ok].sum() + control.feedback_correct[y_ok].sum()
        trials = np.concatenate([canary.feedback_total[x_ok], control.feedback_total[y_ok]])
    rate = (float(hits) + 0.5) / (float(trials.sum()) + 1.0)
    return rate * (1.0 - rate) / float(trials.mean())


def _shortfall(gate: GateSpec, canaries: int, controls: int, where: str = "") -> str:
    if canaries >= gate.min_devices and controls >= gate.min_devices:
        return ""
    return (
        f"{canaries} canary and {controls} control devices with >= {gate.min_samples} "
        f"samples{where}; need {gate.min_devices} each"
    )
