"""Merging windows: a commutative monoid over disjoint windows, idempotent by identity."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.sketches import bin_counts
from hub.drift.aggregate import (
    Aggregate,
    empty,
    from_columns,
    from_window,
    merge,
    merge_all,
    seal,
    to_columns,
)
from hub.drift.buckets import (
    DAY_MS,
    FLEET,
    HOUR_MS,
    BucketKey,
    Cohort,
    DeviceBucketKey,
    Retention,
    bucket_start,
    children,
    closed,
    cohorts_of,
    parent,
    route,
)
from hub.drift.errors import IncompatibleWindow, OverlappingParts
from hub.drift.reference import Reference
from protocol.manifest import FeatureProfile, PredictionProfile, Profile
from protocol.messages import DataDelta
from protocol.sketches import FeatureSketch, PredictionSketch
from tests.clock import EPOCH_MS

EDGES = (np.linspace(-2.0, 2.0, 6), np.linspace(0.0, 1.0, 4))
PROFILE = Profile(
    features=(
        FeatureProfile("a", tuple(EDGES[0]), (0.2,) * 5),
        FeatureProfile("b", tuple(EDGES[1]), (1 / 3,) * 3),
    ),
    predictions=PredictionProfile("classes", (0.5, 0.3, 0.2)),
    rows=1000,
)
REFERENCE = Reference.from_profile(PROFILE)


def sketch(name: str, edges: np.ndarray, values: np.ndarray) -> FeatureSketch:
    """The agent's sketch of ``values`` (its binning; moments over the finite values)."""
    finite = values[np.isfinite(values)]
    counts, under, over = bin_counts(edges, values[~np.isnan(values)])
    n = len(finite)
    mean = float(finite.mean()) if n else 0.0
    return FeatureSketch(
        name=name,
        counts=tuple(int(c) for c in counts),
        underflow=under,
        overflow=over,
        nan=int(np.isnan(values).sum()),
        n=n,
        mean=mean,
        m2=float(((finite - mean) ** 2).sum()),
        min=float(finite.min()) if n else None,
        max=float(finite.max()) if n else None,
    )


def delta(rng: np.random.Generator, rows: int, start: int = EPOCH_MS) -> DataDelta:
    a = rng.normal(0.0, 1.5, rows)
    a[rng.random(rows) < 0.05] = np.nan
    b = rng.random(rows) * 1.2
    classes = np.bincount(rng.integers(0, 3, rows), minlength=3)
    return DataDelta(
        window_start=start,
        window_end=start + 60_000,
        features=(sketch("a", EDGES[0], a), sketch("b", EDGES[1], b)),
        predictions=PredictionSketch("classes", tuple(int(c) for c in classes)),
        inference_count=rows,
    )


@st.composite
def windows(draw: st.DrawFn, count: int = 3) -> list[Aggregate]:
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    return [
        from_window(delta(rng, draw(st.integers(0, 60))), REFERENCE, device_id=f"d{i}", seq=i)
        for i in range(count)
    ]


@settings(max_examples=100, deadline=None)
@given(windows())
def test_merge_is_associative_and_commutative(ws: list[Aggregate]) -> None:
    a, b, c = ws
    assert merge(merge(a, b), c).same(merge(a, merge(b, c)))
    assert merge(a, b).same(merge(b, a))
    assert merge_all([c, a, b], REFERENCE).same(merge(merge(a, b), c))


@settings(max_examples=50, deadline=None)
@given(windows())
def test_merge_has_the_empty_aggregate_as_identity_and_is_idempotent(ws: list[Aggregate]) -> None:
    a, b, _ = ws
    assert merge(empty(REFERENCE), a).same(a)
    assert merge(a, a) is a
    ab = merge(a, b)
    assert merge(ab, a) is ab
    assert merge(b, ab) is ab


def test_a_replayed_window_counts_once() -> None:
    rng = np.random.default_rng(1)
    first = from_window(delta(rng, 40), REFERENCE, device_id="d1", seq=7)
    again = from_window(delta(rng, 40), REFERENCE, device_id="d1", seq=7)  # same identity
    other = from_window(delta(rng, 25), REFERENCE, device_id="d1", seq=8)
    merged = merge_all([first, other, again, first], REFERENCE)
    assert merged.windows == 2
    assert merged.same(merge(first, other))


def test_partial_overlap_is_refused() -> None:
    rng = np.random.default_rng(2)
    w1, w2, w3 = (from_window(delta(rng, 10), REFERENCE, device_id="d", seq=s) for s in (1, 2, 3))
    with pytest.raises(OverlappingParts):
        merge(merge(w1, w2), merge(w2, w3))
    with pytest.raises(OverlappingParts):
        merge_all([merge(w1, w2), merge(w2, w3)], REFERENCE)


def test_merging_windows_equals_the_window_of_their_rows_together() -> None:
    rng = np.random.default_rng(3)
    d1, d2 = delta(rng, 50), delta(rng, 70)
    together = DataDelta(
        window_start=d1.window_start,
        window_end=d2.window_end,
        features=tuple(x.merge(y) for x, y in zip(d1.features, d2.features, strict=True)),
        predictions=d1.predictions.merge(d2.predictions),  # type: ignore[union-attr, arg-type]
        inference_count=d1.inference_count + d2.inference_count,
    )
    merged = merge(
        from_window(d1, REFERENCE, device_id="d", seq=1),
        from_window(d2, REFERENCE, device_id="d", seq=2),
    )
    whole = from_window(together, REFERENCE, device_id="d", seq=1)
    assert np.array_equal(merged.counts, whole.counts)
    np.testing.assert_allclose(merged.moments, whole.moments, rtol=1e-12)
    assert merged.inferences == 120


