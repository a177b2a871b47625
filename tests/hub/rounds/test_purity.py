"""hub/rounds is a pure core: no I/O, clocks or randomness (so the layout test can list it
among the pure cores), and it reaches the rest of the hub only for the exception tree."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.test_layout import IMPURE, ROOT, calls_open, imported_modules, imported_roots

MODULES = sorted((ROOT / "hub" / "rounds").glob("*.py"))
HUB_ALLOWED = {"hub.errors"}


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.name)
def test_rounds_module_is_pure(path: Path) -> None:
    assert not imported_roots(path) & (IMPURE - {"hub"}), f"{path.name} imports I/O or a sibling"
    assert not calls_open(path), f"{path.name} opens files"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.name)
def test_rounds_module_uses_no_other_hub_package(path: Path) -> None:
    outside = {
        m for m in imported_modules(path) if m.startswith("hub") and not m.startswith("hub.rounds")
    }
    assert outside <= HUB_ALLOWED, f"{path.name} imports {sorted(outside - HUB_ALLOWED)}"


def test_every_module_is_checked() -> None:
    assert len(MODULES) >= 12
