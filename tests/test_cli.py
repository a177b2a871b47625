"""The one ``edgefleet`` command: every subcommand is reachable and its --help teaches."""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from contextlib import closing
from pathlib import Path

import pytest

from edgefleet.cli import build_parser
from edgefleet.clock import SystemClock
from hub import keyring
from hub.cli.common import open_store
from hub.store.rows import Device

DOCS = Path(__file__).resolve().parents[1] / "docs" / "cli.md"
TOP_LEVEL = {
    "agent", "hub", "model", "rollout", "sim", "demo", "keys", "inspect", "broker", "drift",
}  # fmt: skip


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:  # argparse offers no public walk over subparsers
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _leaves(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> list[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    children = _subcommands(parser)
    if not children:
        return [(path, parser)]
    found = []
    for name, child in children.items():
        found.extend(_leaves(child, (*path, name)))
    return found


def test_cli_offers_every_top_level_command_the_readme_names() -> None:
    assert set(_subcommands(build_parser())) == TOP_LEVEL


@pytest.mark.parametrize(
    ("path", "parser"),
    [pytest.param(p, q, id=" ".join(p)) for p, q in _leaves(build_parser())],
)
def test_cli_every_subcommand_help_shows_an_example(
    path: tuple[str, ...], parser: argparse.ArgumentParser
) -> None:
    text = parser.format_help()
    assert "example" in text, f"edgefleet {' '.join(path)} --help has no example"
    assert f"edgefleet {' '.join(path)}" in text, "the example does not show the command itself"


@pytest.mark.parametrize(
    "path", [pytest.param(p, id=" ".join(p)) for p, _ in _leaves(build_parser())]
)
def test_cli_every_subcommand_has_a_docs_entry(path: tuple[str, ...]) -> None:
    documented = set(re.findall(r"^### `edgefleet ([a-z -]+)`$", DOCS.read_text(), re.M))
    assert " ".join(path) in documented, f"docs/cli.md has no entry for edgefleet {' '.join(path)}"


def test_cli_help_runs_as_an_installed_command() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "edgefleet.cli", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "edgefleet demo" in result.stdout


def test_a_reader_that_goes_away_ends_the_command_quietly(tmp_path: Path) -> None:
    """``edgefleet hub device list | head -1`` with more output than a pipe holds."""
    keyring.init(tmp_path / "keys", now_ms=SystemClock().now_ms())
    with closing(open_store(tmp_path, create=True)) as store:
        for i in range(3000):
            store.devices.add(Device(f"device-{i:05d}", "11" * 32, "active", first_seen=0))
    process = subprocess.Popen(
        [sys.executable, "-m", "edgefleet.cli", "hub", "device", "list", "--data", str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert process.stdout is not None
    assert process.stderr is not None
    assert process.stdout.readline().startswith(b"DEVICE")
    process.stdout.close()  # what `head -1` does after one line
    err = process.stderr.read().decode()
    assert process.wait(timeout=60) == 1
    assert err == ""
