"""hub/rollouts is a pure core (so the layout test can list it among PURE_CORES): no I/O,
clock, randomness or store, and of the hub only its error tree; its surface is pinned."""

from __future__ import annotations

from pathlib import Path

import pytest

import hub.rollouts
from tests.test_layout import IMPURE, calls_open, imported_modules, imported_roots, modules

HUB_ALLOWED = ("hub.errors", "hub.rollouts")


@pytest.mark.parametrize("path", modules("hub/rollouts"), ids=lambda p: p.name)
def test_rollouts_module_is_pure(path: Path) -> None:
    assert not imported_roots(path) & (IMPURE - {"hub"}), f"{path.name} imports I/O"
    assert not calls_open(path), f"{path.name} opens files"
    hub_imports = {m for m in imported_modules(path) if m.split(".")[0] == "hub"}
    assert all(m.startswith(HUB_ALLOWED) for m in hub_imports), hub_imports


def test_exported_names_are_sorted_and_exist() -> None:
    assert hub.rollouts.__all__ == sorted(hub.rollouts.__all__)
    assert all(hasattr(hub.rollouts, name) for name in hub.rollouts.__all__)
