"""hub/drift is a pure core: no I/O, clock or randomness of its own, a pinned surface."""

from __future__ import annotations

from pathlib import Path

import pytest

import hub.drift
from tests.test_layout import IMPURE, ROOT, calls_open, imported_modules, imported_roots

MODULES = sorted((ROOT / "hub" / "drift").glob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.name)
def test_drift_module_is_pure(path: Path) -> None:
    assert not imported_roots(path) & (IMPURE - {"hub"}), f"{path.name} imports I/O"
    assert not calls_open(path), f"{path.name} opens files"
    hub_imports = {m for m in imported_modules(path) if m.split(".")[0] == "hub"}
    allowed = {m for m in hub_imports if m.startswith("hub.drift") or m == "hub.errors"}
    assert hub_imports == allowed, f"{path.name} reaches into the hub's shell: {hub_imports}"


def test_public_surface_is_pinned() -> None:
    assert hub.drift.__all__ == sorted(hub.drift.__all__, key=lambda n: (not n.isupper(), n))
    assert set(hub.drift.__all__) == {
        "FLEET", "Aggregate", "Alert", "Assessment", "BucketKey", "Calibration", "Cohort",
        "DeviceBucket", "DeviceBucketKey", "DriftPolicy", "FeatureScore", "Finding", "Open",
        "Reference", "Resolve", "Retention", "StartRound", "Update", "assess",
        "choose_calibration", "empty", "estimate", "evaluate", "from_window", "merge",
        "merge_all", "route", "score", "seal", "sketch", "step",
    }  # fmt: skip
