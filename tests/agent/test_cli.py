"""``edgefleet agent``: the parser register() builds, init-config, and one-line errors."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from agent import cli
from agent.config import load_config
from edgefleet.lock import LOCK_FILE, DirectoryLock


@pytest.fixture
def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="edgefleet")
    root.add_argument("--log-level", default="INFO")
    cli.register(root.add_subparsers(dest="command", required=True))
    return root


def test_cli_agent_run_takes_a_config_file(parser: argparse.ArgumentParser) -> None:
    args = parser.parse_args(["agent", "run", "--config", "agent.toml"])
    assert (args.handler, args.config) == (cli.run_agent, Path("agent.toml"))


def test_cli_agent_run_help_teaches_with_an_example(
    parser: argparse.ArgumentParser, capsys
) -> None:
    with pytest.raises(SystemExit):
        parser.parse_args(["agent", "run", "--help"])
    assert "edgefleet agent run --config /etc/edgefleet/agent.toml" in capsys.readouterr().out


def test_cli_init_config_writes_an_example_that_loads(
    parser: argparse.ArgumentParser, tmp_path: Path
) -> None:
    target = tmp_path / "agent.toml"
    args = parser.parse_args(["agent", "init-config", "--output", str(target)])
    assert args.handler(args) == 0
    assert load_config(target, env={}).device_id == "sensor-0001"


def test_cli_init_config_keeps_an_existing_file(
    parser: argparse.ArgumentParser, tmp_path: Path
) -> None:
    target = tmp_path / "agent.toml"
    target.write_text("mine")
    args = parser.parse_args(["agent", "init-config", "--output", str(target)])
    assert args.handler(args) == 1
    assert target.read_text() == "mine"


def test_cli_run_reports_a_bad_config_in_one_line(
    parser: argparse.ArgumentParser, tmp_path: Path, capsys, monkeypatch
) -> None:
    monkeypatch.delenv("EDGEFLEET_AGENT_DEVICE_ID", raising=False)
    config = tmp_path / "agent.toml"
    config.write_text('device_id = "d"\nstate_dir = "s"\nhttp_host = "0.0.0.0"\n')
    args = parser.parse_args(["agent", "run", "--config", str(config)])
    assert args.handler(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("edgefleet agent: error: http_host '0.0.0.0'")
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_cli_run_on_a_state_dir_in_use_exits_1_in_one_line_touching_nothing(
    parser: argparse.ArgumentParser, tmp_path: Path, capsys, monkeypatch
) -> None:
    monkeypatch.delenv("EDGEFLEET_AGENT_DEVICE_ID", raising=False)
    state = tmp_path / "state"
    config = tmp_path / "agent.toml"
    config.write_text(f'device_id = "d"\nstate_dir = "{state}"\nhttp_port = 0\n')
    with DirectoryLock(state):  # the live agent
        args = parser.parse_args(["agent", "run", "--config", str(config)])
        assert args.handler(args) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"edgefleet agent: error: state_dir {state} is in use by process ")
    assert len(err.strip().splitlines()) == 1
    assert [p.name for p in state.iterdir()] == [LOCK_FILE]  # no key, no outbox, no trust
