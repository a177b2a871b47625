"""Alert lifecycle and evaluation: the table, hysteresis, no-data, escalation, rounds,
and where attribution puts a drift."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from hub.drift.alerts import TRANSITIONS, Alert, Open, Resolve, StartRound, Update, step
from hub.drift.errors import IllegalTransition
from hub.errors import Conflict
from tests.clock import EPOCH_MS
from tests.hub.drift.simfleet import Run, SimDevice, device_buckets, make_fleet

NOW = EPOCH_MS + 3_600_000


def blank(state: str = "open") -> Alert:
    return Alert(
        id="scope-drift-1",
        scope="scope",
        kind="drift",
        state=state,  # type: ignore[arg-type]
        severity="warning",
        features=(),
        cohorts=(),
        performance=None,
        opened_at_ms=EPOCH_MS,
        updated_at_ms=EPOCH_MS,
        first_bucket_ms=EPOCH_MS,
        last_bucket_ms=EPOCH_MS,
    )


def test_acknowledging_records_who_and_when() -> None:
    acked = step(blank(), "acknowledge", NOW, by="ops@example.com")
    assert acked == replace(
        blank(),
        state="acknowledged",
        updated_at_ms=NOW,
        acknowledged_by="ops@example.com",
        acknowledged_at_ms=NOW,
    )
    again = step(acked, "acknowledge", NOW + 1, by="someone-else")
    assert again.acknowledged_by == "ops@example.com"  # idempotent: the first ack stands


def test_escalation_reopens_an_acknowledged_alert_and_resolution_is_final() -> None:
    acked = step(blank(), "acknowledge", NOW, by="ops")
    assert step(acked, "escalate", NOW + 1).state == "open"
    assert step(acked, "update", NOW + 1).state == "acknowledged"
    resolved = step(acked, "resolve", NOW + 2)
    assert resolved == replace(
        acked, state="resolved", updated_at_ms=NOW + 2, resolved_at_ms=NOW + 2
    )


@pytest.mark.parametrize("event", ["update", "escalate", "acknowledge", "resolve"])
def test_a_resolved_alert_refuses_every_event(event: str) -> None:
    resolved = step(blank(), "resolve", NOW)
    with pytest.raises(IllegalTransition) as info:
        step(resolved, event, NOW + 1)  # type: ignore[arg-type]
    assert isinstance(info.value, Conflict)
    assert (info.value.state, info.value.event, info.value.status_hint) == ("resolved", event, 409)
    assert not any(state == "resolved" for state, _ in TRANSITIONS)


def shifted(deltas: dict[int, float], feature: int = 0):
    """Every device shifted by ``deltas[bucket]`` σ on one feature."""

    def shift(bucket: int, _device: SimDevice) -> np.ndarray:
        s = np.zeros(10)
        s[feature] = deltas.get(bucket, 0.0)
        return s

    return shift


def test_a_score_hovering_below_its_threshold_keeps_the_alert_open_without_flapping() -> None:
    """PSI ~0.16, then alternating ~0.13 / ~0.09, then ~0.09 steady, then no drift. The
    device fraction is switched off so the distribution thresholds alone decide."""
    rng = np.random.default_rng(8)
    run = Run.new(rng, min_excess_fraction=1.0)
    fleet = make_fleet(rng, 200)
    deltas = dict.fromkeys(range(3), 0.4)
    deltas |= {b: 0.36 if b % 2 else 0.30 for b in range(3, 11)}
    deltas |= dict.fromkeys(range(11, 16), 0.31)
    shift = shifted(deltas)
    psi = []
    for bucket in range(20):
        a = run.bucket(device_buckets(rng, fleet, run.reference, run.edges, bucket, shift))
        psi.append(a.cohorts[0].scores[0].psi or 0.0)
    print("\n  fleet PSI of f0 per bucket:", " ".join(f"{p:.3f}" for p in psi))
    opens = [i for i, a in run.log if isinstance(a, Open)]
    resolves = [i for i, a in run.log if isinstance(a, Resolve)]
    assert opens == [0]
    assert resolves == [18]  # the third quiet bucket after the drift stopped at 16
    assert min(psi[11:16]) < run.policy.psi_warn  # below the threshold, yet held open


def test_no_data_is_not_good_news_an_alert_stays_open_until_data_says_quiet() -> None:
    rng = np.random.default_rng(9)
    run = Run.new(rng)
    fleet = make_fleet(rng, 200)
    shift = shifted({0: 1.0, 1: 1.0})
    for bucket in range(2):
        run.bucket(device_buckets(rng, fleet, run.reference, run.edges, bucket, shift))
    for _ in range(5):
        a = run.bucket([])  # the whole fleet offline
        assert a.finding("f0").level == "insufficient"
    assert not [a for _, a in run.log if isinstance(a, Resolve)]
    for bucket in range(7, 10):
        run.bucket(device_buckets(rng, fleet, run.reference, run.edges, bucket, shift))
    assert [i for i, a in run.log if isinstance(a, Resolve)] == [9]


def test_escalation_reopens_an_acknowledged_warning_and_asks_for_one_round() -> None:
    rng = np.random.default_rng(10)
    run = Run.new(rng, retrain_on_alert=True, min_excess_fraction=1.0)
    fleet = make_fleet(rng, 200)
    shift = shifted({0: 0.4, 1: 1.0, 2: 1.0, 3: 1.0, 4: 1.2})
    run.bucket(device_buckets(rng, fleet, run.reference, run.edges, 0, shift))
    (alert,) = run.alerts.values()
    assert (alert.severity, alert.state) == ("warning", "open")
    run.alerts[alert.id] = step(alert, "acknowledge", NOW, by="ops")
    for bucket in range(1, 5):
        run.bucket(device_buckets(rng, fleet, run.reference, run.edges, bucket, shift))
    rounds = [(i, a) for i, a in run.log if isinstance(a, StartRound)]
    assert [i for i, _ in rounds] == [2]  # alert level in 2 of the last 3 buckets
    assert rounds[0][1].alert_id == alert.id
    escalation = next(a for i, a in run.log if isinstance(a, Update) and i == 2)
    assert escalation.alert.state == "open"
    assert escalation.alert.severity == "alert"
    assert escalation.alert.round_requested
    assert run.alerts[alert.id].acknowledged_by == "ops"


def test_drift_in_an_intersection_names_both_cohorts_and_fleet_wide_drift_names_the_fleet() -> None:
    rng = np.random.default_rng(12)
    run = Run.new(rng)
    fleet = make_fleet(rng, 300)

    def corner(_bucket: int, device: SimDevice) -> np.ndarray:
        s = np.zeros(10)
        if device.tags == {"region": "eu", "hw": "a"}:
            s[3] = 1.5
        s[6] = 0.8  # everyone
        return s

    a = run.bucket(device_buckets(rng, fleet, run.reference, run.edges, 0, corner))
    f3, f6 = a.finding("f3"), a.finding("f6")
    print(f"\n  f3 named {[(c.cohort, round(c.share, 2)) for c in f3.cohorts]}")
    print(f"  f6 named {[(c.cohort, round(c.share, 2)) for c in f6.cohorts]}")
    assert {c.cohort for c in f3.cohorts} == {"region=eu", "hw=a"}
    assert [c.cohort for c in f6.cohorts] == ["fleet"]
    assert all(f.level == "ok" for f in a.findings if f.name not in ("f3", "f6"))
