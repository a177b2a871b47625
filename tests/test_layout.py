"""The dependency rules of the layout, checked on every run (they drift when nothing checks).

protocol/ is pure: no I/O, clocks or randomness, and no imports of agent/hub/simulator.
agent/ and hub/ meet only through protocol/ and the shared layer (edgefleet/, below both),
which imports neither; only the command (edgefleet/cli.py) stands above all of them.

Inside agent/ and hub/, the pure cores (:data:`PURE_CORES`) import no I/O and no agent or
hub module that is not itself a pure core, so purity holds transitively; a module that
calls itself pure in its docstring's first line must be one. Every SQL statement lives
in hub/store/: nothing else in hub/ imports a database driver.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
IMPURE = {
    "agent", "hub", "simulator", "paho", "sqlite_utils", "sqlite3", "fastapi", "uvicorn",
    "socket", "apscheduler", "onnxruntime", "os", "pathlib", "shutil", "time", "random",
    "secrets", "subprocess", "threading", "asyncio", "httpx", "tempfile",
}  # fmt: skip


def imported_roots(path: Path) -> set[str]:
    return {name.split(".")[0] for name in imported_modules(path)}


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
    """Every module ``path`` imports at run time (``if TYPE_CHECKING:`` blocks are for the
    type checker only and do not count)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    type_only = {
        id(inner)
        for node in ast.walk(tree)
        if isinstance(node, ast.If)
        and ast.unparse(node.test) in {"TYPE_CHECKING", "typing.TYPE_CHECKING"}
        for statement in node.body
        for inner in ast.walk(statement)
    }
    names: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in type_only:
            continue
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


# ---------------------------------------------------------------------- pure cores

PURE_CORES = (
    "agent/__init__.py",
    "agent/errors.py",
    "agent/trainer.py",  # the head's training, numpy only
    "agent/slot_table.py",  # the model slots as a state table, no disk
    "agent/shadow_tally.py",  # a shadow run's agreement counts
    "edgefleet/__init__.py",
    "edgefleet/stats.py",  # percentiles both sides report the same way
    "hub/__init__.py",
    "hub/errors.py",
    "hub/health.py",  # device health: the vocabulary and its derivation
    "hub/fleet/__init__.py",
    "hub/fleet/desired_plan.py",  # desired state: may it be set, must it be re-signed
    "hub/fleet/identity.py",  # device statuses, the enrollment decision
    "hub/fleet/reconcile_plan.py",  # the reconciler's plan
    "hub/fleet/releases.py",  # the fleet documents' pure part: payloads on the release list
    "hub/ingest/__init__.py",
    "hub/ingest/rules.py",  # one frame in, one verdict out
    "hub/ingest/security.py",  # alerts apart from garbage; takeovers and clones
    "hub/store/__init__.py",
    "hub/store/interface.py",  # the store's contract
    "hub/store/rows.py",  # the typed rows
    "hub/store/round_rows.py",  # the typed rows of federated rounds
    "hub/store/drift_rows.py",  # the drift concern's typed rows
    "hub/store/rollout_rows.py",  # the rollouts' part of the contract
    "hub/store/lease_rows.py",  # the leases' part of the contract
    "hub/store/session_rows.py",  # the dashboard sessions' part of the contract
    "hub/transport/__init__.py",
    "hub/transport/broker_access.py",  # who may touch which topic, for both brokers
    "hub/transport/mosquitto.py",  # Mosquitto's configuration as text
    "hub/transport/mqtt_packets.py",  # MQTT 3.1.1 packets as values
    # whole packages that are pure cores: staged rollouts (spec, cohorts, gates, tables,
    # planner), fleet drift (merging, scores, alerts) and federated rounds (screening,
    # strategies, lifecycle); their shells live beside them in the hub's other packages
    *sorted(
        p.relative_to(ROOT).as_posix()
        for package in ("rollouts", "drift", "rounds")
        for p in (ROOT / "hub" / package).glob("*.py")
    ),
)
"""Modules of agent/ and hub/ that do no I/O; the shells around them do."""

SIDES = ("agent", "hub", "edgefleet")


def module_path(name: str) -> Path | None:
    """The file of an agent/hub/edgefleet module (its ``__init__.py`` for a package)."""
    base = ROOT / Path(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def own_imports(path: Path) -> set[str]:
    """The agent/hub/edgefleet files that importing ``path`` runs: each imported module
    and every package on its way (``hub.store.rows`` runs ``hub/store/__init__.py``)."""
    files: set[str] = set()
    for name in imported_modules(path):
        parts = name.split(".")
        if parts[0] not in SIDES:
            continue
        for depth in range(1, len(parts) + 1):
            found = module_path(".".join(parts[:depth]))
            if found is not None:
                files.add(found.relative_to(ROOT).as_posix())
    return files


@pytest.mark.parametrize("name", PURE_CORES)
def test_pure_core_imports_no_io_and_only_pure_cores(name: str) -> None:
    path = ROOT / name
    assert not imported_roots(path) & (IMPURE - set(SIDES)), f"{name} imports I/O"
    assert not calls_open(path), f"{name} opens files"
    impure = sorted(own_imports(path) - set(PURE_CORES) - {name})
    assert not impure, f"{name} imports modules that are not pure cores: {impure}"


def calls_itself_pure(path: Path) -> bool:
    """Whether the module docstring's first line says it is pure ("pure core", "(pure)",
    "pure functions"), not merely that it talks about something pure."""
    docstring = ast.get_docstring(ast.parse(path.read_text())) or ""
    summary = docstring.strip().splitlines()[0].lower() if docstring.strip() else ""
    return re.search(r"\bpure\b(?!-)", summary) is not None


@pytest.mark.parametrize(
    "path",
    [p for side in SIDES for p in modules(side)],
    ids=lambda p: p.relative_to(ROOT).as_posix(),
)
def test_a_module_that_calls_itself_pure_is_held_to_it(path: Path) -> None:
    if calls_itself_pure(path):
        assert path.relative_to(ROOT).as_posix() in PURE_CORES, "add it to PURE_CORES"


@pytest.mark.parametrize("path", modules("hub"), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_only_the_store_speaks_sql(path: Path) -> None:
    if path.relative_to(ROOT).parts[:2] == ("hub", "store"):
        return
    drivers = imported_roots(path) & {"sqlite3", "sqlite_utils", "psycopg", "sqlalchemy"}
    assert not drivers, f"{path.name} imports a database driver: only hub/store/ may"


def test_the_store_contract_names_no_table_and_takes_no_sql() -> None:
    from hub.store.interface import Store

    generic = {"query", "table", "find", "get", "insert", "update", "upsert", "count", "execute"}
    members = {name for name in dir(Store) if not name.startswith("_")}
    assert not members & generic, "the Store facade offers generic table access"
    assert members == {
        "api_tokens", "atomic", "audit", "broker_credentials", "close", "counters", "drift",
        "desired", "devices", "enrollment_tokens", "immediate", "ping", "registry", "uplink",
        "rollouts", "rounds", "ui_sessions", "leases", "for_update",
    }  # fmt: skip


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
