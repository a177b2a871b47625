"""One hub per data directory, performed as an attack: a second ``edgefleet hub serve`` on a
live hub's data directory, in real processes against a real Mosquitto.

Before the lock both hubs connected with the client id ``edgefleet-hub``, so the second
took the first one's MQTT session over (and the first took it back, and so on). Now the
second exits at once, status 1, one line naming the directory and the first hub's pid,
before it touches the broker or the store (it is given an unreachable broker: touching it
would end otherwise); the first keeps its session, ingests and acknowledges.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from edgefleet.clock import SystemClock
from hub.fleet import enrollment
from hub.store.dialects import open_store
from protocol import frame
from protocol.documents import SignedDocument
from protocol.messages import HubAck
from protocol.topics import Topics
from tests.brokers import BrokerRunner, MosquittoBroker, free_port
from tests.hub.device_double import DeviceDouble
from tests.integration.test_hub_serve import (
    COMMAND,
    REPO,
    START_S,
    keyed_data,
    spawn,
    stop,
    wait_healthy,
)
from tests.mqtt import Received

CLOCK = SystemClock()


def test_a_second_hub_on_a_live_data_directory_exits_and_the_first_keeps_serving(
    tmp_path: Path, mosquitto_broker: BrokerRunner, topics: Topics
) -> None:
    data = keyed_data(tmp_path)
    store = open_store(data / "hub.db")
    try:
        token = enrollment.create_token(store, kind="single", by="test", now_ms=CLOCK.now_ms())
    finally:
        store.close()
    port = free_port()
    env = {"EDGEFLEET_HUB_TOPIC_PREFIX": topics.prefix}
    first = spawn(
        tmp_path,
        "--data",
        str(data),
        "--broker",
        mosquitto_broker.url,
        "--port",
        str(port),
        env=env,
    )
    try:
        wait_healthy(first, port, tmp_path)
        started = time.monotonic()
        second = subprocess.run(
            [*COMMAND, "--data", str(data), "--broker", "mqtt://127.0.0.1:9", "--port", "0"],
            cwd=REPO,
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            timeout=START_S,
            check=False,
        )
        elapsed = time.monotonic() - started

        assert second.returncode == 1, second.stderr
        assert second.stderr.count("\n") == 1, second.stderr
        line = second.stderr.strip()
        assert line.startswith("edgefleet hub serve: error: data directory ")
        assert str(data) in line
        assert f"in use by process {first.pid}" in line
        assert "Traceback" not in second.stderr
        assert elapsed < START_S / 2  # at once: no broker wait, no retry
        assert first.poll() is None

        root = SignedDocument.from_bytes((data / "keys" / "root" / "1.root.json").read_bytes())
        with DeviceDouble(mosquitto_broker, topics, "dev-1", root, now=CLOCK.now_ms) as device:
            device.hello(token.secret)  # the first hub ingests it, pins the key, acks seq 1

            def acked(message: Received) -> bool:
                if not message.topic.endswith("/down/ack"):
                    return False
                keys_now = device.state.root.role_keys("rollout").values()
                ack = frame.decode(message.payload, keys_now, expect_kind="down.ack").message
                return isinstance(ack, HubAck) and (1, 1) in ack.committed

            device.client.wait_for(acked, 15.0)
        assert isinstance(mosquitto_broker, MosquittoBroker)
        assert "already connected" not in mosquitto_broker.logs()  # no session takeover
    finally:
        stop(first, signal.SIGTERM, tmp_path)
