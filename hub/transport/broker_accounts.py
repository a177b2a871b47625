"""Broker accounts: the hub's own login, and every active device's, kept on the broker.

The store is the truth (``store.broker_credentials.active()``: the verifier from each
active device's hello); :class:`Provisioning` makes the broker hold exactly those accounts
plus the hub's, and nothing else:

- **embedded broker** (one-machine tier): the broker's accounts table
  (:class:`~hub.transport.broker_gate.Accounts`) is replaced in memory, and logins that
  lost their account (a revoked device) are disconnected at once;
- **Mosquitto** (one-site tier, after ``edgefleet broker config``): ``passwd`` is rewritten
  atomically and Mosquitto is sent SIGHUP (its pid file is in the generated config), which
  makes it reload the file; Mosquitto 2.0 then disconnects clients whose login no longer
  verifies.

When: at start, right after an ingest batch admitted a hello that carried a verifier
(:meth:`Provisioning.request`, which ingest calls after its commit: a device enrolled with
a token logs in within a second), and every ``interval_s`` otherwise, which picks up what
other processes changed (``edgefleet hub approve/revoke`` from the CLI, the REST API) by
watching the ``devices_epoch`` counter every status change bumps. A sync that finds nothing
changed writes nothing and signals nobody.

What a restart of the hub needs: for Mosquitto, ``DATA/broker/hub.secret`` (the hub's
password, 0600) and ``DATA/broker/mosquitto.json`` (where ``passwd`` and the pid file are,
and the hub's verifier), both written by ``edgefleet broker config``; for the embedded
broker nothing: the hub makes a fresh password for itself at every start.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import signal
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from edgefleet.files import write_atomic
from hub.errors import HubError
from hub.metrics import BROKER_ACCOUNTS
from hub.settings import HubSettings
from hub.store import Store
from hub.transport.broker import EmbeddedBroker
from hub.transport.broker_access import HUB_USERNAME, HUB_USERNAMES, WATCH_USERNAME, AccessPolicy
from hub.transport.broker_gate import Accounts, Gate
from hub.transport.mosquitto import (
    MosquittoLayout,
    render_acl,
    render_conf,
    render_enroll_acl,
    render_passwd,
)
from protocol import broker_auth
from protocol.topics import Topics

logger = logging.getLogger(__name__)

BROKER_DIR = "broker"
HUB_SECRET = "hub.secret"  # noqa: S105 (a file name)
MOSQUITTO_JSON = "mosquitto.json"
SYNC_INTERVAL_S = 2.0


class ProvisioningError(HubError):
    """The broker's accounts cannot be written (a missing or unreadable file)."""

    reason = "broker_provisioning"
    status_hint = 503


@dataclass(frozen=True)
class BrokerLogin:
    """A broker user name and password (the password never in ``repr``)."""

    username: str
    password: str = field(repr=False)

    def pair(self) -> tuple[str, str]:
        return self.username, self.password

    def watch(self) -> BrokerLogin:
        """The login of the hub's retained-topic watch: its own name, the same password."""
        return BrokerLogin(WATCH_USERNAME, self.password)


def hub_accounts(verifier: str) -> dict[str, str]:
    """The hub's accounts (the link and its watch), both with ``verifier``."""
    return dict.fromkeys(HUB_USERNAMES, verifier)


def new_password() -> str:
    """32 random bytes, url-safe base64: nothing to guess, no character to escape."""
    return secrets.token_urlsafe(32)


def new_verifier(password: str) -> str:
    return broker_auth.make_verifier(password, secrets.token_bytes(broker_auth.SALT_BYTES))


class Target(Protocol):
    """Where accounts go."""

    def apply(self, verifiers: dict[str, str]) -> bool:
        """Make the broker hold exactly ``verifiers``; True if that changed anything."""
        ...


