"""Labelled feedback for local retraining: what the head saw per prediction, and its label.

At predict time the agent remembers, per prediction id, the row the head saw (its input
features, float32) and the time (:meth:`FeedbackBuffer.remember`). When the device's
application later knows the truth it posts labels by id (:meth:`FeedbackBuffer.label`);
the labelled rows are what :mod:`agent.trainer` learns from.

Bounds. Unlabelled rows are kept in memory only, at most ``max_pending`` of them and for
at most ``pending_ttl_ms``; the oldest go first. Labelled rows are kept up to
``max_labelled``, the least recently labelled going first. A label for an id that is
unknown, expired or evicted is reported back in :attr:`FeedbackReport.unknown`, never
an error for the whole batch; a label the model cannot take (a class it does not have,
a non-finite target) refuses the whole batch with :class:`~agent.errors.InvalidLabel`
(422), before anything is stored.

What is stored, and what survives a restart. Only the head's input is kept, never the
request's raw inputs: for a network that is an intermediate activation, but for a
linear model (LogisticRegression, LinearRegression) the head's input *is* the model
input, so those rows stay on the device in the clear (they never leave it: only deltas
and sketches do). Labelled rows are written to a SQLite file (``path``) as they arrive,
tagged with the base model's sha256; on reopen the rows of the same base version come
back and any others are deleted, because another version's features mean nothing to
this head. Unlabelled rows do not survive a restart: a label for a prediction made
before it is reported as unknown.
"""

from __future__ import annotations

import logging
import math
import secrets
import sqlite3
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt
from sqlite_utils import Database

from agent.errors import InvalidLabel
from protocol.manifest import Head

logger = logging.getLogger(__name__)

MAX_ID_LENGTH = 128
Floats = npt.NDArray[np.float32]


def prediction_ids(count: int) -> list[str]:
    """``count`` fresh random prediction ids (16 hex digits).

    Random rather than a counter: a counter restarting after a reboot would let a late
    label attach to a different prediction with a reused id.
    """
    return [secrets.token_hex(8) for _ in range(count)]


@dataclass(frozen=True)
class LabelSpec:
    """What a label must look like for one head.

    Classification: a class index ``0..n_classes-1`` (an integral number), or a class
    name from the manifest's ``classes``. Regression: a finite number, or a list of
    ``n_outputs`` finite numbers.
    """

    task: Literal["classification", "regression"]
    n_outputs: int
    classes: tuple[str, ...] = ()

    @classmethod
    def for_head(cls, head: Head, classes: tuple[str, ...] = ()) -> LabelSpec:
        return cls(head.task, head.n_outputs, classes)

    @property
    def n_classes(self) -> int:
        """Classes a classifier tells apart: a binary head has one output and two classes."""
        return max(2, self.n_outputs)

    @property
    def width(self) -> int:
        """Numbers stored per label."""
        return self.n_outputs if self.task == "regression" else 1

    def parse(self, key: str, value: object) -> Floats:
        """The label as ``width`` float32 values.

        Raises:
            InvalidLabel: not a label of this model; the message names ``key``.
        """
        if self.task == "classification":
            return np.array([self._class_index(key, value)], np.float32)
        values = value if isinstance(value, list) else [value]
        if len(values) != self.n_outputs or not all(_is_number(v) for v in values):
            raise InvalidLabel(f"label for {key[:40]!r}: expected {self._expected()}")
        row = np.array(values, np.float64)
        with np.errstate(over="ignore"):
            row32 = row.astype(np.float32)
        if not np.isfinite(row32).all():
            raise InvalidLabel(f"label for {key[:40]!r} is not finite in float32")
        return row32

    def _class_index(self, key: str, value: object) -> int:
        if isinstance(value, str) and value in self.classes:
            return self.classes.index(value)
        if _is_number(value):
            number = float(value)  # type: ignore[arg-type]
            if number.is_integer() and 0 <= number < self.n_classes:
                return int(number)
        raise InvalidLabel(f"label for {key[:40]!r}: expected {self._expected()}")

    def _expected(self) -> str:
        if self.task == "regression":
            return "a finite number" if self.n_outputs == 1 else f"{self.n_outputs} finite numbers"
        names = f" or one of {list(self.classes)[:20]}" if self.classes else ""
        return f"a class index in [0, {self.n_classes}){names}"


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class FeedbackLimits:
    """Bounds of a feedback buffer (units in the names)."""

    max_pending: int = 10_000
    pending_ttl_ms: int = 3_600_000
    max_labelled: int = 10_000

    def __post_init__(self) -> None:
        if min(self.max_pending, self.pending_ttl_ms, self.max_labelled) < 1:
            raise ValueError("feedback bounds must be positive")


@dataclass(frozen=True)
class FeedbackReport:
    """What became of one batch of labels: ids accepted, and ids unknown or expired."""

    accepted: tuple[str, ...]
    unknown: tuple[str, ...]


@dataclass(frozen=True)
class _Row:
    at_ms: int
    features: Floats
    label: Floats | None = None


