"""The drift gates' per-device inputs: prediction drift and label-free accuracy, computed by
the drift subsystem's own scores from the data windows a device sent (docs/rollouts.md,
"Gates: their inputs"; docs/drift.md).

The functions here are pure (numpy and the drift core); :mod:`hub.fleet.rollout_inputs`
feeds them the windows it read and the references it loaded, and the seeded simulation
in ``tests/hub/rollouts_shell/test_drift_gates.py`` feeds them simulated windows.

- **prediction drift** of a device: the PSI (:func:`hub.drift.scores.score`, pseudo-count
  ½ per bin) of its predictions summed over the gate window against a reference's
  prediction proportions. Which reference: for *class* predictions, the version the
  device ran before the rollout (a canary's ``previous_version``, a control's own), so
  both arms are measured against the same class mix and a new version that moves
  predictions from one class to another shows up as the canaries' extra drift; for
  *binned* predictions (a regression), the version the device runs, whose quantile edges
  its counts are over (another version's edges differ, so its counts cannot be compared
  with them: such a gate sees only a version drifting from its own registration). PSI's
  no-drift level, about ``(b - 1)(1/n + 1/m)``, is the same in both arms when they serve
  alike, and the gate compares the arms, not either with zero.
- **label-free accuracy** of a device: the mean calibrated top-label confidence of its
  predictions (CBPE: ``Σ confidence / Σ predictions`` of its confidence sketches), the
  estimate docs/drift.md describes, per device.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from hub.drift.policy import DriftPolicy
from hub.drift.reference import PREDICTION, Reference
from hub.drift.scores import score

Ints = npt.NDArray[np.int64]


@dataclass(frozen=True)
class PredictionSums:
    """A device's predictions summed over its windows: ``kind``, ``counts`` per class or
    bin, and the out-of-range and NaN counts."""

    kind: str
    counts: tuple[int, ...]
    underflow: int = 0
    overflow: int = 0
    nan: int = 0


def summed_predictions(bodies: Sequence[Mapping[str, Any]]) -> PredictionSums | None:
    """The windows' prediction sketches added up; None when none has one (or their kinds
    or sizes disagree: windows of one version never do)."""
    total: PredictionSums | None = None
    for body in bodies:
        sketch = body.get("predictions")
        if not isinstance(sketch, Mapping):
            continue
        counts = tuple(int(c) for c in sketch.get("counts") or ())
        extra = (int(sketch.get(k, 0)) for k in ("underflow", "overflow", "nan"))
        this = PredictionSums(str(sketch.get("kind")), counts, *extra)
        if total is None:
            total = this
        elif (total.kind, len(total.counts)) != (this.kind, len(this.counts)):
            return None
        else:
            total = PredictionSums(
                total.kind,
                tuple(a + b for a, b in zip(total.counts, this.counts, strict=True)),
                total.underflow + this.underflow,
                total.overflow + this.overflow,
                total.nan + this.nan,
            )
    return total


def label_free_accuracy(bodies: Sequence[Mapping[str, Any]]) -> float | None:
    """Mean calibrated top-label confidence over the windows' confidence sketches (None
    without predictions in them)."""
    predictions = confidence = 0.0
    for body in bodies:
        sketch = body.get("confidence")
        if not isinstance(sketch, Mapping):
            continue
        predictions += sum(float(n) for n in sketch.get("counts") or ())
        confidence += sum(float(c) for c in sketch.get("confidence") or ())
    if predictions <= 0:
        return None
    return min(max(confidence / predictions, 0.0), 1.0)


def reference_version(kind: str, running: int, previous: int | None) -> int:
    """Which version's reference a device's predictions are scored against (module
    docstring): the one it ran before the rollout for classes, its own for bins."""
    return previous if kind == "classes" and previous is not None else running


def prediction_drift(
    sums: Mapping[str, PredictionSums], reference: Reference, policy: DriftPolicy | None = None
) -> dict[str, float]:
    """PSI of each device's predictions against ``reference``, for the devices whose sums
    fit it (same kind and size) and hold at least one finite prediction."""
    if PREDICTION not in reference.names:
        return {}
    row = reference.index(PREDICTION)
    size, kind = int(reference.bins[row]), reference.kinds[row]
    ids = [d for d, s in sums.items() if s.kind == kind and len(s.counts) == size]
    if not ids:
        return {}
    width = reference.width
    counts: Ints = np.zeros((len(ids), *reference.shape), dtype=np.int64)
    for i, device_id in enumerate(ids):
        s = sums[device_id]
        counts[i, row, :size] = s.counts
        counts[i, row, width:] = (s.underflow, s.overflow, s.nan)
    scores = score(counts, reference, policy or DriftPolicy())
    return {
        device_id: float(scores.psi[i, row])
        for i, device_id in enumerate(ids)
        if scores.n[i, row] > 0 and np.isfinite(scores.psi[i, row])
    }
