"""Issue 11's acceptance, as pure simulations of a fleet (tests/hub/drift/simfleet.py).

Each test prints the numbers the issue asks for (``pytest -s``). The fleet: devices
tagged with a region (eu 30%, us 50%, asia 20%) and a hardware kind (a 60%, b 40%) drawn
independently, 30-100 rows per device per 5-minute bucket, 10 features whose reference
is N(0, 1) over 10 quantile bins of 5,000 rows.
"""

from __future__ import annotations

import numpy as np
import pytest

from hub.drift.alerts import Open
from tests.hub.drift.simfleet import Run, SimDevice, device_buckets, make_fleet, no_shift
from tests.hub.monitor.storerun import StoreRun

# Each simulation runs twice: on the pure core alone, and on the hub's path (buckets in a
# SQLite store, scored and planned by the scoring job's step, read back from the store).
runners = pytest.mark.parametrize("runner", [Run, StoreRun], ids=["pure", "store"])


@runners
def test_covariate_shift_in_one_cohort_alerts_on_exactly_its_features_and_cohort(
    runner: type[Run] | type[StoreRun],
) -> None:
    """1σ on f2 and f7 for the eu devices (30% of the fleet) from bucket 5 on."""
    rng = np.random.default_rng(21)
    run = runner.new(rng)
    fleet = make_fleet(rng, 200)
    onset = 5

    def shift(bucket: int, device: SimDevice) -> np.ndarray:
        s = np.zeros(10)
        if bucket >= onset and device.tags["region"] == "eu":
            s[[2, 7]] = 1.0
        return s

    for bucket in range(onset + 6):
        run.bucket(device_buckets(rng, fleet, run.reference, run.edges, bucket, shift))

    opened = run.opened()
    assert len(opened) == 1, f"one alert, got {[(i, a.kind) for i, a in opened]}"
    first, _ = opened[0]
    alert = next(iter(run.alerts.values()))
    escalated = min(
        i
        for i, a in run.log
        if getattr(a, "alert", None) and a.alert.severity == "alert"  # type: ignore[union-attr]
    )
    print(f"\n  opened at bucket {first} (onset {onset}), alert severity from bucket {escalated}")
    for f in alert.features:
        where = ", ".join(f"{c.cohort} (share {c.share:.2f}, PSI {c.psi:.2f})" for c in f.cohorts)
        print(
            f"  {f.name}: level {f.level}, kinds {f.kinds}, PSI {f.score.psi:.3f} "
            f"p {f.score.p:.1e}; {f.drifting_devices}/{f.devices} devices drift; in {where}"
        )
    fleet_psi = [a.cohorts[0].scores[2].psi or 0.0 for a in run.assessments[onset:]]
    print(f"  merged fleet PSI of f2 after onset: {min(fleet_psi):.3f}-{max(fleet_psi):.3f}")
    assert first <= onset + 1
    assert escalated <= onset + 1  # an alert (2 of 3 buckets) within 2 buckets of the onset
    assert alert.severity == "alert"
    assert set(alert.feature_names) == {"f2", "f7"}
    assert alert.cohort_names == ("region=eu",)
    assert all(f.cohorts[0].share > 0.9 for f in alert.features)
    for assessment in run.assessments[:onset]:
        assert all(f.level == "ok" for f in assessment.findings)


@runners
def test_stationary_fleet_raises_nothing_over_50_buckets(
    runner: type[Run] | type[StoreRun],
) -> None:
    """No drift, devices of 30-100 rows: zero alerts. Prints the largest score seen and
    the measured per-feature, per-bucket false-alarm rate."""
    rng = np.random.default_rng(5)
    run = runner.new(rng)
    fleet = make_fleet(rng, 200)
    buckets = 50
    significant = warned = tests = 0
    largest_psi, smallest_p = (0.0, 0), (1.0, 0)
    device_hits = device_tests = 0
    for bucket in range(buckets):
        a = run.bucket(device_buckets(rng, fleet, run.reference, run.edges, bucket, no_shift(10)))
        warned += sum(f.level != "ok" for f in a.findings)
        for view in a.cohorts:
            for s in view.scores:
                tests += 1
                significant += s.p is not None and s.p < run.policy.warn_alpha
                largest_psi = max(largest_psi, (s.psi or 0.0, s.n))
                smallest_p = min(smallest_p, (s.p if s.p is not None else 1.0, s.n))
        fleet_view = a.cohorts[0]
        device_hits += sum(fleet_view.drifting_devices)
        device_tests += sum(fleet_view.scored_devices)
    rate = warned / (buckets * 10)
    print(
        f"\n  {buckets} buckets x 10 features x {len(run.assessments[0].cohorts)} cohorts "
        f"= {tests} cohort scores"
    )
    print(
        f"  largest PSI {largest_psi[0]:.4f} (n={largest_psi[1]}); smallest p "
        f"{smallest_p[0]:.2e} (n={smallest_p[1]})"
    )
    print(
        f"  cohort scores beyond the no-drift 99.9th percentile: {significant}/{tests} "
        f"= {significant / tests:.3%}"
    )
    print(
        f"  per-feature per-bucket false alarms (warning or alert level): {warned}/"
        f"{buckets * 10} = {rate:.2%} (goal <= 0.1%)"
    )
    print(
        f"  devices significant at α={run.policy.device_alpha}: {device_hits}/{device_tests} "
        f"= {device_hits / device_tests:.2%}"
    )
    assert run.log == []
    assert warned == 0
    assert significant / tests <= 0.004
    assert 0.006 <= device_hits / device_tests <= 0.014


@runners
def test_a_drifting_minority_alerts_though_the_fleet_histogram_barely_moves(
    runner: type[Run] | type[StoreRun],
) -> None:
    """50 of 1,000 devices shifted by 2σ on f4; no cohort holds them."""
    rng = np.random.default_rng(6)
    run = runner.new(rng)
    fleet = make_fleet(rng, 1000)
    shifted = {d.device_id for d in rng.choice(np.array(fleet, dtype=object), 50, replace=False)}

    def shift(_bucket: int, device: SimDevice) -> np.ndarray:
        s = np.zeros(10)
        if device.device_id in shifted:
            s[4] = 2.0
        return s

    print()
    for bucket in range(3):
        a = run.bucket(device_buckets(rng, fleet, run.reference, run.edges, bucket, shift))
        f = a.finding("f4")
        fleet_score = a.cohorts[0].scores[4]
        print(
            f"  bucket {bucket}: {f.drifting_devices}/{f.devices} devices drift on f4 "
            f"(chance {run.policy.device_alpha:.0%}), binomial p {f.fraction_p:.1e}; merged "
            f"fleet PSI {fleet_score.psi:.4f}; level {f.level} {f.kinds}"
        )
        assert fleet_score.psi is not None
        assert fleet_score.psi < run.policy.psi_warn
        assert set(f.top_devices) <= shifted
    alerts = [a for _, a in run.log if isinstance(a, Open)]
    assert len(alerts) == 1
    alert = next(iter(run.alerts.values()))
    assert alert.severity == "alert"
    assert alert.feature_names == ("f4",)
    assert alert.cohort_names == ("fleet",)
    assert alert.features[0].kinds == ("devices",)
