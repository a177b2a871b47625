"""Drift on the hub's own path: windows merged at ingest into a real SQLite store, scored by
the scheduler's job, alerts planned, stored, acknowledged; roll-ups and retention.

Windows are counted by the agent's sketch code over a real model's outputs
(tests/hub/monitor/drifthub.py); time is a FakeClock moved bucket by bucket.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgefleet.cli import main
from hub.drift.alerts import Action
from hub.drift.buckets import BASE_MS, DAY_MS, HOUR_MS, bucket_start
from hub.drift.errors import IllegalTransition
from hub.errors import InvalidRequest
from hub.metrics import sample
from hub.monitor import views
from hub.monitor.ingest import DriftMerger
from hub.monitor.jobs import RequestRound, RoundRequest, maintain_job, score_job
from hub.settings import HubSettings
from hub.store.interface import NotFound
from tests.clock import FakeClock
from tests.hub.monitor.drifthub import (
    FEATURES,
    MODEL,
    Sensor,
    add_devices,
    admitted,
    ingest,
    register_sensor,
)
from tests.hub.test_registry import Hub, make_hub

GRACE_S = 120.0
EU = frozenset({"eu"})
REGIONS = ["eu"] * 30 + ["us"] * 40 + ["asia"] * 30  # eu: 30% of 100 devices


@pytest.fixture
def hub(tmp_path: Path, clock: FakeClock) -> Hub:
    hub = make_hub(tmp_path, clock)
    tags = {
        f"d{i:03d}": {"region": region, "hw": "a" if i % 5 < 3 else "b"}  # 60% a in each region
        for i, region in enumerate(REGIONS)
    }
    add_devices(hub, tags)
    return hub


@pytest.fixture
def sensor(hub: Hub) -> Sensor:
    return register_sensor(hub)


class Fleet:
    """Buckets of windows from every device, merged and then scored as the hub does."""

    def __init__(self, hub: Hub, sensor: Sensor, seed: int = 5) -> None:
        self.hub, self.sensor = hub, sensor
        self.merger = DriftMerger(hub.store)
        self.rng = np.random.default_rng(seed)
        self.seq = dict.fromkeys((f"d{i:03d}" for i in range(len(REGIONS))), 0)
        self.ctx = hub.context(settings=HubSettings(data_dir=hub.root, drift_grace_s=GRACE_S))
        self.request_round: RequestRound | None = None

    def bucket(self, shifted: frozenset[str] = frozenset(), windows: int = 2) -> list[Action]:
        """One 5-minute bucket: ``windows`` windows of 15-50 rows per device, then scoring."""
        clock = self.hub.clock
        start = bucket_start(clock.now_ms(), BASE_MS)
        frames = []
        for i, device_id in enumerate(self.seq):
            for w in range(windows):
                x = self.rng.normal(size=(int(self.rng.integers(15, 51)), FEATURES))
                if REGIONS[i] in shifted:
                    x[:, [2, 7]] += 1.0
                self.seq[device_id] += 1
                t = start + w * 60_000 + i
                frames.append(
                    admitted(device_id, self.seq[device_id], self.sensor.window(x, t, t + 59_000))
                )
        ingest(self.merger, self.hub, frames)
        clock.advance(BASE_MS / 1000)
        clock.advance(GRACE_S)  # the bucket closes
        return score_job(self.ctx, request_round=self.request_round)


def test_covariate_shift_of_one_cohort_alerts_on_its_features_through_the_store(
    hub: Hub, sensor: Sensor
) -> None:
    fleet = Fleet(hub, sensor)
    for _ in range(3):
        assert fleet.bucket() == []
    fleet.bucket(EU)
    fleet.bucket(EU)
    [row] = hub.store.drift.alerts()
    alert = views.alert_json(row)
    assert alert["state"] == "open"
    assert alert["severity"] == "alert"
    assert set(alert["features"]) == {"f2", "f7"}
    assert alert["cohorts"] == ["region=eu"]
    assert alert["model"] == MODEL
    actions = [e.action for e in hub.store.audit.page(action="drift.alert.open").items]
    assert actions == ["drift.alert.open"]
    trend = views.trend(hub.store, MODEL, cohort="region=eu", since_ms=0, until_ms=2**62)
    psi = [b["scores"][2]["psi"] for b in trend["buckets"]]
    assert len(psi) == 5
    assert max(psi[:3]) < 0.1 < 0.25 < min(psi[3:])
    quiet = views.trend(hub.store, MODEL, cohort="region=us", since_ms=0, until_ms=2**62)
    assert all(b["scores"][2]["psi"] < 0.1 for b in quiet["buckets"])


def test_alert_resolves_after_three_quiet_buckets_and_ack_follows_the_lifecycle(
    hub: Hub, sensor: Sensor
) -> None:
    fleet = Fleet(hub, sensor)
    fleet.bucket(EU)
    fleet.bucket(EU)
    [row] = hub.store.drift.alerts()
    acked = views.acknowledge(fleet.ctx, row.id, by="token:abc", note="looking")
    assert acked["state"] == "acknowledged"
    assert acked["acknowledged_by"] == "token:abc"
    for _ in range(3):
        fleet.bucket()
    resolved = views.get_alert(hub.store, row.id)
    assert resolved["state"] == "resolved"
    assert resolved["resolved_at"] is not None
    with pytest.raises(IllegalTransition):
        views.acknowledge(fleet.ctx, row.id, by="token:abc", note=None)
    with pytest.raises(NotFound):
        views.acknowledge(fleet.ctx, "nope", by="token:abc", note=None)


def test_a_replayed_window_counts_once(hub: Hub, sensor: Sensor) -> None:
    merger = DriftMerger(hub.store)
    x = np.random.default_rng(1).normal(size=(40, FEATURES))
    t = hub.clock.now_ms()
    window = sensor.window(x, t, t + 1000)
    assert ingest(merger, hub, [admitted("d000", 1, window)]) == 1
    assert ingest(DriftMerger(hub.store), hub, [admitted("d000", 1, window)]) == 0
    scope = hub.store.drift.scopes()[0].scope
    [bucket] = hub.store.drift.device_buckets(scope, BASE_MS, bucket_start(t, BASE_MS))
    assert bucket.aggregate.windows == 1
    assert bucket.aggregate.inferences == 40
    assert bucket.tags == {"region": "eu", "hw": "a"}


def test_a_late_window_rescores_its_bucket(hub: Hub, sensor: Sensor) -> None:
    fleet = Fleet(hub, sensor)
    fleet.bucket()
    scope = hub.store.drift.scopes()[0].scope
    [first] = hub.store.drift.assessments(scope, BASE_MS, limit=5)
    x = np.random.default_rng(2).normal(size=(30, FEATURES))
    late = sensor.window(x, first.start_ms + 1, first.start_ms + 2)
    ingest(fleet.merger, hub, [admitted("d001", 99, late)])
    assert hub.store.drift.assessments(scope, BASE_MS, limit=5)[0].dirty
    hub.clock.advance(60)
    score_job(fleet.ctx)
    [again] = hub.store.drift.assessments(scope, BASE_MS, limit=5)
    assert not again.dirty
    assert again.scored_at > first.scored_at


def test_a_window_of_a_version_without_a_profile_is_stored_but_skipped(
    hub: Hub, sensor: Sensor
) -> None:
    before = sample("edgefleet_drift_skipped_total", {"reason": "not_found"})
    x = np.random.default_rng(3).normal(size=(30, FEATURES))
    window = sensor.window(x, 0, 1)
    stray = type(window)(**{**window.__dict__, "model": type(sensor.ref)(MODEL, 9, "0" * 64)})
    assert ingest(DriftMerger(hub.store), hub, [admitted("d000", 1, stray)]) == 0
    assert sample("edgefleet_drift_skipped_total", {"reason": "not_found"}) == before + 1
    assert hub.store.drift.scopes() == []


def test_hours_and_days_roll_up_from_their_children_and_expire(hub: Hub, sensor: Sensor) -> None:
    fleet = Fleet(hub, sensor)
    hub.clock.advance((DAY_MS - hub.clock.now_ms() % DAY_MS) / 1000)  # midnight
    for _ in range(3):
        fleet.bucket()
        hub.clock.advance((HOUR_MS - BASE_MS) / 1000 - GRACE_S)
    hub.clock.advance(DAY_MS / 1000)
    assert maintain_job(fleet.ctx) > 0
    scope = hub.store.drift.scopes()[0].scope
    hours = hub.store.drift.cohort_buckets(scope, "fleet", HOUR_MS, 0, 2**62)
    base = hub.store.drift.cohort_buckets(scope, "fleet", BASE_MS, 0, 2**62)
    [day] = hub.store.drift.cohort_buckets(scope, "fleet", DAY_MS, 0, 2**62)
    assert len(hours) == 3
    assert len(base) == 3
    assert sum(h.aggregate.windows for h in hours) == day.aggregate.windows == 3 * 2 * len(REGIONS)
    trend = views.trend(hub.store, MODEL, width="1d", since_ms=0, until_ms=2**62)
    assert trend["buckets"][0]["scores"][0]["n"] == sum(
        int(x) for x in np.frombuffer(day.aggregate.counts, "<i8").reshape(11, -1)[0, :-1]
    )
    assert maintain_job(fleet.ctx) == 0  # nothing changed: nothing recomputed
    hub.clock.advance(15 * DAY_MS / 1000)
    maintain_job(fleet.ctx)
    assert hub.store.drift.cohort_buckets(scope, "fleet", BASE_MS, 0, 2**62) == []
    assert len(hub.store.drift.cohort_buckets(scope, "fleet", HOUR_MS, 0, 2**62)) == 3
    assert hub.store.drift.device_history("d000", BASE_MS, 0, 2**62) == []


def test_policy_is_per_model_validated_and_audited(hub: Hub, sensor: Sensor) -> None:
    ctx = hub.context()
    assert views.get_policy(hub.store, MODEL).psi_alert == 0.25
    views.put_policy(ctx, MODEL, {"psi_alert": 0.3, "retrain_on_alert": True}, by="token:t")
    assert views.get_policy(hub.store, MODEL).psi_alert == 0.3
    for bad in ({"psi_alert": 0.01}, {"nope": 1}, {"psi_warn": "x"}):
        with pytest.raises(InvalidRequest):
            views.put_policy(ctx, MODEL, bad, by="token:t")
    with pytest.raises(NotFound):
        views.get_policy(hub.store, "other")


def test_an_alert_asks_for_one_round_through_the_hook(hub: Hub, sensor: Sensor) -> None:
    fleet = Fleet(hub, sensor)
    views.put_policy(fleet.ctx, MODEL, {"retrain_on_alert": True}, by="token:t")
    for _ in range(3):
        fleet.bucket(EU)
    assert [r.round_requested for r in hub.store.drift.alerts()] == [True]
    audited = hub.store.audit.page(action="drift.round.request").items
    assert [(a.outcome, a.reason) for a in audited] == [
        ("rejected", "no rounds service is wired to drift")
    ]


def test_a_wired_rounds_service_hears_each_alert_once(hub: Hub, sensor: Sensor) -> None:
    fleet = Fleet(hub, sensor)
    views.put_policy(fleet.ctx, MODEL, {"retrain_on_alert": True}, by="token:t")
    asked: list[RoundRequest] = []
    fleet.request_round = asked.append
    for _ in range(4):
        fleet.bucket(EU)
    [alert] = hub.store.drift.alerts()
    assert [(r.model_name, r.model_version, r.alert_id) for r in asked] == [(MODEL, 1, alert.id)]
    assert asked[0].requested_by == f"drift:{alert.id}"
    assert "f2" in asked[0].reason


def test_cli_shows_the_trend_lists_and_acknowledges_alerts(
    hub: Hub, sensor: Sensor, capsys: pytest.CaptureFixture[str]
) -> None:
    fleet = Fleet(hub, sensor)
    fleet.bucket()
    fleet.bucket(EU)
    fleet.bucket(EU)
    data = ["--data", str(hub.root)]
    assert (
        main(["drift", "show", "--model", MODEL, "--cohort", "region=eu", "--since", "all", *data])
        == 0
    )
    shown = capsys.readouterr().out.splitlines()
    f2 = next(line for line in shown if line.startswith("f2 "))
    f0 = next(line for line in shown if line.startswith("f0 "))
    assert float(f2.split()[3]) > 0.25 > 0.1 > float(f0.split()[3])
    assert main(["drift", "alerts", "--state", "open", *data]) == 0
    listed = capsys.readouterr().out
    [row] = hub.store.drift.alerts()
    assert row.id in listed
    assert "f2,f7 / region=eu" in listed or "f7,f2 / region=eu" in listed
    assert main(["drift", "ack", row.id, "--note", "new sensors in eu", *data]) == 0
    assert "acknowledged by cli:" in capsys.readouterr().out
    assert hub.store.drift.alert(row.id).state == "acknowledged"  # type: ignore[union-attr]
    assert main(["drift", "ack", "0123456789abcdef-drift-1", *data]) != 0
    assert "no drift alert" in capsys.readouterr().err


def test_a_device_page_scores_its_own_buckets_on_read(hub: Hub, sensor: Sensor) -> None:
    fleet = Fleet(hub, sensor)
    fleet.bucket()
    fleet.bucket(EU)
    page = views.device(hub.store, "d000", since_ms=0, until_ms=2**62)  # an eu device
    assert [b["windows"] for b in page["buckets"]] == [2, 2]
    before, after = ([f["psi"] for f in b["features"]] for b in page["buckets"])
    assert after[2] > 0.25 > before[2]
    assert after[7] > 0.25 > before[7]
    assert page["buckets"][0]["features"][0]["name"] == "f0"
    assert page["buckets"][1]["features"][2]["p"] < 1e-6
    quiet = views.device(hub.store, "d050", since_ms=0, until_ms=2**62)  # a us device
    # ~65 rows: PSI alone is noisy at this size; the test's p-value knows it
    assert all(b["features"][r]["p"] > 1e-4 for b in quiet["buckets"] for r in (2, 7))
    with pytest.raises(NotFound):
        views.device(hub.store, "nobody", since_ms=0, until_ms=2**62)
