"""A small hub double for agent tests: real broker, real SQLite, real signatures.

It does what the real hub's ingest must do for the agent's delivery contract, and no more:
subscribe to ``<prefix>/v1/d/+/up/#``, verify each frame with the device's pinned key
(a ``hello`` from an unknown device pins the key it carries, which signed it), commit it
into a SQLite file deduplicated by ``(device_id, seq)``, then publish a
:class:`~protocol.messages.HubAck` for the batch (new frames *and* duplicates) signed
with its own key, which the agent is told to trust::

    with HubDouble(broker, topics, tmp_path / "hub.db") as hub:
        agent = Agent(config, rollout_keys=lambda: [hub.public])
        ...
        hub.wait_until(lambda h: len(h.committed("dev-1")) >= 500)

Stop and start it again to model a hub outage; the database (frames and the per-device
downlink seq) survives. To extend it (desired state, chunks), publish with
:meth:`HubDouble.publish_down` and react to committed frames with :meth:`HubDouble.on`.
"""

from __future__ import annotations

import os
import queue
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from contextlib import closing
from pathlib import Path
from typing import Any, Protocol, Self

import paho.mqtt.client as paho
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from paho.mqtt.enums import CallbackAPIVersion

from protocol import frame, keys
from protocol.errors import ProtocolError
from protocol.frame import Envelope, Message
from protocol.messages import Hello, HubAck
from protocol.topics import Topics

SCHEMA = """
CREATE TABLE IF NOT EXISTS frames (
    device_id TEXT NOT NULL, seq INTEGER NOT NULL, kind TEXT NOT NULL, frame BLOB NOT NULL,
    PRIMARY KEY (device_id, seq));
CREATE TABLE IF NOT EXISTS devices (device_id TEXT PRIMARY KEY, public_key TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS downlink (device_id TEXT PRIMARY KEY, next_seq INTEGER NOT NULL);
"""

Hook = Callable[["HubDouble", Envelope], None]


class Endpoint(Protocol):
    @property
    def host(self) -> str: ...

    @property
    def port(self) -> int: ...


