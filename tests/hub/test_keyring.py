"""The hub's key ring on disk and the ``edgefleet keys`` commands."""

from __future__ import annotations

import argparse
import base64
import hashlib
import logging
import stat
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from hub import keyring
from hub.cli import keys as cli_keys
from hub.keyring import KeyringError
from protocol import metadata, trust
from protocol.documents import SignedDocument
from protocol.errors import ThresholdNotMet, WrongKind
from protocol.metadata import Assignment, Heartbeat, ReleaseList, Root
from tests.protocol.trust_sim import COMPAT, DAY, T0, artifact_bytes

NOW = T0


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def ring_dir(tmp_path: Path) -> Path:
    keyring.init(tmp_path / "keys", now_ms=NOW)
    return tmp_path / "keys"


def release_list(version: int = 1, expires: int = NOW + 90 * DAY) -> ReleaseList:
    data = artifact_bytes("vision", 1)
    entry = metadata.ReleaseEntry(
        "vision", 1, 1, hashlib.sha256(data).hexdigest(), len(data), COMPAT
    )
    return ReleaseList(version=version, expires=expires, entries=(entry,))


# ---------------------------------------------------------------- files and modes


def test_init_writes_every_key_0600_and_root_v1(ring_dir: Path) -> None:
    names = {p.name for p in ring_dir.glob("*.pem")}
    assert names == {f"{n}.pem" for n in ("root-1", "root-2", "root-3", *metadata.ROLES[1:])}
    assert all(mode(ring_dir / n) == 0o600 for n in names)
    assert not list(ring_dir.glob(".*"))  # no temporary file left behind
    ring = keyring.load(ring_dir)
    assert ring.root.version == 1
    assert ring.root.expires == NOW + keyring.ROOT_LIFETIME_MS
    assert (ring.root.threshold("root"), len(ring.root.roles["root"].keyids)) == (2, 3)
    assert trust.TrustedState.initial(ring.chain[0]).root == ring.root


def test_init_refuses_to_overwrite_a_key_ring(ring_dir: Path) -> None:
    before = {p: p.read_bytes() for p in ring_dir.rglob("*") if p.is_file()}
    with pytest.raises(KeyringError, match="already"):
        keyring.init(ring_dir, now_ms=NOW)
    assert {p: p.read_bytes() for p in ring_dir.rglob("*") if p.is_file()} == before


@pytest.mark.parametrize(
    ("threshold", "count"),
    [
        pytest.param(3, 2, id="threshold-above-keys"),
        pytest.param(0, 3, id="threshold-zero"),
        pytest.param(1, 17, id="too-many-keys"),
    ],
)
def test_init_refuses_an_impossible_threshold(tmp_path: Path, threshold: int, count: int) -> None:
    with pytest.raises(KeyringError):
        keyring.init(tmp_path, now_ms=NOW, root_keys=count, root_threshold=threshold)
    assert not list(tmp_path.iterdir())


def test_loading_a_world_readable_key_warns_without_logging_the_key(
    ring_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    leaky = ring_dir / "rollout.pem"
    leaky.chmod(0o644)
    pem = leaky.read_bytes()
    key = keyring.read_private_key(leaky)
    caplog.clear()
    with caplog.at_level(logging.DEBUG, logger="hub.keyring"):
        keyring.load(ring_dir)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "rollout.pem" in warnings[0].getMessage()
    assert "644" in warnings[0].getMessage()
    raw = key.private_bytes_raw()
    for secret in (pem.decode(), raw.hex(), base64.b64encode(raw).decode()):
        assert secret not in caplog.text


def test_offline_keys_may_be_absent(ring_dir: Path) -> None:
    for name in ("root-1.pem", "root-2.pem", "root-3.pem", "release.pem"):
        (ring_dir / name).unlink()
    ring = keyring.load(ring_dir)
    assert ring.signers["root"] == ring.signers["release"] == ()
    assert len(ring.signing_keys("rollout")) == len(ring.signing_keys("heartbeat")) == 1
    with pytest.raises(KeyringError, match="release needs 1"):
        ring.signing_keys("release")


def test_a_tampered_root_file_does_not_load(ring_dir: Path) -> None:
    keyring.rotate(ring_dir, "rollout", now_ms=NOW)
    second = ring_dir / "root" / "2.root.json"
    doc = SignedDocument.from_bytes(second.read_bytes())
    second.write_bytes(SignedDocument(doc.payload, doc.payloadType, ()).to_bytes())
    with pytest.raises(KeyringError, match="does not verify"):
        keyring.load(ring_dir)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        pytest.param(lambda d: (d / "root" / "4.root.json").write_bytes(b"{}"), "gaps", id="gap"),
        pytest.param(
            lambda d: (d / "root" / "2.root.json").write_bytes(b"{"), "unreadable", id="garbage"
        ),
        pytest.param(
            lambda d: (d / "root" / "2.root.json").write_bytes(
                (d / "root" / "1.root.json").read_bytes()
            ),
            "does not lead",
            id="version-repeated",
        ),
        pytest.param(lambda d: (d / "root" / "1.root.json").unlink(), "gaps", id="no-v1"),
    ],
)
def test_a_damaged_chain_does_not_load(ring_dir: Path, damage: Any, message: str) -> None:
    keyring.rotate(ring_dir, "rollout", now_ms=NOW)
    damage(ring_dir)
    with pytest.raises(KeyringError, match=message):
        keyring.load(ring_dir)


