"""The feedback buffer: bounds, expiry, labels it refuses, ids it reports, and what survives."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from agent.errors import InvalidLabel
from agent.feedback import FeedbackBuffer, FeedbackLimits, LabelSpec, prediction_ids

CLASSES = LabelSpec("classification", 3, ("cat", "dog", "bird"))
BINARY = LabelSpec("classification", 1)
REGRESSION = LabelSpec("regression", 2)
MODEL = "a" * 64
T0 = 1_000_000


def rows(n: int, width: int = 4, start: float = 0.0) -> np.ndarray:
    return (start + np.arange(n * width, dtype=np.float32)).reshape(n, width)


def buffer(
    spec: LabelSpec = CLASSES, *, path: Path | None = None, model: str = MODEL, **limits: int
) -> FeedbackBuffer:
    return FeedbackBuffer(spec, 4, model=model, path=path, limits=FeedbackLimits(**limits))


def test_labelled_rows_come_back_with_their_features_and_labels() -> None:
    buf = buffer()
    buf.remember(["a", "b", "c"], rows(3), T0)

    report = buf.label({"a": 2, "c": "dog"}, T0 + 10)

    assert report.accepted == ("a", "c")
    assert report.unknown == ()
    features, labels = buf.labelled()
    np.testing.assert_array_equal(features, rows(3)[[0, 2]])
    np.testing.assert_array_equal(labels, [2, 1])
    assert labels.dtype == np.int64
    assert buf.counts() == {"pending": 1, "labelled": 2}


def test_unknown_ids_are_reported_back_and_the_rest_accepted() -> None:
    buf = buffer()
    buf.remember(["a"], rows(1), T0)

    report = buf.label({"nope": 1, "a": 0}, T0)

    assert report.accepted == ("a",)
    assert report.unknown == ("nope",)


def test_pending_rows_expire_after_their_ttl() -> None:
    buf = buffer(pending_ttl_ms=1000)
    buf.remember(["old"], rows(1), T0)
    buf.remember(["new"], rows(1), T0 + 600)

    report = buf.label({"old": 0, "new": 1}, T0 + 1200)

    assert report.unknown == ("old",)
    assert report.accepted == ("new",)


def test_pending_rows_beyond_the_bound_evict_the_oldest() -> None:
    buf = buffer(max_pending=3)
    buf.remember(["a", "b"], rows(2), T0)
    buf.remember(["c", "d"], rows(2), T0 + 1)

    assert buf.counts()["pending"] == 3
    assert buf.label({"a": 0, "b": 0, "d": 0}, T0 + 2).unknown == ("a",)


def test_labelled_rows_beyond_the_bound_evict_the_least_recently_labelled() -> None:
    buf = buffer(max_labelled=2)
    buf.remember(["a", "b", "c"], rows(3), T0)
    for key in ("a", "b", "c"):
        buf.label({key: 1}, T0)

    features, _ = buf.labelled()
    np.testing.assert_array_equal(features, rows(3)[1:])


def test_relabelling_replaces_the_label() -> None:
    buf = buffer()
    buf.remember(["a"], rows(1), T0)
    buf.label({"a": 0}, T0)

    assert buf.label({"a": 2}, T0).accepted == ("a",)
    np.testing.assert_array_equal(buf.labelled()[1], [2])


@pytest.mark.parametrize(
    ("spec", "value"),
    [
        pytest.param(CLASSES, 3, id="class-out-of-range"),
        pytest.param(CLASSES, -1, id="negative-class"),
        pytest.param(CLASSES, 1.5, id="fractional-class"),
        pytest.param(CLASSES, "fish", id="unknown-class-name"),
        pytest.param(CLASSES, True, id="bool"),
        pytest.param(CLASSES, None, id="null"),
        pytest.param(BINARY, 2, id="binary-class-2"),
        pytest.param(REGRESSION, 1.0, id="one-target-for-two"),
        pytest.param(REGRESSION, [1.0, float("nan")], id="nan-target"),
        pytest.param(REGRESSION, [1.0, float("inf")], id="inf-target"),
        pytest.param(REGRESSION, [1.0, 1e39], id="beyond-float32"),
        pytest.param(REGRESSION, [1.0, "2"], id="string-target"),
    ],
)
def test_a_label_the_model_cannot_take_refuses_the_whole_batch(
    spec: LabelSpec, value: object
) -> None:
    buf = buffer(spec)
    buf.remember(["good", "bad"], rows(2), T0)
    good = 1 if spec.task == "classification" else [1.0, 2.0]

    with pytest.raises(InvalidLabel, match="'bad'") as raised:
        buf.label({"good": good, "bad": value}, T0)

    assert raised.value.status_hint == 422
    assert buf.counts() == {"pending": 2, "labelled": 0}


def test_binary_and_regression_labels_take_their_own_forms() -> None:
    binary = buffer(BINARY)
    binary.remember(["a", "b"], rows(2), T0)
    binary.label({"a": 1, "b": 0.0}, T0)
    np.testing.assert_array_equal(binary.labelled()[1], [1, 0])

    regression = buffer(REGRESSION)
    regression.remember(["a"], rows(1), T0)
    regression.label({"a": [0.5, -2]}, T0)
    _, targets = regression.labelled()
    np.testing.assert_array_equal(targets, [[0.5, -2.0]])
    assert targets.dtype == np.float32


def test_rows_with_non_finite_features_are_not_kept() -> None:
    buf = buffer()
    features = rows(2)
    features[0, 1] = np.nan

    buf.remember(["nan", "ok"], features, T0)

    assert buf.label({"nan": 0, "ok": 0}, T0).unknown == ("nan",)


def test_remember_refuses_features_of_the_wrong_width() -> None:
    with pytest.raises(ValueError, match="rows of 4"):
        buffer().remember(["a"], rows(1, width=5), T0)


def test_generation_changes_only_when_the_labelled_set_does() -> None:
    buf = buffer()
    buf.remember(["a"], rows(1), T0)
    before = buf.generation
    buf.label({"unknown": 1}, T0)
    assert buf.generation == before
    buf.label({"a": 1}, T0)
    assert buf.generation != before


def test_labelled_rows_survive_a_reopen_and_pending_ones_do_not(tmp_path: Path) -> None:
    path = tmp_path / "feedback.db"
    first = buffer(path=path)
    first.remember(["a", "b", "c"], rows(3), T0)
    first.label({"a": 1, "c": "bird"}, T0)
    first.close()

    again = buffer(path=path)

    features, labels = again.labelled()
    np.testing.assert_array_equal(features, rows(3)[[0, 2]])
    np.testing.assert_array_equal(labels, [1, 2])
    assert again.label({"b": 0}, T0).unknown == ("b",)
    again.close()


def test_reopening_for_another_model_version_drops_the_old_labels(tmp_path: Path) -> None:
    path = tmp_path / "feedback.db"
    first = buffer(path=path)
    first.remember(["a"], rows(1), T0)
    first.label({"a": 1}, T0)
    first.close()

    other = buffer(path=path, model="b" * 64)
    assert other.counts()["labelled"] == 0
    other.close()
    assert buffer(path=path).counts()["labelled"] == 0


def test_reopening_with_a_smaller_bound_keeps_the_newest(tmp_path: Path) -> None:
    path = tmp_path / "feedback.db"
    first = buffer(path=path)
    first.remember(["a", "b", "c"], rows(3), T0)
    first.remember(["d"], rows(1, start=100), T0 + 5)
    first.label({"a": 0, "b": 1, "c": 2, "d": 0}, T0 + 10)
    first.close()

    again = buffer(path=path, max_labelled=2)

    features, labels = again.labelled()
    np.testing.assert_array_equal(features, np.vstack([rows(3)[2:], rows(1, start=100)]))
    np.testing.assert_array_equal(labels, [2, 0])
    again.close()


def test_prediction_ids_are_distinct_random_hex() -> None:
    ids = prediction_ids(1000)
    assert len(set(ids)) == 1000
    assert all(len(i) == 16 and int(i, 16) >= 0 for i in ids)
