"""The acceptance numbers of federated rounds, in pure simulation (``pytest -s`` prints them).

30 devices on non-IID, shifted slices of the synthetic task train their head with the
agent's own trainer; the hub side is the real screening and aggregation
(:mod:`tests.hub.rounds.fedsim`). Transport, store and clock are left out: the next
phase repeats these with real agents on a real broker.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from hub.rounds.aggregate import PRESETS, Strategy
from hub.rounds.buffered import BufferPolicy
from tests.hub.rounds.fedruns import (
    RunResult,
    central_ridge,
    exact_head,
    run_buffered,
    run_rounds,
    run_topk,
)
from tests.hub.rounds.fedsim import (
    ATTACKS,
    Fleet,
    first_attackers,
    own_sign_flip,
    plain_fedavg,
    points,
    robust_hub,
)

ROUNDS = 20
POINT = 0.01


@pytest.fixture(scope="module")
def fleet() -> Fleet:
    return Fleet.build(seed=0)


@pytest.fixture(scope="module")
def clean(fleet: Fleet) -> RunResult:
    """Every candidate becomes the next version: the aggregation alone."""
    return run_rounds(fleet, robust_hub(PRESETS["default"]), rounds=ROUNDS)


@pytest.fixture(scope="module")
def clean_fedavg(fleet: Fleet) -> RunResult:
    return run_rounds(fleet, plain_fedavg, rounds=ROUNDS, max_norm=math.inf)


def test_the_released_candidate_beats_the_base_and_nears_the_central_head(
    fleet: Fleet, clean: RunResult
) -> None:
    """With the release rule (a candidate must beat its parent on the hub's own set), as
    the hub runs; ungated, the aggregate drifts around its plateau (printed too)."""
    gated = run_rounds(fleet, robust_hub(PRESETS["default"]), rounds=ROUNDS, gate=True)
    base, central = fleet.accuracy(fleet.base), fleet.accuracy(fleet.central())
    print(
        f"\n30 devices, {ROUNDS} rounds, default strategy: base {points(base)}, released "
        f"{points(gated.final)} ({gated.released} of {ROUNDS} candidates passed), central "
        f"{points(central)}; every candidate applied: {points(clean.final)} (by round: "
        f"{' '.join(points(a).strip() for a in clean.accuracies[::4])})"
    )
    assert gated.final >= base + 5 * POINT
    assert gated.final >= central - 2 * POINT
    assert clean.final >= base + 5 * POINT


@pytest.mark.parametrize("attack", list(ATTACKS))
def test_the_default_holds_under_poisoning_while_plain_fedavg_degrades(
    fleet: Fleet, clean: RunResult, clean_fedavg: RunResult, attack: str
) -> None:
    attackers = first_attackers(len(fleet.devices))
    hit = run_rounds(
        fleet, robust_hub(PRESETS["default"]), rounds=ROUNDS,
        attackers=attackers, attack=ATTACKS[attack],
    )  # fmt: skip
    fedavg = run_rounds(
        fleet, plain_fedavg, rounds=ROUNDS, attackers=attackers,
        attack=ATTACKS[attack], max_norm=math.inf,
    )  # fmt: skip
    print(
        f"\n{attack}, 6 of 30 devices: default {points(hit.final)} (clean "
        f"{points(clean.final)}; refused {dict(hit.refused)}), plain FedAvg "
        f"{points(fedavg.final)} (clean {points(clean_fedavg.final)})"
    )
    assert hit.final >= clean.final - 2 * POINT
    assert fedavg.final <= clean_fedavg.final - 2 * POINT
    if attack == "scaled_50x":
        assert hit.refused == {"norm_exceeded": len(attackers) * ROUNDS}


@pytest.mark.slow
def test_own_delta_sign_flips_cost_every_rule_a_few_points(fleet: Fleet, clean: RunResult) -> None:
    """The hard case: each attacker sends its own delta reversed, which looks like any
    other non-IID delta. No rule here can tell it apart; the numbers go in docs/rounds.md."""
    attackers = first_attackers(len(fleet.devices))
    rules = {
        "default": robust_hub(PRESETS["default"]),
        "median": robust_hub(Strategy(combiner="median")),
        "trimmed mean": robust_hub(Strategy(combiner="trimmed_mean")),
        "plain FedAvg": plain_fedavg,
    }
    finals = {
        name: run_rounds(
            fleet, hub, rounds=ROUNDS, attackers=attackers, attack=own_sign_flip,
            max_norm=math.inf if name == "plain FedAvg" else 10.0,
        ).final
        for name, hub in rules.items()
    }  # fmt: skip
    print(
        f"\nown sign flip, 6 of 30 devices (clean {points(clean.final)}): "
        + ", ".join(f"{name} {points(acc)}" for name, acc in finals.items())
    )
    assert finals["default"] >= clean.final - 3 * POINT


def test_buffered_mode_with_stale_devices_nears_synchronous_rounds(
    fleet: Fleet, clean: RunResult
) -> None:
    result = run_buffered(
        fleet, PRESETS["default"], deltas=ROUNDS * len(fleet.devices),
        buffer=BufferPolicy(size=10, max_staleness=3), probe_every=40,
    )  # fmt: skip
    print(
        f"\nbuffered (K=10, devices 0-3 versions behind): {points(result.accuracy)} at "
        f"v{result.version}, synchronous {points(clean.final)}; screening said "
        f"{dict(result.reasons)} to probes {dict(result.probes)}"
    )
    assert result.accuracy >= clean.final - 2 * POINT
    # every probe was refused (run_buffered asserts it); a replay sent after its delta's
    # base fell behind is refused as too_stale, which screening checks first
    refused = result.reasons["too_stale"] + result.reasons["replayed"]
    assert refused == sum(result.probes.values())
    assert result.reasons["too_stale"] >= result.probes["too_stale"] > 0
    assert result.reasons["replayed"] > 0
    assert result.reasons["accepted"] == ROUNDS * len(fleet.devices)  # a replay counts once
    assert result.used == 10 * (result.version - 1)


def test_exact_mode_is_the_central_ridge_head(fleet: Fleet, clean: RunResult) -> None:
    exact, central = exact_head(fleet, l2=1e-3), central_ridge(fleet, l2=1e-3)
    exact_acc, central_acc = fleet.accuracy(exact), fleet.accuracy(central)
    softmax = fleet.accuracy(fleet.central())
    print(
        f"\nexact mode {points(exact_acc)}, central ridge {points(central_acc)} "
        f"(max |Δθ| {np.abs(exact[0] - central[0]).max():.1e}); for reference the "
        f"softmax head: central {points(softmax)}, federated {points(clean.final)}"
    )
    assert abs(exact_acc - central_acc) <= 0.5 * POINT
    np.testing.assert_allclose(exact[0], central[0], atol=1e-4)


def test_topk_with_error_feedback_at_a_sixteenth_of_the_bytes_costs_under_a_point() -> None:
    wide = Fleet.build(seed=0, width=256)
    k = wide.layout.size // 20
    dense = run_topk(wide, PRESETS["default"], rounds=15, k=None)
    sparse = run_topk(wide, PRESETS["default"], rounds=15, k=k)
    print(
        f"\ntop-k, {wide.layout.size} parameters, k={k}: {points(sparse.final)} at "
        f"{sparse.ratio:.4f} of the dense bytes ({sum(sparse.bytes_sent) // len(sparse.bytes_sent)}"
        f" B per delta), dense f32 {points(dense.final)}"
    )
    assert sparse.ratio <= 1 / 16
    assert sparse.final >= dense.final - 1 * POINT
