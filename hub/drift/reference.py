"""A model's no-drift reference as arrays: what every window of one scope is compared with.

Registration (:mod:`hub.registry.profile`) stores the reference as a
:class:`~protocol.manifest.Profile`: per input feature, quantile bin edges and the share of
the reference rows in each bin; the prediction distribution (class shares, or bins of the
first score column); and the number of reference rows ``m``. The drift tests need these
as one padded matrix, one row per feature plus a last row for the predictions, so that a
window's counts become an ``int64`` array of the same shape and every score is a handful
of numpy operations over all features at once.

Row layout of a count matrix (``width`` is the most bins any row has)::

    [0, bins[r])          the row's bins, in the reference's order
    [bins[r], width)      padding, always zero
    width, width+1        underflow, overflow (values outside the reference edges; for
                          class predictions, overflow counts an argmax past the known classes)
    width+2               NaN

A *scope* is the set of windows compared with one reference: every device running a
model version with this profile. :attr:`Reference.digest` names it, so versions
registered from the same reference data with the same prediction profile share a scope
(and their devices are compared together, with ``version`` as one cohort dimension).
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

from hub.drift.errors import UnusableReference
from protocol import canonical
from protocol.manifest import Profile

Floats = npt.NDArray[np.float64]
Ints = npt.NDArray[np.int64]
Kind = Literal["bins", "classes"]

PREDICTION = "@prediction"
"""The row name of the predictions (features may not use it)."""
EXTRA = 3  # underflow, overflow, nan after the padded bins
DEFAULT_CONFIDENCE_BINS = 10


@dataclass(frozen=True, eq=False)
class Reference:
    """The reference of one scope, padded to ``width`` bins per row (module docstring).

    ``rows`` is the number of reference rows ``m`` the proportions were measured on: the
    tests need it, because the reference is a sample too (PSI's no-drift spread is
    ``(1/n + 1/m)``, not ``1/n``).
    """

    names: tuple[str, ...]
    kinds: tuple[Kind, ...]
    bins: Ints
    proportions: Floats
    rows: int
    features: int
    confidence_bins: int
    digest: str

    @property
    def width(self) -> int:
        return int(self.proportions.shape[1])

    @property
    def shape(self) -> tuple[int, int]:
        """Shape of one window's count matrix: rows x (width + underflow, overflow, NaN)."""
        return len(self.names), self.width + EXTRA

    def index(self, name: str) -> int:
        return self.names.index(name)

    @classmethod
    def from_profile(cls, profile: Profile, *, confidence_bins: int | None = None) -> Reference:
        """The arrays of ``profile`` (``confidence_bins``: the profile's unless given).

        The digest hashes the profile without its calibration fields when they are at
        their defaults, so a version registered before profiles had them keeps its scope.

        Raises:
            UnusableReference: no reference rows, no features and no predictions, a
                feature named like the prediction row, or duplicate feature names.
        """
        if profile.rows < 2:
            raise UnusableReference(
                "the profile records fewer than 2 reference rows; register the model again "
                "so its profile counts them"
            )
        names = [f.name for f in profile.features]
        if PREDICTION in names or len(set(names)) != len(names):
            raise UnusableReference(f"feature names must be distinct and not {PREDICTION!r}")
        if confidence_bins is None:
            confidence_bins = profile.confidence_bins
        if confidence_bins < 1:
            raise UnusableReference("confidence_bins must be at least 1")
        rows: list[tuple[float, ...]] = [f.proportions for f in profile.features]
        kinds: list[Kind] = ["bins"] * len(rows)
        if profile.predictions is not None:
            names.append(PREDICTION)
            rows.append(profile.predictions.proportions)
            kinds.append(profile.predictions.kind)
        if not rows:
            raise UnusableReference("the profile has neither features nor predictions")
        width = max(len(r) for r in rows)
        proportions = np.zeros((len(rows), width))
        for i, row in enumerate(rows):
            values = np.asarray(row, dtype=np.float64)
            total = values.sum()
            if total <= 0:
                raise UnusableReference(f"row {names[i]!r} has no reference mass")
            proportions[i, : len(values)] = values / total
        hashed = asdict(profile)
        if profile.calibration is None:
            del hashed["calibration"]
        if profile.confidence_bins == DEFAULT_CONFIDENCE_BINS:
            del hashed["confidence_bins"]
        digest = hashlib.sha256(
            canonical.dumps({"profile": hashed, "confidence_bins": confidence_bins})
        ).hexdigest()
        return cls(
            names=tuple(names),
            kinds=tuple(kinds),
            bins=np.array([len(r) for r in rows], dtype=np.int64),
            proportions=proportions,
            rows=profile.rows,
            features=len(profile.features),
            confidence_bins=confidence_bins,
            digest=digest,
        )


__all__ = ["EXTRA", "PREDICTION", "Reference"]