@pytest.mark.parametrize(
    ("mangle", "message"),
    [
        pytest.param(lambda d: d.features[::-1], "differ", id="features-reordered"),
        pytest.param(lambda d: d.features[:1], "differ", id="feature-missing"),
        pytest.param(
            lambda d: (FeatureSketch("a", (1, 2, 3)), d.features[1]), "bins", id="wrong-bins"
        ),
    ],
)
def test_window_that_does_not_fit_the_reference_is_refused(mangle, message: str) -> None:
    d = delta(np.random.default_rng(4), 20)
    bad = DataDelta(d.window_start, d.window_end, features=mangle(d))
    with pytest.raises(IncompatibleWindow, match=message):
        from_window(bad, REFERENCE, device_id="d", seq=1)


def test_predictions_of_another_shape_are_refused() -> None:
    d = delta(np.random.default_rng(5), 20)
    for predictions in (PredictionSketch("classes", (1, 2)), PredictionSketch("bins", (1, 2, 3))):
        bad = DataDelta(d.window_start, d.window_end, d.features, predictions)
        with pytest.raises(IncompatibleWindow, match="predictions"):
            from_window(bad, REFERENCE, device_id="d", seq=1)


def test_aggregates_of_another_scope_are_refused() -> None:
    other = Reference.from_profile(Profile(PROFILE.features, PROFILE.predictions, rows=999))
    d = delta(np.random.default_rng(6), 20)
    a = from_window(d, REFERENCE, device_id="d", seq=1)
    b = from_window(d, other, device_id="d", seq=2)
    with pytest.raises(IncompatibleWindow):
        merge(a, b)


def test_a_roll_up_of_sealed_buckets_counts_each_child_once() -> None:
    rng = np.random.default_rng(7)
    base = [
        merge_all(
            [
                from_window(delta(rng, 30), REFERENCE, device_id="d", seq=10 * k + s)
                for s in range(3)
            ],
            REFERENCE,
        )
        for k in range(12)
    ]
    starts = children(EPOCH_MS, HOUR_MS, 5 * 60_000)
    sealed = [seal(b, ("300000", start)) for b, start in zip(base, starts, strict=True)]
    hour = merge_all(sealed + sealed[:4], REFERENCE)
    assert hour.windows == 36
    assert hour.parts == {("300000", s) for s in starts}
    assert np.array_equal(hour.counts, np.sum([b.counts for b in base], axis=0))


def test_buckets_align_to_the_epoch_and_roll_up_to_hour_and_day() -> None:
    t = EPOCH_MS + 7 * HOUR_MS + 23 * 60_000 + 5_000
    key = route(t, scope="s", device_id="d1")
    assert key == DeviceBucketKey("s", "d1", 300_000, EPOCH_MS + 7 * HOUR_MS + 20 * 60_000)
    assert parent(key.start_ms, 300_000) == (HOUR_MS, EPOCH_MS + 7 * HOUR_MS)
    assert parent(EPOCH_MS + 7 * HOUR_MS, HOUR_MS) == (DAY_MS, EPOCH_MS)
    assert parent(EPOCH_MS, DAY_MS) is None
    assert bucket_start(EPOCH_MS, DAY_MS) == EPOCH_MS  # the fake clock starts at midnight
    assert not closed(key.end_ms, key.end_ms + 60_000)
    assert closed(key.end_ms, key.end_ms + 120_000)


def test_a_device_counts_in_the_fleet_its_version_and_each_tag() -> None:
    cohorts = cohorts_of(3, {"region": "eu", "hw": "rk3588", "version": "x"})
    assert cohorts[0] == FLEET
    assert [str(c) for c in cohorts] == [
        "fleet",
        "version=3",
        "hw=rk3588",
        "region=eu",
        "tag.version=x",
    ]


def test_retention_keeps_cohort_trends_longer_than_device_buckets() -> None:
    retention = Retention()
    end = EPOCH_MS + 300_000
    device = DeviceBucketKey("s", "d", 300_000, EPOCH_MS)
    cohort = BucketKey("s", Cohort("region", "eu"), 300_000, EPOCH_MS)
    assert not retention.expired(device, end + DAY_MS)
    assert retention.expired(device, end + 2 * DAY_MS)
    assert not retention.expired(cohort, end + 2 * DAY_MS)
    assert retention.expired(BucketKey("s", FLEET, DAY_MS, EPOCH_MS), EPOCH_MS + 731 * DAY_MS)


@settings(max_examples=50, deadline=None)
@given(windows())
def test_an_aggregate_round_trips_through_store_columns(ws: list[Aggregate]) -> None:
    merged = merge_all(ws, REFERENCE)
    columns = to_columns(merged)
    assert from_columns(columns, REFERENCE).same(merged)


def test_stored_columns_of_another_shape_are_refused() -> None:
    columns = to_columns(
        from_window(delta(np.random.default_rng(8), 20), REFERENCE, device_id="d", seq=1)
    )
    other = Reference.from_profile(Profile(PROFILE.features, None, rows=1000))
    with pytest.raises(IncompatibleWindow, match="scope"):
        from_columns(columns, other)
    with pytest.raises(IncompatibleWindow, match="fit"):
        from_columns({**columns, "counts": b"\x00" * 8}, REFERENCE)
