"""Real MQTT brokers for integration tests, behind one small interface.

``MosquittoBroker`` runs the ``mosquitto`` executable on a free loopback port with a
generated config; ``EmbeddedTestBroker`` runs edgefleet's own embedded amqtt broker
(:class:`hub.transport.broker.EmbeddedBroker`) in-process. Both keep their port across
``stop()``/``start()``, so a test can take the broker away for a while and bring it back
at the same address, and its clients reconnect by themselves::

    broker.stop()          # an outage: every client is disconnected
    broker.start()         # same host and port; retained messages and sessions are gone

``start()`` returns only once the broker answers a real MQTT CONNECT with a CONNACK, not
merely when its port accepts TCP. Nothing here mocks a broker (docs/architecture.md,
"Brokers").

With access control on (docs/broker-security.md): :class:`SecuredMosquitto` runs the
configuration ``edgefleet broker config`` writes (device, enrollment and TLS listeners on
free ports, ``passwd``, ACLs, a generated CA); :class:`SecuredEmbedded` runs the embedded
broker behind its gate. Both are :class:`SecuredBroker`: ``login_url``, ``enroll_url``,
``provision(verifiers)`` and the hub's ``hub_login``.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from abc import ABC, abstractmethod
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import IO, Self

from hub.store import Store
from hub.transport import broker_accounts, tls
from hub.transport.broker import EmbeddedBroker
from hub.transport.broker_access import HUB_USERNAME, AccessPolicy
from hub.transport.broker_accounts import BrokerLogin, MosquittoTarget, hub_accounts
from hub.transport.broker_gate import Accounts, Gate
from hub.transport.mosquitto import MosquittoLayout, render_conf
from protocol.topics import Topics

MAX_PAYLOAD_BYTES = 1024 * 1024  # both brokers: a 256 KiB frame fits four times over
_HEADER_ROOM = 64 * 1024  # Mosquitto counts the whole packet: topic, packet id, lengths
_CONNECT_PROBE = (
    b"\x10\x11"  # CONNECT, remaining length 17
    b"\x00\x04MQTT\x04"  # protocol name, level 4 (3.1.1)
    b"\x02\x00\x05"  # clean session, keepalive 5 s
    b"\x00\x05probe"  # client id
)
_CONNACK_OK = b"\x20\x02\x00\x00"
_DISCONNECT = b"\xe0\x00"


class BrokerRunner(ABC):
    """A broker a test can start, stop and start again on the same address."""

    name: str

    @property
    @abstractmethod
    def host(self) -> str: ...

    @property
    @abstractmethod
    def port(self) -> int:
        """The port, fixed from the first start on."""

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    @abstractmethod
    def start(self) -> None:
        """Serve on ``host:port``; returns once an MQTT CONNECT is accepted. No-op if running.

        Raises:
            RuntimeError: the broker did not come up (Mosquitto: the message carries its
                log).
            hub.transport.broker.BrokerError: the embedded broker could not bind or start.
        """

    @abstractmethod
    def stop(self) -> None:
        """Stop serving and disconnect every client, keeping the port for a restart."""

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<{self.name} broker at {self.url}>"


def find_mosquitto() -> str | None:
    """The ``mosquitto`` executable on PATH, else Debian's /usr/sbin one, else None."""
    found = shutil.which("mosquitto")
    if found is None and os.access("/usr/sbin/mosquitto", os.X_OK):
        found = "/usr/sbin/mosquitto"
    return found


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def mqtt_ping(host: str, port: int, timeout_s: float = 1.0, *, any_code: bool = False) -> bool:
    """True if an MQTT 3.1.1 broker at ``host:port`` accepts a CONNECT (CONNACK code 0;
    any CONNACK at all with ``any_code``, for a broker that refuses anonymous clients)."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as sock:
            sock.sendall(_CONNECT_PROBE)
            reply = b""
            while len(reply) < len(_CONNACK_OK):
                chunk = sock.recv(len(_CONNACK_OK) - len(reply))
                if not chunk:
                    return False
                reply += chunk
            sock.sendall(_DISCONNECT)
            return reply == _CONNACK_OK or (any_code and reply[:3] == _CONNACK_OK[:3])
    except OSError:
        return False


class MosquittoBroker(BrokerRunner):
    """``mosquitto -c <generated conf>`` on a free loopback port, logging into ``workdir``.

    Args:
        workdir: where the config and logs go (a test's ``tmp_path``).
        executable: the mosquitto binary; default :func:`find_mosquitto`.
        port: 0 picks a free port at the first start.
        max_queued_messages: QoS 1 messages Mosquitto queues per slow subscriber before it
            drops them (its default, 1000, is below what the soak tests send at once).
        start_timeout_s: how long start() waits for a CONNACK and stop() for an exit.

    Raises:
        RuntimeError: no mosquitto executable was found.
    """

    name = "mosquitto"

    def __init__(
        self,
        workdir: Path,
        *,
        executable: str | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        max_queued_messages: int = 10_000,
        start_timeout_s: float = 10.0,
    ) -> None:
        found = executable or find_mosquitto()
        if found is None:
            raise RuntimeError("mosquitto is not on PATH nor at /usr/sbin/mosquitto")
        self._executable = found
        self._workdir = workdir
        self._host = host
        self._port = port
        self._max_queued = max_queued_messages
        self._timeout_s = start_timeout_s
        self._process: subprocess.Popen[bytes] | None = None
        self._output: IO[bytes] | None = None
        self.config_path = workdir / "mosquitto.conf"
        self.log_path = workdir / "mosquitto.log"

    @property
    def host(self) -> str:
        return self._host

    @property
    def port(self) -> int:
        return self._port

    def start(self) -> None:
        if self._process is not None:
            return
        if self._port == 0:
            self._port = free_port(self._host)
        self._workdir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(self._config())
        self._output = (self._workdir / "mosquitto.out").open("ab")
        self._process = subprocess.Popen(
            [self._executable, "-c", str(self.config_path)],
            stdout=self._output,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + self._timeout_s
        while not mqtt_ping(self._host, self._port, timeout_s=0.5, any_code=True):
            exited = self._process.poll()
            if exited is not None or time.monotonic() > deadline:
                self.stop()
                why = f"exited with {exited}" if exited is not None else "did not answer"
                raise RuntimeError(f"mosquitto on {self.url} {why}:\n{self.logs()}")
            time.sleep(0.02)

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is not None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(self._timeout_s)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self._output is not None:
            self._output.close()
            self._output = None

    def logs(self) -> str:
        """Everything mosquitto wrote: stdout/stderr (config errors) then its log file."""
        parts = []
        for path in (self._workdir / "mosquitto.out", self.log_path):
            if path.exists():
                parts.append(f"--- {path.name}\n{path.read_text(errors='replace')}")
        return "\n".join(parts) or "(no output)"

    def _config(self) -> str:
        # Run as root (containers), mosquitto drops to user "mosquitto", which cannot
        # write into our workdir; naming the current user keeps it as it is.
        user = pwd.getpwuid(os.geteuid()).pw_name
        return "\n".join(
            [
                f"listener {self._port} {self._host}",
                "allow_anonymous true",
                "persistence false",
                f"user {user}",
                f"max_queued_messages {self._max_queued}",
                f"max_packet_size {MAX_PAYLOAD_BYTES + _HEADER_ROOM}",
                f"log_dest file {self.log_path}",
                "log_type error",
                "log_type warning",
                "log_type notice",
                "log_type information",
                "connection_messages true",
                "",
            ]
        )


class EmbeddedTestBroker(BrokerRunner):
    """The hub's embedded amqtt broker (:class:`hub.transport.broker.EmbeddedBroker`), as a
    runner."""

    name = "amqtt"

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self._broker = EmbeddedBroker(host, port, max_message_bytes=MAX_PAYLOAD_BYTES)

    @property
    def host(self) -> str:
        return self._broker.host

    @property
    def port(self) -> int:
        return self._broker.port

    def start(self) -> None:
        self._broker.start()
        if not mqtt_ping(self.host, self.port):
            self._broker.stop()
            raise RuntimeError(f"embedded broker on {self.url} refused an MQTT CONNECT")

    def stop(self) -> None:
        self._broker.stop()


class SecuredBroker(BrokerRunner):
    """A broker with access control: logins, client ids bound to them, topic ACLs."""

    hub_login: BrokerLogin

    @property
    def login_url(self) -> str:
        """Where devices and the hub log in."""
        return self.url

    @property
    def enroll_url(self) -> str:
        """Where a device not yet admitted says hello (anonymously)."""
        return self.url

    @abstractmethod
    def provision(self, verifiers: dict[str, str]) -> None:
        """Make the broker hold exactly these device accounts (and the hub's)."""


class SecuredMosquitto(MosquittoBroker, SecuredBroker):
    """Mosquitto with what ``edgefleet broker config`` writes for ``data_dir`` (free ports:
    devices, enrollment, TLS with a generated CA for ``localhost``)."""

    name = "mosquitto"

    def __init__(self, workdir: Path, data_dir: Path, store: Store, topics: Topics) -> None:
        super().__init__(workdir)
        self._port = free_port()
        self.enroll_port, self.tls_port = free_port(), free_port()
        files = tls.issue(workdir / "tls", ["localhost", "127.0.0.1"], now=datetime.now(UTC))
        self.layout = MosquittoLayout(
            workdir,
            topics,
            host="127.0.0.1",
            port=self._port,
            enroll_port=self.enroll_port,
            tls_port=self.tls_port,
            tls=files,
            max_frame_bytes=MAX_PAYLOAD_BYTES,
            user=pwd.getpwuid(os.geteuid()).pw_name,
            log_file=self.log_path,
        )
        setup = broker_accounts.write_mosquitto(data_dir, self.layout, store)
        self.config_path = self.layout.conf
        self.hub_login = setup.login
        self._hub_verifier = setup.hub_verifier
        self.ca_file = files.ca

    @property
    def enroll_url(self) -> str:
        return f"mqtt://{self.host}:{self.enroll_port}"

    @property
    def tls_url(self) -> str:
        return f"mqtts://localhost:{self.tls_port}"

    def provision(self, verifiers: dict[str, str]) -> None:
        target = MosquittoTarget(self.layout.passwd, self.layout.pid_file)
        target.apply({**verifiers, **hub_accounts(self._hub_verifier)})
        time.sleep(0.3)  # SIGHUP is asynchronous: give Mosquitto time to reread passwd

    def _config(self) -> str:
        return render_conf(self.layout)


class SecuredEmbedded(EmbeddedTestBroker, SecuredBroker):
    """The embedded broker behind its gate, with the hub's account in it."""

    def __init__(self, topics: Topics) -> None:
        super().__init__()
        password = broker_accounts.new_password()
        self._hub_verifier = broker_accounts.new_verifier(password)
        self.hub_login = BrokerLogin(HUB_USERNAME, password)
        self.accounts = Accounts(hub_accounts(self._hub_verifier))
        self._broker.protect(Gate(AccessPolicy(topics), self.accounts))

    @property
    def broker(self) -> EmbeddedBroker:
        return self._broker

    def start(self) -> None:
        self._broker.start()
        if not mqtt_ping(self.host, self.port, any_code=True):
            self._broker.stop()
            raise RuntimeError(f"embedded broker on {self.url} did not answer a CONNECT")

    def provision(self, verifiers: dict[str, str]) -> None:
        self.accounts.replace({**verifiers, **hub_accounts(self._hub_verifier)})
        self._broker.drop_unprovisioned()
