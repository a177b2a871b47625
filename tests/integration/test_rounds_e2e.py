"""Federated rounds end to end: real agents, a real broker, the hub's REST API.

The small variant runs in ``make test``; the 30-device one with several rounds (the
issue's acceptance numbers) is ``slow`` (``make bench``), and prints what it measured.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from hub.rounds.exact import solve_ridge
from protocol.linearstats import local_stats, targets
from tests.integration.rounds_rig import RoundsRig, eventually, ok

POINT = 0.01
AUTO = {"auto_release": True, "margin": 0.0}


def test_a_round_of_real_agents_releases_a_candidate_that_beats_the_base(
    tmp_path: Path, database: str
) -> None:
    """On both stores (the ``database`` fixture: SQLite, PostgreSQL)."""
    with RoundsRig.start(tmp_path, devices=6, policy=AUTO, database=database) as rig:
        round_id = rig.open(target_deltas=6, min_deltas=3, duration_s=20)
        rig.heard(round_id)
        rig.feed()
        detail = rig.finished(round_id)
        assert detail["state"] == "accepted", detail
        assert detail["deltas"]["used"] >= 3
        assert detail["judgement"]["passed"] is True
        version = detail["candidate_version"]
        info = ok(rig.api.get(f"/models/task/versions/{version}"))
        assert info["status"] == "released"
        assert info["parent_version"] == 1
        assert info["made_by"] == f"round:{round_id}"
        used = [c for c in info["lineage"]["contributions"] if c["status"] == "used"]
        assert len(used) == detail["deltas"]["used"]
        base, candidate = rig.accuracy(rig.head_of(1)), rig.accuracy(rig.head_of(version))
        print(f"\n6 agents, one round: base {base:.3f}, candidate v{version} {candidate:.3f}")
        assert candidate >= base + 5 * POINT
        rig.heard(None)  # the round ended: agents no longer name it
        metrics = rig.api.get(f"{rig.hub.http_url}/metrics").text
        assert 'edgefleet_hub_rounds_total{model="task",state="accepted"}' in metrics
        assert 'edgefleet_hub_deltas_screened_total{model="task",reason="",status="accepted"}' in (
            metrics
        )


@pytest.mark.slow
def test_thirty_agents_reach_near_the_central_head_in_rounds(tmp_path: Path) -> None:
    with RoundsRig.start(tmp_path, devices=30, policy=AUTO) as rig:
        base = rig.accuracy(rig.head_of(1))
        central = rig.accuracy(rig.central())
        version, history = 1, []
        for _ in range(15):  # later rounds close at their deadline: agents whose holdout
            # no longer improves by min_gain send nothing
            round_id = rig.open(target_deltas=30, min_deltas=5, duration_s=10)
            rig.heard(round_id)
            rig.feed()
            detail = rig.finished(round_id, timeout_s=240)
            if detail["state"] == "accepted":
                version = detail["candidate_version"]
                rig.roll_out(version)
            history.append((detail["state"], detail["deltas"]["used"], version))
            if rig.accuracy(rig.head_of(version)) >= central - 2 * POINT:
                break
        final = rig.accuracy(rig.head_of(version))
        print(
            f"\n30 agents: base {base:.3f}, released v{version} {final:.3f}, central "
            f"{central:.3f}; rounds (state, used deltas, version): {history}"
        )
        assert final >= base + 5 * POINT
        assert final >= central - 2 * POINT


EXACT = {**AUTO, "mode": "exact", "exact_l2": 1e-3, "exact_min_rows": 32}


@pytest.mark.parametrize("devices", [6, pytest.param(30, marks=pytest.mark.slow)])
def test_an_exact_round_of_real_agents_releases_the_central_ridge_head(
    tmp_path: Path, devices: int
) -> None:
    with RoundsRig.start(tmp_path, devices=devices, policy=EXACT) as rig:
        round_id = rig.open(target_deltas=devices, min_deltas=devices, duration_s=60)
        rig.heard(round_id)
        assert all(rig.fleet.devices[i].learning.hub_config.update_kind == "stats" for i in rig.ids)
        rig.feed()
        detail = rig.finished(round_id, timeout_s=120)
        assert detail["state"] == "accepted", (detail["reason"], detail["deltas"])
        assert detail["deltas"]["used"] == devices
        version = detail["candidate_version"]
        info = rig.released(version)
        assert info["lineage"]["strategy"] == "exact(ridge)"
        base = rig.head_of(1)
        rows = rig.features(np.vstack([x for x, _ in rig.data.devices]))
        labels = np.concatenate([y for _, y in rig.data.devices])
        ridge = solve_ridge(local_stats(rows, targets(rig.head, labels)), l2=1e-3, anchor=base)
        exact, central = rig.accuracy(rig.head_of(version)), rig.accuracy(ridge)
        print(
            f"\n{devices} agents, one exact round: base {rig.accuracy(base):.3f}, candidate "
            f"v{version} {exact:.3f}, central ridge on the union {central:.3f}, central "
            f"softmax head {rig.accuracy(rig.central()):.3f}"
        )
        assert abs(exact - central) <= 0.5 * POINT
        rig.heard(None)


BUFFERED = {
    **AUTO,
    "mode": "buffered",
    "buffer": {"size": 3, "max_staleness": 1},
}


def test_buffered_mode_takes_stale_agents_at_a_discount_and_refuses_too_stale_ones(
    tmp_path: Path,
) -> None:
    # an agent sends only when its holdout gains min_gain (its split is random): one more
    # agent than the buffer needs at each step, so one that keeps quiet stalls nothing
    with RoundsRig.start(tmp_path, devices=9, policy=BUFFERED) as rig:
        first, stale, fresh, late = rig.ids[:4], rig.ids[4:6], rig.ids[6], rig.ids[7:]
        rig.feed(first)  # deltas on v1: the first flush
        v2 = rig.released(2)
        assert v2["lineage"]["source"] == "buffer:task:1"
        rig.roll_out(2, [fresh])
        rig.feed([*stale, fresh])  # on v1 (one behind v2) and on v2
        v3 = rig.registered(3)  # released or not: a few noisy deltas may not beat v2
        used = [c for c in v3["lineage"]["contributions"] if c["status"] == "used"]
        assert all(c["staleness"] == 2 - c["base_version"] for c in used)
        assert any(c["staleness"] == 1 for c in used)
        ok(
            rig.api.put(
                "/models/task/fl-policy",
                json={**BUFFERED, "buffer": {"size": 3, "max_staleness": 0}},
            )
        )
        rig.feed(late)  # on v1, one behind v2: now more than max_staleness
        found = eventually(lambda: [r for d in late for r in rig.verdicts_of(d)], "a late delta")
        assert set(found) == {("refused", "too_stale")}