class HubDouble:
    """Ingest + ack for agent tests. Attributes a test may read or set:

    - ``receipts``: how often each ``(device, seq)`` arrived (duplicates count);
    - ``rejected``: refused frames by reason;
    - ``mute_acks``: while True, frames are committed but no ack is published;
      ``withheld`` counts the frames committed while muted.
    """

    def __init__(
        self,
        broker: Endpoint,
        topics: Topics,
        db_path: Path,
        *,
        key: Ed25519PrivateKey | None = None,
        devices: Mapping[str, Ed25519PublicKey] | None = None,
    ) -> None:
        self.broker = broker
        self.topics = topics
        self.key = key or Ed25519PrivateKey.generate()
        self.db_path = db_path
        self.receipts: Counter[tuple[str, int]] = Counter()
        self.rejected: Counter[str] = Counter()
        self.mute_acks = False
        self.withheld = 0
        self._devices = dict(devices or {})
        self._hooks: dict[str, list[Hook]] = {}
        self._changed = threading.Condition()
        self._inbox: queue.Queue[tuple[str, bytes]] = queue.Queue()
        self._db: sqlite3.Connection | None = None
        self._client: paho.Client | None = None
        self._worker: threading.Thread | None = None
        self._running = threading.Event()

    @property
    def public(self) -> Ed25519PublicKey:
        return self.key.public_key()

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Open the database, connect and subscribe; returns once subscribed."""
        self.db_path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.db_path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(SCHEMA)
        for device_id, public in self._devices.items():
            self._pin(device_id, public)
        subscribed = threading.Event()
        client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"hub-double-{os.urandom(4).hex()}",
            protocol=paho.MQTTv311,
            clean_session=True,
        )
        client.reconnect_delay_set(min_delay=1, max_delay=2)

        def on_connect(c: paho.Client, u: Any, f: Any, reason: Any, p: Any) -> None:
            if not reason.is_failure:
                c.subscribe(self.topics.all_up(), qos=1)

        client.on_connect = on_connect
        client.on_subscribe = lambda *args: subscribed.set()
        client.on_message = lambda c, u, m: self._inbox.put((m.topic, bytes(m.payload)))
        client.connect(self.broker.host, self.broker.port, keepalive=30)
        client.loop_start()
        self._client = client
        self._running.set()
        self._worker = threading.Thread(target=self._work, name="hub-double", daemon=True)
        self._worker.start()
        if not subscribed.wait(10):
            raise AssertionError("hub double: no SUBACK from the broker")

    def stop(self) -> None:
        """Disconnect and close the database; frames in flight to it are lost (an outage)."""
        self._running.clear()
        if self._worker is not None:
            self._worker.join()
        if self._client is not None:
            self._client.disconnect()
            self._client.loop_stop()
        if self._db is not None:
            self._db.close()
        self._client = self._db = self._worker = None
        while not self._inbox.empty():
            self._inbox.get_nowait()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ extending

    def on(self, kind: str, hook: Hook) -> None:
        """Call ``hook(hub, envelope)`` for each newly committed frame of ``kind`` ("delta")."""
        self._hooks.setdefault(kind, []).append(hook)

    def publish_down(self, device_id: str, message: Message, *, retain: bool = False) -> int:
        """Sign ``message`` for ``device_id`` with the next persisted downlink seq; publish it."""
        assert self._db is not None, "hub double is stopped"
        assert self._client is not None, "hub double is stopped"
        with self._changed:
            row = self._db.execute(
                "SELECT next_seq FROM downlink WHERE device_id = ?", [device_id]
            ).fetchone()
            seq = row[0] if row else 1
            self._db.execute(
                "INSERT OR REPLACE INTO downlink (device_id, next_seq) VALUES (?, ?)",
                [device_id, seq + 1],
            )
        data = frame.encode(
            message,
            device_id=device_id,
            seq=seq,
            sent_at=time.time_ns() // 1_000_000,
            nonce=os.urandom(16),
            key=self.key,
        )
        self._client.publish(self.topics.down(device_id, message.KIND), data, qos=1, retain=retain)
        return seq

    # ------------------------------------------------------------------ reading

    def committed(self, device_id: str) -> list[int]:
        """Seqs committed for ``device_id``, ascending (each at most once, by the primary key)."""
        rows = self._query("SELECT seq FROM frames WHERE device_id = ? ORDER BY seq", device_id)
        return [seq for (seq,) in rows]

    def frames(self, device_id: str) -> dict[int, bytes]:
        """The committed bytes by seq."""
        rows = self._query("SELECT seq, frame FROM frames WHERE device_id = ?", device_id)
        return dict(rows)

    def messages(self, device_id: str, kind: str) -> list[Envelope]:
        """Committed frames of one kind ("state"), decoded, by ascending seq."""
        sql = "SELECT frame FROM frames WHERE device_id = ? AND kind = ? ORDER BY seq"
        rows = self._query(sql, device_id, kind)
        return [frame.decode(data, self._devices[device_id]) for (data,) in rows]

    def duplicates(self, device_id: str) -> int:
        """How many arrivals for ``device_id`` repeated an already received seq."""
        return sum(n - 1 for (dev, _), n in self.receipts.items() if dev == device_id)

    def wait_until(self, done: Callable[[HubDouble], bool], timeout_s: float = 30.0) -> None:
        """Wait until ``done(self)`` holds, re-checking after every batch.

        Raises:
            AssertionError: it did not hold within ``timeout_s``.
        """
        deadline = time.monotonic() + timeout_s
        with self._changed:
            while not done(self):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(
                        f"hub double: condition not met in {timeout_s}s; "
                        f"receipts={sum(self.receipts.values())} rejected={dict(self.rejected)}"
                    )
                self._changed.wait(min(remaining, 0.5))

    # ------------------------------------------------------------------ ingest

    def _work(self) -> None:
        while self._running.is_set():
            try:
                batch = [self._inbox.get(timeout=0.1)]
            except queue.Empty:
                continue
            while len(batch) < 500:
                try:
                    batch.append(self._inbox.get_nowait())
                except queue.Empty:
                    break
            self._ingest(batch)

    def _ingest(self, batch: Iterable[tuple[str, bytes]]) -> None:
        assert self._db is not None
        verified = [pair for topic, data in batch if (pair := self._verify(topic, data))]
        new: list[Envelope] = []
        with self._changed:
            self._db.execute("BEGIN")
            for env, data in verified:
                h = env.header
                self.receipts[(h.device_id, h.seq)] += 1
                cursor = self._db.execute(
                    "INSERT OR IGNORE INTO frames VALUES (?, ?, ?, ?)",
                    [h.device_id, h.seq, h.kind.split(".")[1], data],
                )
                if cursor.rowcount:
                    new.append(env)
            self._db.execute("COMMIT")
            if self.mute_acks:
                self.withheld += len(new)
            self._changed.notify_all()
        by_device: dict[str, list[int]] = {}
        for env, _ in verified:
            by_device.setdefault(env.header.device_id, []).append(env.header.seq)
        if not self.mute_acks:
            for device_id, seqs in by_device.items():
                self.publish_down(device_id, HubAck(committed=_ranges(seqs)))
        for env in new:
            for hook in self._hooks.get(env.header.kind.split(".")[1], []):
                hook(self, env)

    def _verify(self, topic: str, data: bytes) -> tuple[Envelope, bytes] | None:
        try:
            route = self.topics.parse(topic)
            assert route.device_id is not None
            public = self._devices.get(route.device_id)
            if public is None and route.kind == "hello":
                claimed = frame.open_frame(data).fields.get("public_key", "")
                public = keys.public_from_hex(str(claimed))
            if public is None:
                self.rejected["unknown_device"] += 1
                return None
            env = frame.decode(
                data, public, expect_kind=route.qualified_kind, expect_device=route.device_id
            )
        except ProtocolError as e:
            self.rejected[e.reason] += 1
            return None
        if isinstance(env.message, Hello) and route.device_id not in self._devices:
            self._pin(route.device_id, public)
        return env, data

    def _pin(self, device_id: str, public: Ed25519PublicKey) -> None:
        assert self._db is not None
        self._devices[device_id] = public
        self._db.execute(
            "INSERT OR REPLACE INTO devices (device_id, public_key) VALUES (?, ?)",
            [device_id, keys.public_hex(public)],
        )

    def _query(self, sql: str, *params: Any) -> list[Any]:
        with closing(sqlite3.connect(self.db_path)) as db:
            return db.execute(sql, params).fetchall()


def _ranges(seqs: Iterable[int]) -> tuple[tuple[int, int], ...]:
    """Sorted, merged inclusive ranges: [1, 2, 3, 7] -> ((1, 3), (7, 7))."""
    out: list[list[int]] = []
    for seq in sorted(set(seqs)):
        if out and seq == out[-1][1] + 1:
            out[-1][1] = seq
        else:
            out.append([seq, seq])
    return tuple((a, b) for a, b in out)
