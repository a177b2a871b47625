"""API tokens: created once, stored as digests, checked by id and digest; the token CLI."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from hub import keyring
from hub.api import auth
from hub.cli import token as cli_token
from hub.errors import InvalidRequest, Unauthenticated
from hub.settings import HubSettings
from hub.store import NotFound, Store
from hub.store.dialects import open_store
from hub.store.sqlite import SqliteStore
from tests.clock import FakeClock
from tests.hub.tables import rows


@pytest.fixture
def store() -> Store:
    return SqliteStore.open(":memory:")


def issue(store: Store, role: str = "operator", name: str = "ci") -> auth.IssuedToken:
    return auth.create_token(store, role=role, name=name, actor="cli", now_ms=FakeClock().now_ms())


def test_token_reads_as_prefix_id_and_256_bit_secret(store: Store) -> None:
    issued = issue(store)
    match = auth.TOKEN_PATTERN.fullmatch(issued.token)
    assert match is not None
    assert match.group(1) == issued.id


def test_store_keeps_only_the_digest(store: Store) -> None:
    issued = issue(store)
    [row] = rows(store, "api_tokens")
    assert row["hash"] == auth.digest(issued.token)
    assert issued.token not in str(rows(store, "api_tokens"))
    assert issued.token not in str(rows(store, "audit"))


def test_authenticate_names_the_token_and_its_role(store: Store) -> None:
    issued = issue(store, role="viewer", name="grafana")
    assert auth.authenticate(store, issued.token) == auth.Principal(issued.id, "viewer", "grafana")


def test_token_with_a_changed_secret_is_refused(store: Store) -> None:
    issued = issue(store)
    last = issued.token[-1]
    forged = issued.token[:-1] + ("A" if last != "A" else "B")
    with pytest.raises(Unauthenticated):
        auth.authenticate(store, forged)


@pytest.mark.parametrize(
    "token",
    [
        pytest.param("", id="empty"),
        pytest.param("efh_0123456789ab_short", id="short-secret"),
        pytest.param("efh_0123456789ab_" + "a" * 43, id="unknown-id"),
        pytest.param("ghp_" + "a" * 40, id="someone-elses-token"),
        pytest.param("efh_' OR 1=1 --_" + "a" * 43, id="sql-in-id"),
    ],
)
def test_anything_but_a_known_token_is_unauthenticated(store: Store, token: str) -> None:
    issue(store)
    with pytest.raises(Unauthenticated):
        auth.authenticate(store, token)


def test_revoked_token_is_refused_and_revoking_again_is_harmless(store: Store) -> None:
    issued = issue(store)
    auth.revoke_token(store, issued.id, actor="cli", now_ms=1)
    auth.revoke_token(store, issued.id, actor="cli", now_ms=2)
    with pytest.raises(Unauthenticated):
        auth.authenticate(store, issued.token)


def test_revoking_an_unknown_token_is_not_found(store: Store) -> None:
    with pytest.raises(NotFound):
        auth.revoke_token(store, "0123456789ab", actor="cli", now_ms=1)


@pytest.mark.parametrize(
    ("holder", "needed", "allowed"),
    [
        ("viewer", "viewer", True),
        ("viewer", "operator", False),
        ("operator", "operator", True),
        ("operator", "admin", False),
        ("admin", "viewer", True),
        ("admin", "admin", True),
    ],
)
def test_roles_are_ordered_viewer_operator_admin(
    holder: auth.Role, needed: auth.Role, allowed: bool
) -> None:
    assert auth.Principal("x", holder, "").may(needed) is allowed


@pytest.mark.parametrize(
    ("role", "name"),
    [
        pytest.param("root", "", id="unknown-role"),
        pytest.param("admin", "x" * 65, id="long-name"),
        pytest.param("admin", "bad\nname", id="control-char"),
    ],
)
def test_create_refuses_bad_role_or_name(store: Store, role: str, name: str) -> None:
    with pytest.raises(InvalidRequest):
        auth.create_token(store, role=role, name=name, actor="cli", now_ms=1)
    assert auth.list_tokens(store) == []


def test_creation_and_revocation_are_audited_without_the_secret(store: Store) -> None:
    issued = issue(store)
    auth.revoke_token(store, issued.id, actor="token:abc", now_ms=5)
    page = store.audit.page()
    assert page.total == 2
    assert [(e.actor, e.action, e.target) for e in page.items] == [
        ("token:abc", "api_token.revoke", issued.id),
        ("cli", "api_token.create", issued.id),
    ]


# ---------------------------------------------------------------------- CLI


@pytest.fixture
def hub_dir(tmp_path: Path) -> Path:
    """A hub data directory with its key ring, as ``--data`` needs."""
    keyring.init(tmp_path / "keys", now_ms=FakeClock().now_ms())
    return tmp_path


def run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="edgefleet")
    cli_token.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    result: int = args.handler(args)
    return result


def test_cli_creates_a_token_that_the_store_accepts(
    hub_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(["hub", "token", "create", "--data", str(hub_dir), "--role", "admin"]) == 0
    token = capsys.readouterr().out.strip()
    store = SqliteStore.open(HubSettings(data_dir=hub_dir).db_path)
    assert auth.authenticate(store, token).role == "admin"


def test_cli_creates_a_token_in_the_postgres_store_named_by_database(
    hub_dir: Path, postgres_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["hub", "token", "create", "--data", str(hub_dir), "--database", postgres_url]
    assert run([*argv, "--role", "operator"]) == 0
    token = capsys.readouterr().out.strip()
    store = open_store(postgres_url)
    try:
        assert auth.authenticate(store, token).role == "operator"
    finally:
        store.close()
    assert not HubSettings(data_dir=hub_dir).db_path.exists()


def test_cli_lists_and_revokes_without_printing_secrets(
    hub_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run(["hub", "token", "create", "--data", str(hub_dir), "--role", "viewer", "--name", "ci"])
    token = capsys.readouterr().out.strip()
    token_id = auth.TOKEN_PATTERN.fullmatch(token).group(1)  # type: ignore[union-attr]

    assert run(["hub", "token", "list", "--data", str(hub_dir)]) == 0
    listing = capsys.readouterr().out
    assert token_id in listing
    assert "viewer" in listing
    assert token not in listing

    assert run(["hub", "token", "revoke", token_id, "--data", str(hub_dir)]) == 0
    run(["hub", "token", "list", "--data", str(hub_dir)])
    assert "revoked" in capsys.readouterr().out


def test_cli_revoking_an_unknown_token_is_one_line_and_status_2(
    hub_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run(["hub", "token", "create", "--data", str(hub_dir), "--role", "viewer"])
    capsys.readouterr()
    assert run(["hub", "token", "revoke", "0123456789ab", "--data", str(hub_dir)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("edgefleet hub token revoke: error:")
    assert len(err.strip().splitlines()) == 1


def test_cli_list_does_not_create_a_store_where_there_is_none(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(["hub", "token", "list", "--data", str(tmp_path / "nowhere")]) == 2
    assert not (tmp_path / "nowhere").exists()


def test_cli_hub_group_takes_more_subcommands() -> None:
    parser = argparse.ArgumentParser(prog="edgefleet")
    hub_commands = cli_token.register(parser.add_subparsers(dest="command", required=True))
    hub_commands.add_parser("serve")
    assert parser.parse_args(["hub", "serve"]).hub_command == "serve"


@pytest.mark.parametrize("argv", [["hub", "token"], ["hub", "token", "create"]])
def test_cli_help_has_examples(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        run([*argv, "--help"])
    assert "example" in capsys.readouterr().out
