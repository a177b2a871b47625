"""What an operator asks for when starting a staged rollout, refused on construction if it
cannot run as written.

A :class:`RolloutSpec` names one released model version, the devices it is for
(:class:`Target`), the stages (percentages of the target, each with a bake time, gates and
optional manual approval), an optional shadow stage before anything is served, how many
devices may update at once, the per-device timeout and retries, the seed of the cohort
order, and the false-halt budget ``alpha`` shared by the gates.

Gates compare canaries with a control group of devices that have not been updated yet, so
a stage at 100 % (where no control is left) may only carry the ``update_success`` gate;
its behaviour was judged at the stages before it. The shadow stage carries only
``shadow_agreement``, and no other stage may.

Each gate states two numbers in the metric's own units (see :data:`GATE_DEFAULTS`):
``tolerance``, a harm small enough to accept (the gate fails only on evidence of more),
and ``effect``, the harm it guards against (the gate passes only once a harm this large is
ruled out, and its test is tuned to detect it). docs/rollouts.md explains the statistics.

Round-trip law: ``RolloutSpec.from_json(spec.to_json()) == spec``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from hub.rollouts.errors import InvalidRolloutSpec
from protocol import schema
from protocol.errors import Malformed

GateMetric = Literal[
    "update_success",
    "error_rate",
    "latency_p95",
    "prediction_drift",
    "label_free_accuracy",
    "feedback_accuracy",
    "shadow_agreement",
]
GATE_METRICS: tuple[GateMetric, ...] = get_args(GateMetric)

COMPARATIVE: frozenset[GateMetric] = frozenset(
    {"error_rate", "latency_p95", "prediction_drift", "label_free_accuracy", "feedback_accuracy"}
)
"""Gates that compare canaries with the control group (none can run at 100 %)."""

RATIO_METRICS: frozenset[GateMetric] = frozenset({"latency_p95"})
"""Gates whose tolerance and effect are ratios canary/control (1.2 = 20 % slower)."""

GATE_DEFAULTS: dict[GateMetric, dict[str, float | int]] = {
    # harm = failure fraction of the devices updated (after retries)
    "update_success": {"tolerance": 0.05, "effect": 0.5, "min_devices": 1, "min_samples": 0},
    # harm = canary error rate - control error rate (per inference, device means)
    "error_rate": {"tolerance": 0.01, "effect": 0.05, "min_devices": 5, "min_samples": 50},
    # harm = canary p95 / control p95 (geometric means over devices)
    "latency_p95": {"tolerance": 1.1, "effect": 1.5, "min_devices": 5, "min_samples": 50},
    # harm = canary drift score - control drift score (the drift subsystem's score)
    "prediction_drift": {"tolerance": 0.02, "effect": 0.1, "min_devices": 5, "min_samples": 50},
    # harm = control estimated accuracy - canary estimated accuracy
    "label_free_accuracy": {
        "tolerance": 0.01,
        "effect": 0.05,
        "min_devices": 5,
        "min_samples": 50,
    },
    # harm = control feedback accuracy - canary feedback accuracy (labelled feedback)
    "feedback_accuracy": {"tolerance": 0.01, "effect": 0.05, "min_devices": 5, "min_samples": 20},
    # harm = per-class disagreement of the shadow model with the served one
    "shadow_agreement": {"tolerance": 0.3, "effect": 0.6, "min_devices": 3, "min_samples": 50},
}

MINUTE_MS = 60_000
DEFAULT_BAKE_MS = 10 * MINUTE_MS
DEFAULT_EXTEND_MS = 20 * MINUTE_MS
MAX_STAGES = 16
MAX_TARGET_IDS = 100_000


@dataclass(frozen=True)
class GateSpec:
    """One gate: which metric, the harm it tolerates and the harm it guards against.

    ``min_devices``: devices needed on each side (canary and, for comparative gates,
    control) before the gate can pass or fail. ``min_samples``: observations a device
    needs to count (inferences; labelled feedback; shadow inputs). ``alpha``: this gate's
    share of the false-halt budget; 0 means the spec's ``alpha`` split evenly over its
    distinct gate metrics (:meth:`RolloutSpec.gate_alpha`).
    """

    metric: GateMetric
    tolerance: float
    effect: float
    min_devices: int
    min_samples: int
    alpha: float = 0.0

    def __post_init__(self) -> None:
        if self.metric not in GATE_METRICS:
            raise InvalidRolloutSpec(f"metric must be one of {', '.join(GATE_METRICS)}")
        for name in ("tolerance", "effect", "alpha"):
            if not math.isfinite(getattr(self, name)):
                raise InvalidRolloutSpec(f"{name} must be finite")
        if self.metric in RATIO_METRICS:
            if self.tolerance < 1.0:
                raise InvalidRolloutSpec(f"{self.metric}: tolerance is a ratio >= 1.0")
        elif not 0.0 <= self.tolerance < 1.0:
            raise InvalidRolloutSpec(f"{self.metric}: tolerance must be in [0, 1)")
        if self.metric != "update_success" and not self.effect > self.tolerance:
            raise InvalidRolloutSpec(f"{self.metric}: effect must exceed tolerance")
        if self.metric not in RATIO_METRICS and self.effect > 1.0:
            raise InvalidRolloutSpec(f"{self.metric}: effect must be at most 1")
        if not 1 <= self.min_devices <= 1_000_000:
            raise InvalidRolloutSpec("min_devices must be in [1, 1000000]")
        if not 0 <= self.min_samples <= 1_000_000_000:
            raise InvalidRolloutSpec("min_samples must be in [0, 1e9]")
        if not 0.0 <= self.alpha <= 0.5:
            raise InvalidRolloutSpec("alpha must be in [0, 0.5] (0: the spec's share)")

    @classmethod
    def default(cls, metric: GateMetric, **overrides: Any) -> GateSpec:
        """The gate with :data:`GATE_DEFAULTS` for ``metric``, ``overrides`` on top.

        Raises:
            InvalidRolloutSpec: an unknown metric, or overrides that do not validate.
        """
        if metric not in GATE_DEFAULTS:
            raise InvalidRolloutSpec(f"metric must be one of {', '.join(GATE_METRICS)}")
        return cls(metric=metric, **{**GATE_DEFAULTS[metric], **overrides})


def _default_gates() -> tuple[GateSpec, ...]:
    return tuple(GateSpec.default(m) for m in ("update_success", "error_rate", "latency_p95"))


@dataclass(frozen=True)
class Stage:
    """One step of the rollout: ``percent`` of the target (cumulative), watched for
    ``bake_ms`` once its devices have updated, then up to ``extend_ms`` longer while a
    gate is inconclusive; ``approval``: a human approves before this stage starts."""

    percent: float
    bake_ms: int = DEFAULT_BAKE_MS
    extend_ms: int = DEFAULT_EXTEND_MS
    gates: tuple[GateSpec, ...] = field(default_factory=_default_gates)
    approval: bool = False

    def __post_init__(self) -> None:
        if not (math.isfinite(self.percent) and 0.0 < self.percent <= 100.0):
            raise InvalidRolloutSpec("percent must be in (0, 100]")
        _check_durations(self.bake_ms, self.extend_ms)
        _check_gates(self.gates)
        metrics = {g.metric for g in self.gates}
        if "shadow_agreement" in metrics:
            raise InvalidRolloutSpec("shadow_agreement gates belong to the shadow stage")
        if self.percent == 100.0 and metrics & COMPARATIVE:
            raise InvalidRolloutSpec(
                f"a stage at 100% leaves no control group for {sorted(metrics & COMPARATIVE)}"
            )


@dataclass(frozen=True)
class ShadowStage:
    """Before anything is served: ``percent`` of the target runs the new version beside
    the active one on sampled inputs and reports how often the two agree, per class."""

    percent: float = 10.0
    bake_ms: int = DEFAULT_BAKE_MS
    extend_ms: int = DEFAULT_EXTEND_MS
    gates: tuple[GateSpec, ...] = (GateSpec.default("shadow_agreement"),)

    def __post_init__(self) -> None:
        if not (math.isfinite(self.percent) and 0.0 < self.percent <= 100.0):
            raise InvalidRolloutSpec("percent must be in (0, 100]")
        _check_durations(self.bake_ms, self.extend_ms)
        _check_gates(self.gates)
        if not self.gates or any(g.metric != "shadow_agreement" for g in self.gates):
            raise InvalidRolloutSpec("the shadow stage carries shadow_agreement gates only")


@dataclass(frozen=True)
class Target:
    """Which devices the rollout is for: all whose tags include every ``tags`` pair, or
    exactly ``device_ids``, or (both empty) every active device."""

    tags: dict[str, str] = field(default_factory=dict)
    device_ids: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.tags and self.device_ids:
            raise InvalidRolloutSpec("target names tags or device ids, not both")
        _check_tags(self.tags, "target tag")
        if len(self.device_ids) > MAX_TARGET_IDS:
            raise InvalidRolloutSpec(f"more than {MAX_TARGET_IDS} device ids")
        if len(set(self.device_ids)) != len(self.device_ids):
            raise InvalidRolloutSpec("device_ids repeat a device")
        for device_id in self.device_ids:
            _name(device_id, "device id")

    def matches(self, device_id: str, tags: Mapping[str, str]) -> bool:
        if self.device_ids:
            return device_id in self._ids
        return all(tags.get(k) == v for k, v in self.tags.items())

    @property
    def _ids(self) -> frozenset[str]:
        cached: frozenset[str] | None = self.__dict__.get("_ids_cache")
        if cached is None:
            cached = frozenset(self.device_ids)
            object.__setattr__(self, "_ids_cache", cached)
        return cached


def _default_stages() -> tuple[Stage, ...]:
    return (Stage(1.0), Stage(10.0), Stage(50.0), Stage(100.0, gates=_final_gates()))


def _final_gates() -> tuple[GateSpec, ...]:
    return (GateSpec.default("update_success"),)


@dataclass(frozen=True)
class RolloutSpec:
    """A staged rollout of ``model`` v``version`` (module docstring)."""

    model: str
    version: int
    target: Target = field(default_factory=Target)
    stages: tuple[Stage, ...] = field(default_factory=_default_stages)
    shadow: ShadowStage | None = None
    max_updating: int = 50
    device_timeout_ms: int = 30 * MINUTE_MS
    retries: int = 2
    seed: int = 0
    canary_tags: dict[str, str] = field(default_factory=dict)
    stratify_by: tuple[str, ...] = ()
    alpha: float = 0.05

    def __post_init__(self) -> None:
        _name(self.model, "model")
        if not 1 <= self.version <= schema.INT64_MAX:
            raise InvalidRolloutSpec("version must be >= 1")
        if not 1 <= len(self.stages) <= MAX_STAGES:
            raise InvalidRolloutSpec(f"stages: between 1 and {MAX_STAGES}")
        percents = [s.percent for s in self.stages]
        if any(b <= a for a, b in itertools.pairwise(percents)):
            raise InvalidRolloutSpec("stages: percentages must increase")
        if percents[-1] != 100.0:
            raise InvalidRolloutSpec("stages: the last stage must take 100% of the target")
        if not 1 <= self.max_updating <= 1_000_000:
            raise InvalidRolloutSpec("max_updating must be in [1, 1000000]")
        if not 1000 <= self.device_timeout_ms <= 30 * 24 * 60 * MINUTE_MS:
            raise InvalidRolloutSpec("device_timeout_ms must be in [1 s, 30 days]")
        if not 0 <= self.retries <= 10:
            raise InvalidRolloutSpec("retries must be in [0, 10]")
        if not 0 <= self.seed <= schema.INT64_MAX:
            raise InvalidRolloutSpec("seed must be in [0, 2**63)")
        _check_tags(self.canary_tags, "canary tag")
        for key in self.stratify_by:
            _name(key, "stratify_by tag key")
        if len(set(self.stratify_by)) != len(self.stratify_by) or len(self.stratify_by) > 4:
            raise InvalidRolloutSpec("stratify_by: at most 4 distinct tag keys")
        if not (math.isfinite(self.alpha) and 0.0 < self.alpha <= 0.5):
            raise InvalidRolloutSpec("alpha must be in (0, 0.5]")

    def gate_alpha(self, gate: GateSpec) -> float:
        """The gate's own alpha, or the spec's alpha split evenly (Bonferroni) over the
        distinct gate metrics of the whole rollout: a metric is one sequential test across
        every stage (its canary set only grows), so the budget is split by metric, not by
        stage, and no more than ``alpha`` of good rollouts is halted by all gates together."""
        if gate.alpha > 0.0:
            return gate.alpha
        return self.alpha / len(self.metrics)

    @property
    def metrics(self) -> frozenset[GateMetric]:
        """Every gate metric the rollout evaluates, shadow stage included."""
        stages: tuple[Stage | ShadowStage, ...] = self.stages
        if self.shadow is not None:
            stages = (self.shadow, *stages)
        return frozenset(g.metric for s in stages for g in s.gates)

    def to_json(self) -> dict[str, Any]:
        value: dict[str, Any] = schema.to_json(self)
        return value

    @classmethod
    def from_json(cls, value: Any) -> RolloutSpec:
        """Build a spec from JSON values (a REST body, a stored row). A gate may give just
        its ``metric``: missing numbers take :data:`GATE_DEFAULTS`.

        Raises:
            InvalidRolloutSpec: anything wrong, the message starting with its JSON path.
        """
        try:
            return schema.from_json(cls, _fill_gate_defaults(value), path="spec")
        except Malformed as e:
            raise InvalidRolloutSpec(str(e)) from e


def _fill_gate_defaults(value: Any) -> Any:
    """A copy of the spec JSON with each gate's missing numbers taken from the defaults."""
    if not isinstance(value, dict):
        return value
    value = dict(value)
    for key in ("stages", "shadow"):
        stages = value.get(key)
        items = stages if isinstance(stages, list) else [stages]
        filled = [_fill_stage(s) for s in items]
        if key in value:
            value[key] = filled if isinstance(stages, list) else filled[0]
    return value


