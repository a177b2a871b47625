"""The dependency rules of the layout, checked on every run (they drift when nothing checks).

protocol/ is pure: no I/O, clocks or randomness, and no imports of agent/hub/simulator.
agent/ and hub/ meet only through protocol/ and the shared layer (edgefleet/, below both),
which imports neither; only the command (edgefleet/cli.py) stands above all of them.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
IMPURE = {
    "agent", "hub", "simulator", "paho", "sqlite_utils", "sqlite3", "fastapi", "uvicorn",
    "socket", "apscheduler", "onnxruntime", "os", "pathlib", "shutil", "time", "random",
    "secrets", "subprocess", "threading", "asyncio", "httpx", "tempfile",
}  # fmt: skip


def imported_roots(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    roots: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


def calls_open(path: Path) -> bool:
    tree = ast.parse(path.read_text())
    return any(
        isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == "open"
        for n in ast.walk(tree)
    )


def modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


@pytest.mark.parametrize("path", modules("protocol"), ids=lambda p: p.name)
def test_protocol_module_is_pure(path: Path) -> None:
    assert not imported_roots(path) & IMPURE, f"{path.name} imports I/O or a sibling package"
    assert not calls_open(path), f"{path.name} opens files"


@pytest.mark.parametrize(
    ("package", "forbidden"), [("agent", "hub"), ("hub", "agent")], ids=["agent", "hub"]
)
def test_agent_and_hub_never_import_each_other(package: str, forbidden: str) -> None:
    offenders = [p.name for p in modules(package) if forbidden in imported_roots(p)]
    assert not offenders, f"{package}/ modules importing {forbidden}/: {offenders}"


COMMAND = {"cli.py", "__main__.py"}


@pytest.mark.parametrize(
    "path", [p for p in modules("edgefleet") if p.name not in COMMAND], ids=lambda p: p.name
)
def test_shared_layer_imports_neither_side(path: Path) -> None:
    assert not imported_roots(path) & {"agent", "hub", "simulator"}, (
        f"edgefleet/{path.name} is below agent/ and hub/ and may import neither"
    )


@pytest.mark.parametrize("package", ["agent", "hub", "protocol"])
def test_nothing_below_the_command_imports_it(package: str) -> None:
    offenders = [
        p.name
        for p in modules(package)
        if "simulator" in imported_roots(p) or "edgefleet.cli" in imported_modules(p)
    ]
    assert not offenders, f"{package}/ modules importing the simulator or the command: {offenders}"


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_every_top_level_package_is_installed_and_type_checked() -> None:
    """A package missing from pyproject.toml imports fine under pytest (the repository is on
    sys.path) and fails only in the installed ``edgefleet`` script."""
    import tomllib

    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    included = config["tool"]["setuptools"]["packages"]["find"]["include"]
    checked = config["tool"]["mypy"]["files"]
    packages = sorted(
        p.parent.name for p in ROOT.glob("*/__init__.py") if p.parent.name not in {"tests", "bench"}
    )
    for package in packages:
        assert f"{package}*" in included, f"{package}/ is not installed by pyproject.toml"
        assert package in checked, f"{package}/ is not type-checked by mypy"
