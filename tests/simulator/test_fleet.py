"""SimulatedFleet: many real agents on one MQTT loop thread, against a real hub and broker.

Twenty devices share one loop, one job pool and one onnxruntime session: they enrol, come
online, publish telemetry the hub stores, and receive their desired state (a signed
assignment) over the downlink, then download, verify and serve the version.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hub.fleet import enrollment
from hub.fleet.desired import set_desired
from hub.service import HubService
from hub.store.rows import TelemetryRecord
from protocol.topics import Topics
from simulator.fleet import Pacing, ResourceMeter, SimulatedFleet
from tests.brokers import BrokerRunner
from tests.integration.live_fleet import (
    CLOCK,
    MODEL,
    eventually,
    hub_data,
    hub_settings,
    write_root,
)

DEVICES = 20
FAST = {
    "telemetry_interval_s": 1.0,
    "drain_interval_s": 0.2,
    "ack_timeout_s": 2.0,
    "stop_grace_s": 1.0,
    "retrain_interval_s": 3600.0,
    "window_s": 3600.0,
}


@pytest.fixture
def hub(tmp_path: Path, mosquitto_broker: BrokerRunner, topics: Topics) -> Iterator[HubService]:
    data = hub_data(tmp_path / "hub", versions=1)
    with HubService.start(hub_settings(data, mosquitto_broker, topics)) as service:
        yield service


def start_fleet(
    hub: HubService, tmp_path: Path, topics: Topics, count: int, telemetry_s: float = 1.0
) -> SimulatedFleet:
    now_ms = CLOCK.now_ms()
    token = enrollment.create_token(
        hub.store, kind="fleet", by="test", now_ms=now_ms, expires_at=now_ms + 3_600_000
    )
    return SimulatedFleet.start(
        tmp_path / "devices",
        count=count,
        broker_url=hub.broker_url,
        root_metadata=write_root(hub.settings.data_dir, tmp_path / "root.json"),
        enrollment_token=token.secret,
        topic_prefix=topics.prefix,
        http=False,
        pacing=Pacing(rate=200.0, max_unacked=10),
        **(FAST | {"telemetry_interval_s": telemetry_s}),  # type: ignore[arg-type]
    )


def fleet_threads() -> int:
    """Threads of the fleet's shared machinery (the hub in this process has its own)."""
    names = ("mqtt-loop", "agent-timekeeper", "agent-job")
    return sum(1 for t in threading.enumerate() if t.name.startswith(names))


def online(hub: HubService, ids: list[str]) -> bool:
    found = [hub.store.devices.find(i) for i in ids]
    return all(d is not None and d.status == "active" and d.online for d in found)


def test_twenty_devices_on_one_loop_come_online_publish_and_install_their_desired_state(
    hub: HubService, tmp_path: Path, topics: Topics
) -> None:
    threads_before = threading.active_count()
    meter = ResourceMeter.now()
    with start_fleet(hub, tmp_path, topics, DEVICES) as fleet:
        ids = fleet.device_ids
        eventually(lambda: online(hub, ids), "every device enrolled and online")
        eventually(lambda: fleet.enrolled() == DEVICES, "every hello acknowledged")
        assert fleet.connected() == DEVICES
        names = {t.name for t in threading.enumerate()}
        assert not any(
            n.startswith(("agent-link", "paho-mqtt-client-sim", "agent-http")) for n in names
        )
        assert fleet_threads() <= 18  # the loop, the timekeeper, a pool of 16
        assert threading.active_count() - threads_before <= 20

        eventually(
            lambda: all(hub.store.uplink.records(TelemetryRecord, i) for i in ids),
            "telemetry from every device",
        )
        for device_id in ids:
            set_desired(
                hub.context, device_id=device_id, model_name=MODEL, model_version=1, actor="test"
            )
        eventually(
            lambda: all(
                (rt := d.manager.runtime) is not None and rt.ref.version == 1
                for d in fleet.devices.values()
            ),
            "every device serving v1",
            timeout_s=90.0,
        )
        sessions = {id(d.manager.runtime._session) for d in fleet.devices.values()}  # type: ignore[union-attr]
        assert len(sessions) == 1
        eventually(lambda: fleet.messages()["pending"] == 0, "every outbox settled")
        counts = fleet.messages()
        assert counts["dropped"] == 0
        assert counts["acknowledged"] == counts["sent"] > DEVICES * 3
        assert counts["downlink.accepted"] >= DEVICES * 2  # hello acks, the assignment...
        resources = meter.per_device(DEVICES)
        assert resources["rss_mb_per_device"] > 0
        assert resources["cpu_s_per_device"] > 0


@pytest.mark.slow
def test_three_hundred_devices_stay_online_through_a_steady_minute_and_lose_nothing(
    hub: HubService, tmp_path: Path, topics: Topics
) -> None:
    count = 300
    # telemetry every 5 s: 60 frames a second, which the hub in this same process keeps up with
    with start_fleet(hub, tmp_path, topics, count, telemetry_s=5.0) as fleet:
        ids = fleet.device_ids
        eventually(lambda: online(hub, ids), "every device enrolled and online", timeout_s=180)
        eventually(lambda: fleet.enrolled() == count, "every hello acknowledged")
        assert fleet_threads() <= 18  # the loop, the timekeeper, a pool of 16: not per device
        assert not any(t.name.startswith(("agent-link", "paho-mqtt-client-sim", "agent-http"))
                       for t in threading.enumerate())  # fmt: skip
        sent = fleet.messages()["sent"]
        time.sleep(60)  # steady
        assert online(hub, ids)
        assert fleet.connected() == count
        eventually(lambda: fleet.messages()["pending"] == 0, "every outbox settled", timeout_s=120)
        counts = fleet.messages()
        assert counts["dropped"] == 0
        assert counts["sent"] - sent >= count * 10
        assert counts["acknowledged"] == counts["sent"]
        stored = {r.device_id for r in hub.store.uplink.records(TelemetryRecord)}
        assert stored == set(ids)
