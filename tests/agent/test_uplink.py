"""The uplink's drain and rewind, against a transport whose connections the test counts."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.config import AgentConfig
from agent.identity import load_or_create
from agent.transport import EventSink, WillFactory
from agent.uplink import Uplink
from protocol.frame import Envelope, Header
from protocol.messages import Nudge, StateReport
from tests.clock import FakeClock


class CountedConnections:
    """An up connection that records what goes out on it; ``connections`` moves when the
    test says a new one came up."""

    def __init__(self) -> None:
        self.connected = True
        self.connections = 1
        self.published: list[str] = []

    def subscribe(self, *topics: str) -> None: ...

    def on_event(self, sink: EventSink) -> None: ...

    def connect(self, *, will: WillFactory | None = None) -> None: ...

    def disconnect(self) -> None: ...

    def publish(self, topic: str, payload: bytes) -> bool:
        self.published.append(topic.rsplit("/", 1)[-1])
        return True


@pytest.fixture
def transport() -> CountedConnections:
    return CountedConnections()


@pytest.fixture
def up(tmp_path: Path, clock: FakeClock, transport: CountedConnections) -> Uplink:
    """An uplink whose hello and first state report went out on connection 1."""
    config = AgentConfig(device_id="dev-1", state_dir=tmp_path, broker_url="mqtt://127.0.0.1:1")
    uplink = Uplink(
        config,
        load_or_create(tmp_path, "dev-1"),
        transport,
        path=tmp_path / "agent.db",
        clock=clock,
        active=lambda: None,
    )
    uplink.send(StateReport(active=None))
    uplink.pump(clock.now_ms())
    return uplink


def test_news_of_a_connection_arriving_after_frames_went_out_on_it_resends_nothing(
    up: Uplink, transport: CountedConnections, clock: FakeClock
) -> None:
    assert transport.published == ["hello", "state"]
    up.reconnected()  # the Connected event of connection 1, handled after the pump ran
    up.pump(clock.now_ms())
    assert transport.published == ["hello", "state"]


def test_a_reconnect_resends_what_went_out_on_the_connection_before(
    up: Uplink, transport: CountedConnections, clock: FakeClock
) -> None:
    transport.connections = 2
    up.send(StateReport(active=None, retrain="on"))
    up.pump(clock.now_ms())  # the new report goes out on connection 2 first
    up.reconnected()
    up.pump(clock.now_ms())
    assert transport.published == ["hello", "state", "state", "hello", "state"]


def test_the_hub_s_resend_nudge_resends_what_went_out_on_this_connection_too(
    up: Uplink, transport: CountedConnections, clock: FakeClock
) -> None:
    header = Header(Nudge.qualified_kind(), "dev-1", 1, clock.now_ms(), "0" * 32, "0" * 64)
    up.on_nudge(Envelope(header, Nudge("resend")))
    up.pump(clock.now_ms())
    assert transport.published == ["hello", "state", "hello", "state"]
