"""Scenarios as data: a TOML file says what the story runs (docs/simulator.md, *Scenarios*).

A scenario names the fleet's cohorts, the data stream, the drift that hits one cohort, the
hub's time scales and the staged rollout of the round's candidate. The built-in ones ship
in the package (``simulator/scenarios/*.toml``); a user's file has the same schema::

    scenario = load("full-loop")            # a built-in, by name
    scenario = load("my-fleet.toml")        # or a file
    scenario.cohorts[0].tag, scenario.drift.features, scenario.rollout[0].percent

Every field has the full-loop value as its default, so a file states only what it changes.
Unknown keys and values out of range raise :class:`ScenarioError` naming the field: a typo
must not silently fall back to a default.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any

from hub.rounds.aggregate import PRESETS
from protocol.errors import EdgefleetError

GATES = ("update_success", "error_rate", "latency_p95")
STORIES = ("full-loop", "bad-model-rollout", "steady", "rollout", "drift")
"""What happens after the steady start: the drift's alert opens a round whose candidate rolls
out (``full-loop``); the operator rolls out a v2 that fails on the drifted readings and must
be rolled back (``bad-model-rollout``); nothing, for ``duration_s`` (``steady``); the operator
rolls out a better v2 while faults hit and devices go offline (``rollout``); one cohort
drifts and the hub must alert on it, with no round (``drift``)."""
DRIFT_KINDS = ("covariate", "concept")
FAULTS = (
    "disconnect-storm", "broker-restart", "agent-crash", "garbage-frames", "clock-skew",
    "corrupted-chunk",
)  # fmt: skip
"""What :mod:`simulator.faults` can do to a running fleet (docs/simulator.md, *Faults*)."""


class ScenarioError(EdgefleetError):
    """A scenario that cannot be run: no such name or file, bad TOML, or a bad field."""

    reason = "invalid_scenario"


@dataclass(frozen=True)
class Cohort:
    """Devices enrolled with a token carrying ``tag=value``; ``share`` of the fleet."""

    value: str
    share: float
    tag: str = "region"


@dataclass(frozen=True)
class Data:
    """Each device classifies ``rows_per_s`` readings a second; ``label_share`` of them get
    their true class later (``features`` sensors, ``classes`` classes, ``noise`` random labels)."""

    features: int = 10
    classes: int = 3
    rows_per_s: int = 40
    label_share: float = 0.5
    noise: float = 0.03
    seed: int = 0
    tick_s: float = 1.0


@dataclass(frozen=True)
class Agent:
    """What the hub's desired config tells every agent: data windows every ``window_s``,
    telemetry every ``telemetry_s``, local retraining on labelled feedback (``retrain``);
    and two of the agents' own settings: how often the outbox looks for frames to resend
    (``drain_interval_s``) and the learning loop for new labels (``retrain_interval_s``),
    short for the demo's pace, the agent's defaults for a large steady fleet."""

    window_s: float = 2.0
    telemetry_s: float = 5.0
    retrain: bool = True
    drain_interval_s: float = 0.1
    retrain_interval_s: float = 1.0


@dataclass(frozen=True)
class Drift:
    """``covariate`` drift: in ``cohort``, ``features`` (indices) go from standard deviation
    ``quiet_sd`` (what v1 was trained on: it ignores them) to ``sd``, ``after_s`` seconds
    into the traffic (the ``rollout`` story starts its rollout then). ``concept`` drift:
    the readings stay as they were and the cohort's labels move (every class becomes the
    next one), which only labelled feedback shows."""

    kind: str = "covariate"
    cohort: str = "eu"
    features: tuple[int, ...] = (8, 9)
    quiet_sd: float = 0.2
    sd: float = 2.5
    after_s: float = 8.0


@dataclass(frozen=True)
class Attack:
    """Label flipping: ``label_flip_share`` of the drifted cohort's devices get every label
    as the next class (``(y + 1) % classes``), so their honest agents train, and send, a
    poisoned delta through the real code path."""

    label_flip_share: float = 0.0


@dataclass(frozen=True)
class Hub:
    """The hub's time scales for this run (real settings, shrunk) and the round's
    aggregation strategy (a preset of :data:`hub.rounds.aggregate.PRESETS`)."""

    bucket_s: float = 4.0
    round_deadline_s: float = 20.0
    recover_s: float = 8.0
    round_strategy: str = "default"


@dataclass(frozen=True)
class Offline:
    """In the ``rollout`` story, ``share`` of the fleet's agents stop just before the
    rollout starts and start again ``down_s`` seconds later, from their state directories."""

    share: float = 0.0
    down_s: float = 10.0


@dataclass(frozen=True)
class Fault:
    """One scripted fault, ``at`` seconds after the traffic starts (:data:`FAULTS`):
    ``share`` of the devices (at least one) is hit; ``down_s``: how long a broker or an
    agent stays down; ``frames``: garbage frames per device hit; ``skew_s``: the clock
    offset of a restarted device; ``repeat``/``every_s``: a storm of several cuts."""

    at: float
    kind: str
    share: float = 0.2
    down_s: float = 2.0
    frames: int = 5
    skew_s: float = 120.0
    repeat: int = 1
    every_s: float = 3.0


@dataclass(frozen=True)
class Stage:
    percent: float
    bake_s: float = 2.0
    gates: tuple[str, ...] = ("update_success",)


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str = ""
    story: str = "full-loop"
    devices: int = 50
    duration_s: float = 30.0
    cohorts: tuple[Cohort, ...] = (Cohort("eu", 0.3), Cohort("us", 0.7))
    data: Data = field(default_factory=Data)
    agent: Agent = field(default_factory=Agent)
    drift: Drift = field(default_factory=Drift)
    attack: Attack = field(default_factory=Attack)
    hub: Hub = field(default_factory=Hub)
    rollout: tuple[Stage, ...] = (Stage(10), Stage(50), Stage(100, bake_s=0))
    offline: Offline = field(default_factory=Offline)
    faults: tuple[Fault, ...] = ()

    def counts(self, devices: int) -> dict[str, int]:
        """Devices per cohort value for a fleet of ``devices`` (each cohort at least one)."""
        counts = {c.value: max(1, round(devices * c.share)) for c in self.cohorts[:-1]}
        counts[self.cohorts[-1].value] = devices - sum(counts.values())
        return counts


def builtin_names() -> list[str]:
    folder = resources.files("simulator") / "scenarios"
    return sorted(
        p.name.removesuffix(".toml") for p in folder.iterdir() if p.name.endswith(".toml")
    )


def load(name_or_path: str) -> Scenario:
    """A built-in scenario by name, or a TOML file by path.

    Raises:
        ScenarioError: unknown name, unreadable file, bad TOML or a bad field.
    """
    if name_or_path.endswith(".toml"):
        try:
            text = Path(name_or_path).read_text()
        except OSError as e:
            raise ScenarioError(f"cannot read scenario {name_or_path}: {e.strerror}") from e
    else:
        found = resources.files("simulator") / "scenarios" / f"{name_or_path}.toml"
        if not found.is_file():
            raise ScenarioError(
                f"no built-in scenario {name_or_path!r}; built in: {', '.join(builtin_names())}"
                " (or give a FILE.toml)"
            )
        text = found.read_text()
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ScenarioError(f"{name_or_path}: not valid TOML: {e}") from e
    return parse(raw)


def parse(raw: dict[str, Any]) -> Scenario:
    """Raises: ScenarioError naming the field."""
    _known(raw, Scenario, "")
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        raise ScenarioError("name: a scenario needs a name")
    cohorts = tuple(
        _build(Cohort, c, f"cohorts[{i}]") for i, c in enumerate(raw.get("cohorts", []))
    )
    stages = tuple(_build(Stage, s, f"rollout[{i}]") for i, s in enumerate(raw.get("rollout", [])))
    faults = tuple(_build(Fault, f, f"faults[{i}]") for i, f in enumerate(raw.get("faults", [])))
    scenario = Scenario(
        name=name,
        description=_typed(raw.get("description", ""), str, "description"),
        story=_typed(raw.get("story", "full-loop"), str, "story"),
        devices=_typed(raw.get("devices", 50), int, "devices"),
        duration_s=float(_typed(raw.get("duration_s", 30.0), (int, float), "duration_s")),
        cohorts=cohorts or Scenario.cohorts,
        data=_build(Data, raw.get("data", {}), "data"),
        agent=_build(Agent, raw.get("agent", {}), "agent"),
        drift=_build(Drift, raw.get("drift", {}), "drift"),
        attack=_build(Attack, raw.get("attack", {}), "attack"),
        hub=_build(Hub, raw.get("hub", {}), "hub"),
        rollout=stages or Scenario.rollout,
        offline=_build(Offline, raw.get("offline", {}), "offline"),
        faults=faults,
    )
    _check(scenario)
    return scenario


def _check(s: Scenario) -> None:
    if s.story not in STORIES:
        raise ScenarioError(f"story: {s.story!r} is not one of {', '.join(STORIES)}")
    if s.devices < len(s.cohorts):
        raise ScenarioError(f"devices: {s.devices} cannot fill {len(s.cohorts)} cohorts")
    if len(s.cohorts) < 2 or abs(sum(c.share for c in s.cohorts) - 1.0) > 1e-6:
        raise ScenarioError("cohorts: at least two, whose shares add up to 1")
    if s.drift.cohort not in {c.value for c in s.cohorts}:
        raise ScenarioError(f"drift.cohort: {s.drift.cohort!r} is not a cohort's value")
    if s.data.features < 10 or s.data.classes < 2:
        raise ScenarioError("data: at least 10 features and 2 classes")
    if not s.drift.features or not all(0 <= f < s.data.features for f in s.drift.features):
        raise ScenarioError(f"drift.features: indices below data.features ({s.data.features})")
    if not 0.0 < s.data.label_share <= 1.0 or not 0.0 <= s.data.noise < 1.0:
        raise ScenarioError("data: label_share in (0, 1], noise in [0, 1)")
    if not 0.0 <= s.attack.label_flip_share <= 1.0:
        raise ScenarioError("attack.label_flip_share: in [0, 1]")
    if s.drift.kind not in DRIFT_KINDS:
        raise ScenarioError(f"drift.kind: one of {', '.join(DRIFT_KINDS)}")
    if not 0.0 <= s.offline.share < 1.0:
        raise ScenarioError("offline.share: in [0, 1)")
    for i, fault in enumerate(s.faults):
        if fault.kind not in FAULTS:
            raise ScenarioError(f"faults[{i}].kind: one of {', '.join(FAULTS)}")
        if fault.at < 0 or not 0.0 < fault.share <= 1.0 or fault.repeat < 1:
            raise ScenarioError(f"faults[{i}]: at >= 0, share in (0, 1], repeat >= 1")
    if s.hub.round_strategy not in PRESETS:
        raise ScenarioError(f"hub.round_strategy: one of {', '.join(sorted(PRESETS))}")
    percents = [stage.percent for stage in s.rollout]
    if len(percents) < 1 or percents != sorted(set(percents)) or percents[-1] != 100:
        raise ScenarioError("rollout: stage percents increase and the last is 100")
    for i, stage in enumerate(s.rollout):
        unknown = set(stage.gates) - set(GATES)
        if unknown:
            raise ScenarioError(f"rollout[{i}].gates: {sorted(unknown)} not among {GATES}")
    for name, value in [("data.rows_per_s", s.data.rows_per_s), ("hub.bucket_s", s.hub.bucket_s),
                        ("hub.round_deadline_s", s.hub.round_deadline_s),
                        ("duration_s", s.duration_s), ("data.tick_s", s.data.tick_s),
                        ("agent.window_s", s.agent.window_s)]:  # fmt: skip
        if value <= 0:
            raise ScenarioError(f"{name}: must be above 0")


def _known(raw: object, cls: type, path: str) -> None:
    if not isinstance(raw, dict):
        raise ScenarioError(f"{path or 'scenario'}: expected a table")
    allowed = {f.name for f in fields(cls)}
    unknown = sorted(set(raw) - allowed)
    if unknown:
        where = f"{path}." if path else ""
        raise ScenarioError(
            f"{where}{unknown[0]}: unknown key (known: {', '.join(sorted(allowed))})"
        )


def _build(cls: type, raw: object, path: str) -> Any:
    _known(raw, cls, path)
    assert isinstance(raw, dict)
    values = {}
    for spec in fields(cls):
        if spec.name not in raw:
            continue
        value = raw[spec.name]
        want = str(spec.type)
        if want.startswith("tuple"):
            if not isinstance(value, list):
                raise ScenarioError(f"{path}.{spec.name}: expected a list")
            value = tuple(value)
        elif want == "float":
            value = _typed(value, (int, float), f"{path}.{spec.name}")
            value = float(value)
        else:
            kind = {"int": int, "str": str, "bool": bool}[want]
            value = _typed(value, kind, f"{path}.{spec.name}", bools=kind is bool)
        values[spec.name] = value
    try:
        return cls(**values)
    except TypeError as e:  # a required field missing
        raise ScenarioError(f"{path}: {e}") from e


def _typed(value: Any, kind: type | tuple[type, ...], path: str, *, bools: bool = False) -> Any:
    if (isinstance(value, bool) and not bools) or not isinstance(value, kind):
        raise ScenarioError(f"{path}: expected {getattr(kind, '__name__', 'a number')}")
    return value