def _fill_stage(stage: Any) -> Any:
    if not isinstance(stage, dict) or not isinstance(stage.get("gates"), list):
        return stage
    gates = [
        {**GATE_DEFAULTS[g["metric"]], **g}
        if isinstance(g, dict) and g.get("metric") in GATE_DEFAULTS
        else g
        for g in stage["gates"]
    ]
    return {**stage, "gates": gates}


def _check_durations(bake_ms: int, extend_ms: int) -> None:
    week = 7 * 24 * 60 * MINUTE_MS
    if not 0 <= bake_ms <= week:
        raise InvalidRolloutSpec("bake_ms must be in [0, 7 days]")
    if not 0 <= extend_ms <= week:
        raise InvalidRolloutSpec("extend_ms must be in [0, 7 days]")


def _check_gates(gates: tuple[GateSpec, ...]) -> None:
    metrics = [g.metric for g in gates]
    if len(set(metrics)) != len(metrics):
        raise InvalidRolloutSpec("a stage lists one gate per metric")


def _check_tags(tags: dict[str, str], what: str) -> None:
    if len(tags) > 32:
        raise InvalidRolloutSpec(f"more than 32 {what}s")
    for key, value in tags.items():
        _name(key, f"{what} key")
        if not isinstance(value, str) or len(value) > 128:
            raise InvalidRolloutSpec(f"{what} {key!r}: value must be a string of <= 128")


def _name(value: str, what: str) -> None:
    try:
        schema.check_name(value, what)
    except Malformed as e:
        raise InvalidRolloutSpec(str(e)) from e
