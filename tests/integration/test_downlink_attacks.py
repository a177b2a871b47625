"""Downlink sequence numbers can never strand a device, and rotated keys take effect at once.

Performed against a real hub (:class:`hub.service.HubService`), a real device
(:class:`agent.device.Device`) and a real broker (Mosquitto and the embedded one):

- five processes publishing desired states beside the running hub (what ``rollout set
  --broker`` did, each with a downlink of its own): the device keeps hearing the hub;
- a thief with the rollout key signs frames with seq 1,002,000, 2^62, and the furthest
  the window lets through: the first two move nothing, the third strands the device,
  which says so, and ``edgefleet keys rotate rollout`` on the running hub recovers it;
- rotating the heartbeat and the rollout keys while the hub runs: the device trusts the
  new root, the re-signed assignment and heartbeat within seconds, and installs the next
  version, with no restart.

Each test ends on the state: the trusted versions, the model served, the outbox, the
downlink window and the audit rows.
"""

from __future__ import annotations

import os
import queue
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from hub import keyring
from hub.context import HubContext
from hub.fleet.desired import set_desired
from hub.health import reported_flags
from hub.service import HubService
from hub.settings import HubSettings
from hub.store.dialects import open_store
from hub.transport.downlink import Downlink
from hub.transport.mqtt import HubLink, Inbound, fleet_publisher
from protocol import frame, keys
from protocol.messages import HubAck, Telemetry
from protocol.replay import downlink_seq, key_epoch
from protocol.topics import Topics
from tests.brokers import BrokerRunner
from tests.integration.live_fleet import (
    CLOCK,
    MODEL,
    LiveDevice,
    assign,
    eventually,
    hub_data,
    hub_settings,
    live_device,
    write_root,
)
from tests.mqtt import TestClient

DAY_MS = 86_400_000


@pytest.fixture
def hub(tmp_path: Path, broker: BrokerRunner, topics: Topics) -> Iterator[HubService]:
    data = hub_data(tmp_path / "hub")
    with HubService.start(hub_settings(data, broker, topics)) as service:
        yield service


@pytest.fixture
def device(hub: HubService, tmp_path: Path) -> Iterator[LiveDevice]:
    root = write_root(hub.settings.data_dir, tmp_path / "root.json")
    live = live_device(hub, root, tmp_path / "state", "dev-1")
    try:
        yield live
    finally:
        live.device.stop()


def in_sync(hub: HubService, device: LiveDevice, version: int) -> None:
    """Assign ``version`` through the running hub; wait until it serves and the hub has
    acknowledged everything it sent."""
    want = assign(hub.context, device, version)
    eventually(lambda: device.serving() == want, f"{MODEL} v{version} to serve")
    eventually(device.outbox_empty, "the hub's acks for everything the device sent")


def refused(device: LiveDevice, reason: str) -> int:
    return device.device.agent.downlink.counters().get(f"refused.{reason}", 0)


def hub_twin_flags(hub: HubService, device: LiveDevice) -> tuple[str, ...]:
    return reported_flags(hub.store.devices.get(device.id).reported) or ()


def beside_the_hub(hub: HubService, broker: BrokerRunner, device: LiveDevice) -> None:
    """One process that publishes a desired state beside the running hub, with a store
    connection and a downlink of its own (what ``rollout set --broker`` did)."""
    settings = HubSettings(data_dir=hub.settings.data_dir, topic_prefix=hub.settings.topic_prefix)
    topics = Topics(settings.topic_prefix)
    inbox: queue.Queue[Inbound] = queue.Queue(1)
    link = HubLink(broker.url, client_id=f"cli-{uuid.uuid4().hex[:8]}", inbox=inbox)
    store = open_store(settings.db_path)
    link.start()
    try:
        assert link.wait_ready(10)
        ring = keyring.load(settings.keys_dir)
        downlink = Downlink(store, link, topics, ring.signing_keys("rollout")[0], CLOCK)
        ctx = HubContext(store, ring, CLOCK, settings, downlink, fleet_publisher(link, topics))
        set_desired(ctx, device_id=device.id, model_name=MODEL, model_version=1, actor="cli")
    finally:
        link.stop()
        store.close()


def test_five_publishers_beside_a_running_hub_never_strand_a_device(
    hub: HubService, device: LiveDevice, broker: BrokerRunner
) -> None:
    in_sync(hub, device, 1)
    accepted = device.device.agent.downlink.counters()["accepted"]

    for _ in range(5):
        beside_the_hub(hub, broker, device)
    eventually(
        lambda: device.device.agent.downlink.counters()["accepted"] >= accepted + 5,
        "the five desired states accepted",
    )

    in_sync(hub, device, 2)  # the hub's desired state, chunks and acks all get through
    assert refused(device, "replay") == refused(device, "seq_ahead") == 0
    assert device.device.agent.downlink.problem() is None
    assert "downlink_refused" not in device.flags()


