"""Exit statuses as docs/cli.md promises, over every command that talks to the hub.

2: the caller must change something (no hub named, a bad token, a name the hub does not
know); 1: something outside failed (nothing listens at the URL, the hub fails with a
5xx). Always one line on stderr, never a traceback. The hubs here are real: the REST app
served by uvicorn on a loopback port over a real store.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgefleet.cli import main
from hub.transport.http_server import HttpServer
from tests.brokers import free_port
from tests.clock import FakeClock
from tests.hub.test_api import Api, make_api
from tests.hub.test_registry import reference
from tests.models import gemm_classifier

COMMANDS: list[list[str]] = [
    ["model", "list"],
    ["model", "show", "demo"],
    ["model", "pending", "--out", "{tmp}/pending.json"],
    ["model", "publish", "{tmp}/signed.json"],
    ["model", "register", "{tmp}/m.onnx", "--name", "demo", "--reference", "{tmp}/r.npz"],
    ["rollout", "set", "--device", "pump-1", "--model", "demo", "--version", "1"],
    ["hub", "device", "list"],
    ["hub", "device", "show", "pump-1"],
    ["hub", "device", "history", "pump-1", "--kind", "deltas"],
    ["hub", "device", "approve", "pump-1"],
    ["hub", "device", "revoke", "pump-1"],
    ["hub", "enroll", "create", "--kind", "single"],
    ["hub", "enroll", "list"],
    ["hub", "enroll", "revoke", "tok-0000000000000000"],
    ["hub", "token", "create", "--role", "viewer"],
    ["hub", "token", "list"],
    ["hub", "token", "revoke", "0123456789ab"],
    ["round", "start", "demo"],
    ["round", "list"],
    ["round", "show", "demo-r1"],
    ["round", "cancel", "demo-r1"],
    ["round", "policy", "demo"],
]
IDS = [" ".join(c[:3]) for c in COMMANDS]


@pytest.fixture
def files(tmp_path: Path) -> Path:
    (tmp_path / "m.onnx").write_bytes(gemm_classifier())
    (tmp_path / "r.npz").write_bytes(reference())
    (tmp_path / "signed.json").write_text('{"payload": "", "payloadType": "", "signatures": []}')
    return tmp_path


@pytest.fixture
def served(tmp_path: Path, clock: FakeClock) -> Iterator[tuple[Api, str]]:
    api = make_api(tmp_path / "hub", clock)
    server = HttpServer(api.client.app, "127.0.0.1", 0)  # type: ignore[arg-type]
    server.start()
    try:
        yield api, server.url
    finally:
        server.stop()


def run(
    command: list[str], files: Path, capsys: pytest.CaptureFixture[str], *target: str
) -> tuple[int, str]:
    argv = [part.replace("{tmp}", str(files)) for part in command]
    code = main([*argv, *target])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    return code, err


@pytest.mark.parametrize("command", COMMANDS, ids=IDS)
def test_nothing_listening_is_status_1_at_once(
    command: list[str], files: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    started = time.monotonic()
    url = f"http://127.0.0.1:{free_port()}"
    code, err = run(command, files, capsys, "--hub", url, "--token", "efh_x")
    assert (code, "cannot reach the hub" in err) == (1, True)
    assert time.monotonic() - started < 3


@pytest.mark.parametrize("command", COMMANDS, ids=IDS)
def test_a_token_the_hub_refuses_is_status_2(
    command: list[str],
    files: Path,
    served: tuple[Api, str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    _, url = served
    code, err = run(command, files, capsys, "--hub", url, "--token", "efh_0123456789ab_" + "a" * 43)
    assert (code, "refused the token" in err) == (2, True)


@pytest.mark.parametrize("command", COMMANDS, ids=IDS)
def test_a_failing_hub_is_status_1(
    command: list[str],
    files: Path,
    served: tuple[Api, str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    api, url = served
    token = api.tokens["admin"].token
    api.store.close()  # every request now fails inside the hub: 500
    code, err = run(command, files, capsys, "--hub", url, "--token", token)
    assert (code, "failed (500)" in err) == (1, True)


@pytest.mark.parametrize("command", COMMANDS, ids=IDS)
def test_naming_no_hub_is_status_2(
    command: list[str],
    files: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("EDGEFLEET_HUB_URL", raising=False)
    monkeypatch.delenv("EDGEFLEET_TOKEN", raising=False)
    code, err = run(command, files, capsys)
    assert (code, "which hub?" in err) == (2, True)


@pytest.mark.parametrize(
    ("target", "message"),
    [
        pytest.param(["--hub", "ftp://hub"], "expected http://", id="not-http"),
        pytest.param(["--hub", "http://hub:8080"], "needs an API token", id="no-token"),
        pytest.param(["--data", "{tmp}", "--token", "t"], "leave out --hub", id="data-and-token"),
        pytest.param(["--data", "{tmp}/nowhere"], "no hub store", id="no-store"),
    ],
)
def test_bad_target_options_are_status_2(
    target: list[str], message: str, files: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [t.replace("{tmp}", str(files)) for t in target]
    code, err = run(["model", "list"], files, capsys, *argv)
    assert (code, message in err) == (2, True)


def test_the_variables_name_the_hub_and_a_flag_wins(
    files: Path,
    served: tuple[Api, str],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    api, url = served
    monkeypatch.setenv("EDGEFLEET_HUB_URL", url)
    monkeypatch.setenv("EDGEFLEET_TOKEN", api.tokens["viewer"].token)
    assert main(["hub", "device", "show", "nobody"]) == 2
    assert "no device 'nobody'" in capsys.readouterr().err
    assert main(["model", "list"]) == 0
    assert main(["model", "list", "--token", "efh_bad"]) == 2