def test_a_key_file_the_root_does_not_list_is_ignored_with_a_warning(
    ring_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """What an interrupted rotation leaves behind: a new key the chain never named."""
    stray = ring_dir / "rollout.next.pem"
    keyring.write_private_key(stray, Ed25519PrivateKey.generate())
    ring = keyring.load(ring_dir)
    assert stray not in ring.files.values()
    assert "rollout.next.pem" in caplog.text
    with pytest.raises(KeyringError, match="interrupted rotation"):
        keyring.rotate(ring_dir, "rollout", now_ms=NOW)


# ---------------------------------------------------------------- rotation


def test_rotated_rollout_key_is_accepted_by_devices_which_reset_their_mark(ring_dir: Path) -> None:
    ring = keyring.load(ring_dir)
    release = metadata.sign(release_list(), ring.signing_keys("release"))
    pin = (1, metadata.payload_sha256(release))
    beat = Heartbeat(1, NOW, NOW + 600_000, *pin)
    stolen = Assignment("dev-1", 999_999, NOW + DAY, *pin, release_list().entries[0])
    state = trust.TrustedState.initial(ring.chain[0])
    state = trust.update_heartbeat(state, metadata.sign(beat, ring.signing_keys("heartbeat")), NOW)
    state = trust.update_release_list(state, release, NOW)
    doc = metadata.sign(stolen, ring.signing_keys("rollout"))
    state = trust.verify_assignment(state, doc, NOW, device_id="dev-1").state
    assert state.assignment_version == 999_999
    old_rollout = (ring_dir / "rollout.pem").read_bytes()

    ring = keyring.rotate(ring_dir, "rollout", now_ms=NOW)

    assert ring.root.version == 2
    assert (ring_dir / "rollout.pem").read_bytes() != old_rollout
    assert mode(ring_dir / "rollout.pem") == 0o600
    retired = list((ring_dir / "retired").glob("rollout.*.pem"))
    assert [p.read_bytes() for p in retired] == [old_rollout]
    assert not list(ring_dir.glob("*.next.pem"))
    state = trust.update_root(state, ring.chain)
    assert state.root == ring.root
    assert state.assignment_version == 0
    fresh = Assignment("dev-1", 1, NOW + DAY, *pin, release_list().entries[0])
    verdict = trust.verify_assignment(
        state, metadata.sign(fresh, ring.signing_keys("rollout")), NOW, device_id="dev-1"
    )
    assert verdict.status == "new"


def test_rotating_one_root_key_keeps_the_others(ring_dir: Path) -> None:
    before = keyring.load(ring_dir).root.roles["root"].keyids
    ring = keyring.rotate(ring_dir, "root", now_ms=NOW, index=2)
    after = ring.root.roles["root"].keyids
    assert (after[0], after[2]) == (before[0], before[2])
    assert after[1] != before[1]
    assert len(ring.signers["root"]) == 3
    assert len(list((ring_dir / "retired").glob("root-2.*.pem"))) == 1


def test_rotation_needs_the_root_threshold_present(ring_dir: Path) -> None:
    for name in ("root-1.pem", "root-2.pem"):
        (ring_dir / name).unlink()
    before = {p: p.read_bytes() for p in ring_dir.rglob("*") if p.is_file()}
    with pytest.raises(KeyringError, match="root keys present: 1 of 3"):
        keyring.rotate(ring_dir, "heartbeat", now_ms=NOW)
    assert {p: p.read_bytes() for p in ring_dir.rglob("*") if p.is_file()} == before


def test_rotating_all_root_keys_is_a_verifiable_step(ring_dir: Path) -> None:
    first = keyring.load(ring_dir)
    ring = keyring.rotate(ring_dir, "root", now_ms=NOW + DAY)
    assert not set(ring.root.roles["root"].keyids) & set(first.root.roles["root"].keyids)
    state = trust.update_root(trust.TrustedState.initial(first.chain[0]), ring.chain)
    assert state.root == metadata.parse(Root, ring.chain[-1])
    assert state.root.expires == NOW + DAY + keyring.ROOT_LIFETIME_MS


@pytest.mark.parametrize(
    ("role", "index"),
    [pytest.param("root", 4, id="no-such-root-key"), pytest.param("rollout", 1, id="not-root")],
)
def test_rotate_refuses_a_bad_index(ring_dir: Path, role: metadata.Role, index: int) -> None:
    with pytest.raises(KeyringError):
        keyring.rotate(ring_dir, role, now_ms=NOW, index=index)
    assert keyring.load(ring_dir).root.version == 1


# ---------------------------------------------------------------- offline release signing


def test_offline_release_signing_flow(ring_dir: Path, tmp_path: Path) -> None:
    """The hub drafts, a human signs with the offline key via the CLI, devices accept."""
    pending = tmp_path / "pending.json"
    keyring.write_pending_release(pending, release_list())
    state = trust.TrustedState.initial(keyring.load(ring_dir).chain[0])
    with pytest.raises(ThresholdNotMet):
        trust.update_release_list(state, SignedDocument.from_bytes(pending.read_bytes()), NOW)

    signed = tmp_path / "release.json"
    args = ["sign-release", str(pending), "--key", str(ring_dir / "release.pem")]
    assert run_cli(*args, "--out", str(signed)) == 0

    doc = SignedDocument.from_bytes(signed.read_bytes())
    assert trust.update_release_list(state, doc, NOW).release == release_list()


def test_signing_a_list_expiring_past_year_9999_still_prints(
    ring_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pending = tmp_path / "pending.json"
    keyring.write_pending_release(pending, release_list(expires=2**62))
    assert run_cli("sign-release", str(pending), "--key", str(ring_dir / "release.pem")) == 0
    assert f"expires {2**62} ms after the epoch" in capsys.readouterr().out


def test_signing_an_expired_release_list_is_refused(ring_dir: Path, tmp_path: Path) -> None:
    pending = tmp_path / "pending.json"
    keyring.write_pending_release(pending, release_list(expires=NOW))
    key = keyring.read_private_key(ring_dir / "release.pem")
    with pytest.raises(KeyringError, match="expired"):
        keyring.sign_release(pending, key, now_ms=NOW)


def test_signing_something_else_as_a_release_list_is_refused(ring_dir: Path) -> None:
    key = keyring.read_private_key(ring_dir / "release.pem")
    with pytest.raises(WrongKind):
        keyring.sign_release(ring_dir / "root" / "1.root.json", key, now_ms=NOW)


# ---------------------------------------------------------------- the CLI


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="edgefleet")
    cli_keys.register(root.add_subparsers(dest="command", required=True))
    return root


def run_cli(*argv: str) -> int:
    args = parser().parse_args(["keys", *argv])
    code: int = args.handler(args)
    return code


@pytest.mark.parametrize("command", ["init", "rotate", "sign-release", "show"])
def test_every_keys_subcommand_teaches_with_an_example(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        parser().parse_args(["keys", command, "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert f"edgefleet keys {command}" in text.split("example", 1)[1]


def test_keys_help_lists_the_subcommands(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parser().parse_args(["keys", "--help"])
    text = capsys.readouterr().out
    for command in ("init", "rotate", "sign-release", "show"):
        assert command in text


def test_cli_init_show_and_rotate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ring = tmp_path / "ring"
    assert run_cli("init", "--dir", str(ring), "--root-threshold", "1", "--root-keys", "2") == 0
    assert run_cli("rotate", "heartbeat", "--dir", str(ring)) == 0
    capsys.readouterr()
    assert run_cli("show", "--dir", str(ring)) == 0
    out = capsys.readouterr().out
    loaded = keyring.load(ring)
    assert "root v2" in out
    assert "1 of 2" in out
    for keyid in loaded.root.keys:
        assert keyid[:16] in out
    assert "PRIVATE KEY" not in out


@pytest.mark.parametrize(
    "argv",
    [
        pytest.param(["show", "--dir", "{tmp}/nowhere"], id="show-missing-ring"),
        pytest.param(["init", "--dir", "{tmp}/r", "--root-threshold", "3", "--root-keys", "2"],
                     id="init-threshold-above-keys"),
        pytest.param(["sign-release", "{tmp}/missing.json", "--key", "{tmp}/k.pem"],
                     id="sign-missing-file"),
        pytest.param(["sign-release", "{tmp}/garbage.json", "--key", "{tmp}/garbage.json"],
                     id="sign-with-garbage-key"),
        pytest.param(["rotate", "root", "--index", "9", "--dir", "{tmp}/ring"],
                     id="rotate-no-such-root-key"),
    ],
)  # fmt: skip
def test_cli_errors_are_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    keyring.init(tmp_path / "ring", now_ms=NOW)
    (tmp_path / "garbage.json").write_bytes(b"{not json")
    assert run_cli(*(a.format(tmp=tmp_path) for a in argv)) == 2
    err = capsys.readouterr().err
    assert err.startswith("edgefleet keys ")
    assert err.count("\n") == 1
    assert "Traceback" not in err


@pytest.mark.parametrize(
    "argv",
    [
        pytest.param(["rotate", "targets", "--dir", "x"], id="unknown-role"),
        pytest.param(["init", "--dir", "x", "--root-keys", "zero"], id="not-a-number"),
        pytest.param(["init", "--dir", "x", "--root-keys", "0"], id="zero-keys"),
        pytest.param(["init"], id="missing-dir"),
    ],
)
def test_cli_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        parser().parse_args(["keys", *argv])
    assert exit_info.value.code == 2
    assert "error:" in capsys.readouterr().err


# ---------------------------------------------------------------- the running hub's ring


def test_live_keyring_reloads_when_a_rotation_changes_the_files_and_only_then(
    ring_dir: Path,
) -> None:
    live = keyring.LiveKeyring(keyring.load(ring_dir))
    assert live.reload() is None  # nothing changed: nothing loaded

    old_rollout = live.signing_keys("rollout")[0]
    keyring.rotate(ring_dir, "rollout", now_ms=NOW)
    change = live.reload()

    assert change is not None
    old, new = change
    assert (old.root.version, new.root.version, live.root.version) == (1, 2, 2)
    assert keyring.rotated_roles(old.root, new.root) == {"rollout"}
    assert live.signing_keys("rollout")[0].public_key() != old_rollout.public_key()
    assert live.chain == new.chain
    assert live.reload() is None


def test_live_keyring_reports_a_rotation_seen_mid_way_once(ring_dir: Path) -> None:
    live = keyring.LiveKeyring(keyring.load(ring_dir))
    keyring.rotate(ring_dir, "rollout", now_ms=NOW)
    new_key = ring_dir / "rollout.pem"
    staged = ring_dir / "rollout.next.pem"
    new_key.rename(staged)  # as seen between writing root v2 and renaming the key in place
    assert live.reload() is not None
    staged.rename(new_key)  # the rotation's last step: the same root, other files
    assert live.reload() is None
    assert live.root.version == 2
    assert (
        live.signing_keys("rollout")[0].public_key()
        == keyring.read_private_key(new_key).public_key()
    )


def test_live_keyring_keeps_the_loaded_ring_while_the_files_do_not_load(
    ring_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    live = keyring.LiveKeyring(keyring.load(ring_dir))
    (ring_dir / keyring.ROOT_DIR / "2.root.json").write_bytes(b"half a rotation")
    with caplog.at_level(logging.WARNING, logger="hub.keyring"):
        assert live.reload() is None
    assert live.root.version == 1
    assert "does not load" in caplog.text
    (ring_dir / keyring.ROOT_DIR / "2.root.json").unlink()
    keyring.rotate(ring_dir, "heartbeat", now_ms=NOW)
    change = live.reload()
    assert change is not None
    assert keyring.rotated_roles(change[0].root, change[1].root) == {"heartbeat"}


def test_live_keyring_loads_a_rotation_interrupted_before_the_key_was_renamed(
    ring_dir: Path,
) -> None:
    live = keyring.LiveKeyring(keyring.load(ring_dir))
    keyring.rotate(ring_dir, "rollout", now_ms=NOW)
    (ring_dir / "rollout.pem").rename(ring_dir / "rollout.next.pem")  # the crash point
    change = live.reload()
    assert change is not None
    assert live.root.version == 2
    assert live.signing_keys("rollout")  # matched by keyid, whatever the file's name