def test_a_stolen_rollout_key_cannot_strand_a_device_past_a_root_rotation(
    hub: HubService, device: LiveDevice, broker: BrokerRunner, topics: Topics
) -> None:
    in_sync(hub, device, 1)
    guard = device.device.agent.downlink
    stolen = keyring.read_private_key(hub.settings.keys_dir / "rollout.pem")
    before = guard.window

    def forge(seq: int) -> None:
        payload = frame.encode(
            HubAck(committed=()),
            device_id=device.id,
            seq=seq,
            sent_at=CLOCK.now_ms(),
            nonce=os.urandom(16),
            key=stolen,
        )
        with TestClient(broker) as thief:
            thief.publish(topics.down(device.id, "ack"), payload)

    forge(1_002_000)  # below the hub's time-ordered seqs: a replay
    forge(2**62)  # thousands of years ahead: refused, never accepted
    eventually(lambda: refused(device, "replay") + refused(device, "seq_ahead") == 2, "refusals")
    # Only the hub's own frames (a heartbeat, an ack) may have moved the window meanwhile:
    # it stays in this epoch and no further than a seq stamped now.
    after = guard.window
    assert after.epoch == before.epoch
    assert before.high <= after.high < downlink_seq(CLOCK.now_ms() + 60_000, 0)
    assert 1_002_000 not in after.seen

    furthest = downlink_seq(CLOCK.now_ms() + DAY_MS - 60_000, 0)
    forge(furthest)  # the furthest the window lets anyone stamp: it strands the device...
    eventually(lambda: guard.window.high == furthest, "the stolen key's frame accepted")
    for _ in range(4):  # ... the hub's acks for these are refused as replays
        device.device.agent.send(Telemetry(uptime_s=1.0))
    eventually(lambda: guard.problem() is not None, "the device to notice it cannot hear the hub")
    assert "downlink_refused" in device.flags()
    device.device.agent.send(device.device.manager.state_report())
    eventually(lambda: "downlink_refused" in hub_twin_flags(hub, device), "the hub to see it")
    assert not device.outbox_empty()

    # ...until the operator rotates the stolen key on the running hub: root v2
    ring = keyring.rotate(hub.settings.keys_dir, "rollout", now_ms=CLOCK.now_ms())
    new_rollout = keys.keyid(ring.signing_keys("rollout")[0].public_key())
    eventually(lambda: device.device.trust.state.root.version == 2, "the device to trust root v2")
    eventually(device.outbox_empty, "the hub's acks accepted again")
    assert guard.window.epoch == key_epoch([new_rollout])
    assert guard.window.high < furthest
    assert guard.problem() is None
    device.device.agent.send(device.device.manager.state_report())
    eventually(lambda: "downlink_refused" not in hub_twin_flags(hub, device), "a clean report")
    assert device.serving() is not None
    assert device.serving().version == 1  # type: ignore[union-attr]
    [reload] = hub.store.audit.page(action="keys.reloaded").items
    assert reload.target == "root v2"


def test_keys_rotated_while_the_hub_runs_take_effect_at_once(
    hub: HubService, device: LiveDevice, broker: BrokerRunner, topics: Topics
) -> None:
    in_sync(hub, device, 1)
    trust = device.device.trust
    old_assignment = trust.versions().assignment
    keys_dir = hub.settings.keys_dir

    keyring.rotate(keys_dir, "heartbeat", now_ms=CLOCK.now_ms())
    ring = keyring.rotate(keys_dir, "rollout", now_ms=CLOCK.now_ms())
    eventually(lambda: trust.state.root.version == 3, "the device to trust root v3", 15)
    eventually(
        lambda: trust.versions().assignment > 0 and trust.state.heartbeat is not None,
        "the re-signed assignment and a new heartbeat",
        15,
    )
    retained = retained_desired(broker, topics, device.id)
    rollout = ring.signing_keys("rollout")[0].public_key()
    assert frame.decode(retained, rollout, expect_kind="down.desired").header.device_id == device.id
    assert trust.versions().assignment == old_assignment + 1  # re-signed, the next version
    in_sync(hub, device, 2)  # what the new keys sign installs, without a restart
    assert trust.state.root.version == 3
    reloads = hub.store.audit.page(action="keys.reloaded").items
    assert {entry.target for entry in reloads} >= {"root v3"}


def retained_desired(broker: BrokerRunner, topics: Topics, device_id: str) -> bytes:
    topic = topics.down(device_id, "desired")
    with TestClient(broker) as reader:  # amqtt may hand a new client other retained topics
        reader.subscribe(topic)
        return reader.wait_for(lambda m: m.retain and m.topic == topic, 5.0)[-1].payload