class EmbeddedTarget:
    """The embedded broker's accounts table (same process)."""

    def __init__(self, broker: EmbeddedBroker, accounts: Accounts) -> None:
        self.broker = broker
        self.accounts = accounts

    def apply(self, verifiers: dict[str, str]) -> bool:
        changed = self.accounts.replace(verifiers)
        if changed:
            self.broker.drop_unprovisioned()
        return changed


@dataclass
class MosquittoTarget:
    """A Mosquitto ``password_file`` and the pid file of the Mosquitto that reads it."""

    password_file: Path
    pid_file: Path

    def apply(self, verifiers: dict[str, str]) -> bool:
        text = render_passwd(verifiers).encode("utf-8")
        try:
            if self.password_file.read_bytes() == text:
                return False
        except FileNotFoundError:
            pass
        except OSError as e:
            raise ProvisioningError(f"cannot read {self.password_file}: {e}") from e
        try:
            write_atomic(self.password_file, text, mode=0o640)
        except OSError as e:
            raise ProvisioningError(f"cannot write {self.password_file}: {e}") from e
        self.reload()
        return True

    def current(self) -> dict[str, str]:
        """The accounts ``passwd`` holds now (none if it does not exist)."""
        try:
            lines = self.password_file.read_text().splitlines()
        except FileNotFoundError:
            return {}
        return dict(line.split(":", 1) for line in lines if ":" in line)

    def reload(self) -> None:
        """SIGHUP to Mosquitto, if its pid file names a live process we may signal."""
        try:
            pid = int(self.pid_file.read_text().strip())
            os.kill(pid, signal.SIGHUP)
        except (OSError, ValueError) as e:
            logger.warning(
                "wrote %s but could not signal Mosquitto (pid file %s: %s); "
                "reload it yourself (kill -HUP)",
                self.password_file,
                self.pid_file,
                e,
            )


@dataclass(frozen=True)
class MosquittoSetup:
    """What ``edgefleet broker config`` left in the hub's data directory."""

    login: BrokerLogin
    hub_verifier: str
    target: MosquittoTarget

    @classmethod
    def load(cls, data_dir: Path) -> MosquittoSetup | None:
        """The setup in ``data_dir``, None if ``broker config`` never ran there.

        Raises:
            ProvisioningError: a file exists but cannot be read or makes no sense.
        """
        folder = data_dir / BROKER_DIR
        if not (folder / MOSQUITTO_JSON).exists():
            return None
        try:
            meta = json.loads((folder / MOSQUITTO_JSON).read_text())
            password = (folder / HUB_SECRET).read_text().strip()
            verifier = str(meta["hub_verifier"])
            target = MosquittoTarget(Path(meta["password_file"]), Path(meta["pid_file"]))
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ProvisioningError(f"broker setup in {folder} is unreadable: {e}") from e
        if not broker_auth.check_password(verifier, password):
            raise ProvisioningError(f"{folder / HUB_SECRET} does not match its verifier")
        return cls(BrokerLogin(HUB_USERNAME, password), verifier, target)

    @staticmethod
    def save(data_dir: Path, password_file: Path, pid_file: Path) -> MosquittoSetup:
        """Keep the hub's broker password (made once, then reused) and where Mosquitto's
        files are, in ``data_dir/broker``."""
        folder = data_dir / BROKER_DIR
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        secret = folder / HUB_SECRET
        password = secret.read_text().strip() if secret.exists() else new_password()
        write_atomic(secret, password.encode(), mode=0o600)
        meta = {
            "hub_verifier": new_verifier(password),
            "password_file": str(password_file.resolve()),
            "pid_file": str(pid_file.resolve()),
        }
        write_atomic(folder / MOSQUITTO_JSON, json.dumps(meta, indent=2).encode(), mode=0o600)
        loaded = MosquittoSetup.load(data_dir)
        assert loaded is not None
        return loaded