class FeedbackBuffer:
    """Bounded per-prediction memory of head features, and the labelled set.

    Thread-safe: predictions, feedback and the retrain job may call it concurrently.
    ``path=None`` keeps everything in memory (tests, or a device without storage).
    """

    def __init__(
        self,
        spec: LabelSpec,
        n_features: int,
        *,
        model: str,
        path: Path | None = None,
        limits: FeedbackLimits | None = None,
    ) -> None:
        self.spec = spec
        self.n_features = n_features
        self.model = model
        self.limits = limits or FeedbackLimits()
        self._lock = threading.Lock()
        self._pending: OrderedDict[str, _Row] = OrderedDict()
        self._labelled: OrderedDict[str, _Row] = OrderedDict()
        self._generation = 0
        self._db: Database | None = None
        if path is not None:
            self._db = self._open(path)
            self._load()

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    @property
    def generation(self) -> int:
        """Changes whenever the labelled set does, so a retrain job can skip a rerun."""
        with self._lock:
            return self._generation

    def counts(self) -> dict[str, int]:
        """``pending`` (unlabelled, in memory) and ``labelled`` rows."""
        with self._lock:
            return {"pending": len(self._pending), "labelled": len(self._labelled)}

    def remember(self, ids: Sequence[str], features: np.ndarray, now_ms: int) -> None:
        """Keep each prediction's head features until it is labelled, evicted or expired.

        Rows with NaN or infinite features cannot be trained on and are not kept (their
        labels will be reported as unknown).

        Raises:
            ValueError: ``features`` is not one row of ``n_features`` per id (a caller's bug).
        """
        rows = np.asarray(features, np.float32).reshape(len(ids), -1)
        if rows.shape[1] != self.n_features:
            raise ValueError(f"features {rows.shape} are not {len(ids)} rows of {self.n_features}")
        finite = np.asarray(np.isfinite(rows).all(axis=1), dtype=bool)
        with self._lock:
            for key, row, ok in zip(ids, rows, finite, strict=True):
                if ok and len(key) <= MAX_ID_LENGTH:
                    self._pending.pop(key, None)
                    self._pending[key] = _Row(now_ms, row.copy())
            self._expire(now_ms)
            while len(self._pending) > self.limits.max_pending:
                self._pending.popitem(last=False)

    def label(self, labels: Mapping[str, object], now_ms: int) -> FeedbackReport:
        """Attach labels to remembered predictions (or replace an earlier label).

        All labels are checked before any is stored, so a refused batch changes nothing.

        Raises:
            InvalidLabel: a label the model cannot take; the message names its id.
        """
        parsed = {key: self.spec.parse(key, value) for key, value in labels.items()}
        accepted: list[str] = []
        unknown: list[str] = []
        with self._lock:
            self._expire(now_ms)
            stored: list[tuple[str, _Row]] = []
            for key, value in parsed.items():
                row = self._pending.pop(key, None) or self._labelled.pop(key, None)
                if row is None:
                    unknown.append(key)
                    continue
                labelled = _Row(row.at_ms, row.features, value)
                self._labelled[key] = labelled
                stored.append((key, labelled))
                accepted.append(key)
            evicted = self._evict_labelled()
            if stored or evicted:
                self._generation += 1
                self._persist(stored, evicted)
        return FeedbackReport(tuple(accepted), tuple(unknown))

    def labelled(self) -> tuple[Floats, np.ndarray]:
        """The labelled rows, oldest first: features float32 ``(n, n_features)`` and labels
        (int64 class indices ``(n,)``, or float32 targets ``(n, n_outputs)``)."""
        with self._lock:
            rows = list(self._labelled.values())
        features = np.array([r.features for r in rows], np.float32).reshape(-1, self.n_features)
        values = np.array([r.label for r in rows], np.float32).reshape(-1, self.spec.width)
        if self.spec.task == "classification":
            return features, values[:, 0].astype(np.int64)
        return features, values

    # ------------------------------------------------------------------ internals

    def _expire(self, now_ms: int) -> None:
        horizon = now_ms - self.limits.pending_ttl_ms
        while self._pending:
            key, row = next(iter(self._pending.items()))
            if row.at_ms >= horizon:
                break
            del self._pending[key]

    def _evict_labelled(self) -> list[str]:
        evicted = []
        while len(self._labelled) > self.limits.max_labelled:
            key, _ = self._labelled.popitem(last=False)
            evicted.append(key)
        return evicted

    def _open(self, path: Path) -> Database:
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
        db = Database(conn)
        db.enable_wal()
        db.table("labelled").create(
            {"id": str, "model": str, "at_ms": int, "features": bytes, "label": bytes},
            pk="id",
            if_not_exists=True,
        )
        return db

    def _load(self) -> None:
        assert self._db is not None
        stale = self._db.execute("DELETE FROM labelled WHERE model != ?", [self.model]).rowcount
        if stale:
            logger.info("dropped %d labelled rows of another model version", stale)
        query = "SELECT id, at_ms, features, label FROM labelled ORDER BY rowid"  # label order
        width = (4 * self.n_features, 4 * self.spec.width)
        misfits = []
        for key, at_ms, features, label in self._db.execute(query).fetchall():
            if (len(features), len(label)) != width:  # another head shape: cannot be used
                misfits.append(key)
                continue
            row = _Row(
                at_ms, np.frombuffer(features, "<f4").copy(), np.frombuffer(label, "<f4").copy()
            )
            self._labelled[key] = row
        self._persist([], misfits + self._evict_labelled())

    def _persist(self, stored: list[tuple[str, _Row]], evicted: list[str]) -> None:
        if self._db is None:
            return
        records = [
            (key, self.model, row.at_ms, row.features.astype("<f4").tobytes(), _label_bytes(row))
            for key, row in stored
        ]
        with self._db.conn:
            self._db.conn.execute("BEGIN")
            self._db.conn.executemany(
                "INSERT OR REPLACE INTO labelled (id, model, at_ms, features, label)"
                " VALUES (?, ?, ?, ?, ?)",
                records,
            )
            self._db.conn.executemany("DELETE FROM labelled WHERE id = ?", [[k] for k in evicted])


def _label_bytes(row: _Row) -> bytes:
    assert row.label is not None
    return row.label.astype("<f4").tobytes()


__all__ = [
    "FeedbackBuffer",
    "FeedbackLimits",
    "FeedbackReport",
    "LabelSpec",
    "prediction_ids",
]
