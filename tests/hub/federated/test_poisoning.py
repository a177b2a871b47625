"""20% poisoned deltas through the real ingest, store, screening and aggregation: the
default strategy holds while FedAvg without a norm bound degrades (``-s`` prints it).

Honest devices train with the agent's own trainer on their non-IID slices
(:class:`tests.hub.rounds.fedsim.Fleet`); every fifth device is an attacker that sends a
signed, well-formed delta (:data:`tests.hub.rounds.fedsim.ATTACKS`). The FedAvg hub is a
Flower-like server: the ``fedavg`` preset and no norm bound worth the name.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from hub.federated import rounds
from hub.rounds.aggregate import PRESETS
from protocol.headparams import read_head
from protocol.package import decode_package
from protocol.tensors import encode_tensors
from simulator.task import ShiftedTask
from tests.hub.federated.helpers import MODEL, FlHub
from tests.hub.rounds.fedsim import ATTACKS, Fleet, first_attackers

DEVICES = 10
POINT = 0.01
FEDAVG = {"strategy": "fedavg", "max_norm": 1e6}


@pytest.fixture(scope="module")
def fleet() -> Fleet:
    return Fleet.build(seed=0, n_devices=DEVICES)


def one_round(tmp_path: Path, fleet: Fleet, attack: str | None, **policy: object) -> float:
    """One round of every device on v1; the candidate's accuracy on the fleet's set."""
    fields = dict(policy)
    if isinstance(fields.get("strategy"), str):
        fields["strategy"] = PRESETS[str(fields["strategy"])]
    task = ShiftedTask.build(seed=0, n_inputs=8, width=64, n_classes=5)
    hub = FlHub(tmp_path, task=task, **fields)
    round_id = hub.open(target_deltas=DEVICES, min_deltas=1)
    trained = [fleet.local_delta(fleet.base, d, d) for d in range(DEVICES)]
    attackers = first_attackers(DEVICES) if attack else frozenset()
    benign = [delta for d, (delta, _) in enumerate(trained) if d not in attackers]
    benign_mean = {k: np.mean([b[k] for b in benign], axis=0) for k in benign[0]}
    for d, (delta, samples) in enumerate(trained):
        if attack is not None and d in attackers:
            delta, samples = ATTACKS[attack](delta, samples, benign_mean)
            # colluders' identical bytes would be refused as replayed: each jitters its copy
            delta = {k: v * (1 - 1e-4 * (d + 1)) for k, v in delta.items()}
        upload = hub.delta(round_id=round_id, samples=samples)
        arrays = {k: np.asarray(v, np.float32) for k, v in delta.items()}
        hub.send(hub.device(f"dev-{d}"), replace(upload, tensors=encode_tensors(arrays)))
    hub.sim.clock.advance(3601)  # the deadline: close with what screening let through
    rounds.tick(hub.ctx)
    record = hub.store.rounds.round(round_id)
    assert record is not None
    assert record.candidate_version is not None, hub.verdicts(round_id)
    package = decode_package(hub.registry.download(MODEL, record.candidate_version))
    w, b = read_head(package.model, fleet.head)
    return fleet.accuracy((w.astype(np.float64), b.astype(np.float64)))


@pytest.mark.parametrize("attack", ["sign_flip", "scaled_50x"])
def test_the_default_holds_under_20_percent_poisoning_while_fedavg_degrades(
    tmp_path: Path, fleet: Fleet, attack: str
) -> None:
    base = fleet.accuracy(fleet.base)
    clean = one_round(tmp_path / "clean", fleet, None)
    default = one_round(tmp_path / "default", fleet, attack)
    fedavg = one_round(tmp_path / "fedavg", fleet, attack, **FEDAVG)
    print(
        f"\n{DEVICES} devices, 20% {attack}, one round: base {base:.3f}, clean {clean:.3f}, "
        f"default {default:.3f}, FedAvg without a bound {fedavg:.3f}"
    )
    assert default >= base + 5 * POINT  # the round still moves the model forward
    assert fedavg <= clean - 10 * POINT  # the attack erases most of FedAvg's gain
    assert default >= fedavg + 5 * POINT
