"""The rollout spec: defaults, refusals with the field named, the JSON round trip."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hub.rollouts import GateSpec, InvalidRolloutSpec, RolloutSpec, ShadowStage, Stage, Target
from hub.rollouts.spec import GATE_METRICS


def test_default_spec_is_1_10_50_100_with_only_update_success_at_100() -> None:
    spec = RolloutSpec("churn", 3)
    assert [s.percent for s in spec.stages] == [1.0, 10.0, 50.0, 100.0]
    assert [g.metric for g in spec.stages[0].gates] == [
        "update_success",
        "error_rate",
        "latency_p95",
    ]
    assert [g.metric for g in spec.stages[-1].gates] == ["update_success"]
    assert spec.shadow is None
    assert spec.target == Target()


def test_alpha_is_split_over_the_distinct_gate_metrics() -> None:
    spec = RolloutSpec("churn", 3, alpha=0.06)
    assert spec.metrics == {"update_success", "error_rate", "latency_p95"}
    assert spec.gate_alpha(spec.stages[0].gates[1]) == pytest.approx(0.02)
    own = GateSpec.default("error_rate", alpha=0.01)
    assert spec.gate_alpha(own) == 0.01


def _stage(**kw: Any) -> Any:
    return lambda: Stage(**kw)


REFUSED = [
    pytest.param(lambda: RolloutSpec("Churn!", 1), "model", id="bad-model-name"),
    pytest.param(lambda: RolloutSpec("m", 0), "version", id="version-zero"),
    pytest.param(lambda: RolloutSpec("m", 1, stages=()), "stages", id="no-stages"),
    pytest.param(
        lambda: RolloutSpec("m", 1, stages=(Stage(50.0), Stage(10.0))), "increase", id="unordered"
    ),
    pytest.param(lambda: RolloutSpec("m", 1, stages=(Stage(50.0),)), "100%", id="never-100"),
    pytest.param(_stage(percent=100.0), "no control group", id="comparative-gate-at-100"),
    pytest.param(_stage(percent=0.0), "percent", id="zero-percent"),
    pytest.param(_stage(percent=10.0, bake_ms=-1), "bake_ms", id="negative-bake"),
    pytest.param(
        _stage(percent=10.0, gates=(GateSpec.default("shadow_agreement"),)),
        "shadow stage",
        id="shadow-gate-on-serving-stage",
    ),
    pytest.param(
        lambda: ShadowStage(gates=(GateSpec.default("error_rate"),)),
        "shadow_agreement gates only",
        id="serving-gate-on-shadow-stage",
    ),
    pytest.param(
        _stage(percent=10.0, gates=(GateSpec.default("error_rate"),) * 2),
        "one gate per metric",
        id="repeated-gate",
    ),
    pytest.param(
        lambda: GateSpec.default("error_rate", effect=0.01, tolerance=0.02), "exceed", id="effect"
    ),
    pytest.param(lambda: GateSpec.default("latency_p95", tolerance=0.9), "ratio", id="ratio<1"),
    pytest.param(lambda: GateSpec.default("error_rate", min_devices=0), "min_devices", id="min0"),
    pytest.param(lambda: GateSpec.default("nope"), "metric", id="unknown-metric"),  # type: ignore[arg-type]
    pytest.param(
        lambda: Target(tags={"site": "a"}, device_ids=("d1",)), "not both", id="tags-and-ids"
    ),
    pytest.param(lambda: Target(device_ids=("d1", "d1")), "repeat", id="repeated-id"),
    pytest.param(lambda: RolloutSpec("m", 1, alpha=0.0), "alpha", id="alpha-zero"),
    pytest.param(lambda: RolloutSpec("m", 1, max_updating=0), "max_updating", id="no-parallel"),
    pytest.param(lambda: RolloutSpec("m", 1, retries=11), "retries", id="too-many-retries"),
    pytest.param(lambda: RolloutSpec("m", 1, stratify_by=("a", "a")), "stratify_by", id="strata"),
    pytest.param(lambda: RolloutSpec("m", 1, canary_tags={"Ring": "x"}), "canary", id="canary"),
]


@pytest.mark.parametrize(("build", "named"), REFUSED)
def test_spec_refuses_what_cannot_run_and_names_the_field(build: Any, named: str) -> None:
    with pytest.raises(InvalidRolloutSpec, match=named) as caught:
        build()
    assert caught.value.status_hint == 422


def test_from_json_fills_gate_defaults_from_the_metric_alone() -> None:
    spec = RolloutSpec.from_json(
        {
            "model": "churn",
            "version": 4,
            "stages": [
                {"percent": 10, "gates": [{"metric": "error_rate", "effect": 0.05}]},
                {"percent": 100, "gates": [{"metric": "update_success"}], "approval": True},
            ],
            "shadow": {"percent": 5, "gates": [{"metric": "shadow_agreement"}]},
        }
    )
    assert spec.stages[0].gates == (GateSpec.default("error_rate", effect=0.05),)
    assert spec.stages[1].approval
    assert spec.shadow == ShadowStage(5.0)


@pytest.mark.parametrize(
    ("body", "path"),
    [
        pytest.param({"model": "m"}, "missing field 'version'", id="missing"),
        pytest.param({"model": "m", "version": 1, "speed": 2}, "unknown field", id="unknown"),
        pytest.param(
            {"model": "m", "version": 1, "stages": [{"percent": 100, "gates": "x"}]},
            r"spec\.stages\[0\]\.gates",
            id="mistyped",
        ),
        pytest.param(
            {"model": "m", "version": 1, "stages": [{"percent": 10}]},
            r"spec: stages: the last stage",
            id="rule",
        ),
    ],
)
def test_from_json_refusal_names_the_json_path(body: dict[str, Any], path: str) -> None:
    with pytest.raises(InvalidRolloutSpec, match=path):
        RolloutSpec.from_json(body)


gates = st.builds(
    GateSpec.default,
    st.sampled_from(["update_success", "error_rate", "prediction_drift", "feedback_accuracy"]),
    min_devices=st.integers(1, 50),
    min_samples=st.integers(0, 500),
)


@st.composite
def specs(draw: st.DrawFn) -> RolloutSpec:
    percents = sorted(set(draw(st.lists(st.floats(0.5, 99.0), max_size=4))))
    body = [
        Stage(p, bake_ms=draw(st.integers(0, 10**7)), gates=(draw(gates),))
        if draw(st.booleans())
        else Stage(p)
        for p in percents
    ]
    final = Stage(100.0, gates=(GateSpec.default("update_success"),), approval=draw(st.booleans()))
    return RolloutSpec(
        draw(st.from_regex(r"[a-z][a-z0-9-]{0,20}", fullmatch=True)),
        draw(st.integers(1, 10**6)),
        target=draw(
            st.one_of(
                st.just(Target()),
                st.builds(
                    Target,
                    tags=st.dictionaries(st.sampled_from(["site", "hw"]), st.text(max_size=5)),
                ),
                st.builds(
                    Target,
                    device_ids=st.lists(
                        st.from_regex(r"d[0-9]{1,4}", fullmatch=True), unique=True
                    ).map(tuple),
                ),
            )
        ),
        stages=(*body, final),
        shadow=draw(st.one_of(st.none(), st.builds(ShadowStage, st.floats(0.5, 100.0)))),
        seed=draw(st.integers(0, 2**63 - 1)),
        stratify_by=draw(st.lists(st.sampled_from(["site", "hw"]), unique=True).map(tuple)),
    )


@given(specs())
def test_spec_json_round_trip(spec: RolloutSpec) -> None:
    assert RolloutSpec.from_json(spec.to_json()) == spec


def test_every_metric_has_defaults_that_validate() -> None:
    for metric in GATE_METRICS:
        assert GateSpec.default(metric).metric == metric