class Provisioning:
    """Keeps a broker's accounts equal to the store's (module docstring); one thread."""

    def __init__(
        self,
        login: BrokerLogin,
        hub_verifier: str,
        target: Target,
        *,
        interval_s: float = SYNC_INTERVAL_S,
    ) -> None:
        self.login = login
        self.target = target
        self._hub_verifier = hub_verifier
        self._interval_s = interval_s
        self._due = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._epoch: int | None = None

    def verifiers(self, store: Store) -> dict[str, str]:
        """Every account the broker should hold now."""
        return {**store.broker_credentials.active(), **hub_accounts(self._hub_verifier)}

    def sync(self, store: Store) -> bool:
        """Apply the store's accounts now; True if the broker's changed."""
        self._epoch = store.counters.get("devices_epoch")
        verifiers = self.verifiers(store)
        changed = self.target.apply(verifiers)
        BROKER_ACCOUNTS.set(len(verifiers))
        if changed:
            logger.info("broker accounts: %d (the hub and active devices)", len(verifiers))
        return changed

    def request(self) -> None:
        """Sync soon (ingest calls this after committing a hello with a verifier)."""
        self._due.set()

    def start(self, store: Store) -> None:
        """Sync once, then keep syncing on a thread of its own until :meth:`stop`."""
        self.sync(store)
        self._stopping.clear()
        self._thread = threading.Thread(
            target=self._run, args=(store,), name="edgefleet-broker-accounts", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._due.set()
        if self._thread is not None:
            self._thread.join(10.0)
            self._thread = None

    def _run(self, store: Store) -> None:
        while not self._stopping.is_set():
            requested = self._due.wait(self._interval_s)
            self._due.clear()
            if self._stopping.is_set():
                return
            try:
                if requested or store.counters.get("devices_epoch") != self._epoch:
                    self.sync(store)
            except Exception:  # keep syncing: the next change may succeed
                logger.exception("could not provision broker accounts")


def for_embedded(broker: EmbeddedBroker, topics: Topics) -> Provisioning:
    """Access control on ``broker`` (before it starts), with a fresh hub password.

    A broker that has a gate already keeps it (a test may bring its own).
    """
    password = new_password()
    verifier = new_verifier(password)
    if broker.gate is None:
        broker.protect(Gate(AccessPolicy(topics), Accounts(hub_accounts(verifier))))
    assert broker.gate is not None
    for user in HUB_USERNAMES:
        broker.gate.accounts.set(user, verifier)
    target = EmbeddedTarget(broker, broker.gate.accounts)
    return Provisioning(BrokerLogin(HUB_USERNAME, password), verifier, target)


def prepare(settings: HubSettings, embedded: EmbeddedBroker | None) -> Provisioning | None:
    """The hub's provisioning, decided before it connects: for its embedded broker, for
    the Mosquitto set up by ``edgefleet broker config`` in its data directory, or None
    (an open broker: the hub connects without a login).

    Raises:
        ProvisioningError: a broker setup exists but cannot be read.
    """
    if embedded is not None:
        return for_embedded(embedded, Topics(settings.topic_prefix))
    setup = MosquittoSetup.load(settings.data_dir)
    if setup is None:
        return None
    return Provisioning(setup.login, setup.hub_verifier, setup.target)


def write_mosquitto(data_dir: Path, layout: MosquittoLayout, store: Store) -> MosquittoSetup:
    """Write Mosquitto's files for ``layout`` (``edgefleet broker config``): the hub's
    password kept in ``data_dir`` (made once), ``passwd`` from ``store``.

    Raises:
        OSError: a file cannot be written.
    """
    layout.out_dir.mkdir(parents=True, exist_ok=True)
    setup = MosquittoSetup.save(data_dir, layout.passwd, layout.pid_file)
    verifiers = {**store.broker_credentials.active(), **hub_accounts(setup.hub_verifier)}
    write_atomic(layout.conf, render_conf(layout).encode(), mode=0o644)
    write_atomic(layout.acl, render_acl(layout.topics).encode(), mode=0o644)
    write_atomic(layout.enroll_acl, render_enroll_acl(layout.topics).encode(), mode=0o644)
    write_atomic(layout.passwd, render_passwd(verifiers).encode(), mode=0o640)
    return setup
