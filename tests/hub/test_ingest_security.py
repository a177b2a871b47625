"""Security events are never drowned: attacks are audited apart from garbage, counted in
/metrics, and a device whose sessions keep replacing each other is flagged cloned."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from hub.health import OFFLINE_FLAG, Health
from hub.ingest.rules import Refused
from hub.ingest.security import Ledger, TakeoverWatch
from hub.metrics import sample
from protocol import frame
from protocol.messages import HubAck, StateReport, Telemetry
from tests.hub.hubsim import HubSim, SimDevice


@pytest.fixture
def hub(tmp_path: Path) -> HubSim:
    return HubSim(tmp_path, audit_rejections_per_device_per_min=5)


def security_events(action: str) -> float:
    return sample("edgefleet_hub_security_events_total", {"action": action})


def alerts(hub: HubSim) -> list[tuple[str, str, str]]:
    entries = hub.store.audit.page(outcome="alert", limit=10_000).items
    return [(e.actor, e.action, e.reason) for e in reversed(entries)]


def telemetry() -> Telemetry:
    return Telemetry(uptime_s=1.0, inference_count=1, latency_p50_ms=1.0)


def test_garbage_on_a_device_topic_does_not_drown_the_key_change_alert_that_follows(
    hub: HubSim,
) -> None:
    dev = hub.device("dev-1", enrolled=True)
    garbage = (hub.topics.up(dev.id, "telemetry"), b"\x00unsigned garbage")
    counted = security_events("key_change_refused")
    before = hub.snapshot()
    clone = SimDevice("dev-1", hub.topics, hub.clock)

    hub.send(*[garbage] * 100)
    hub.send(clone.hello())

    assert hub.snapshot() == before  # the pinned key and everything else as it was
    assert alerts(hub) == [("device:dev-1", "key_change_refused", "identity_mismatch")]
    assert security_events("key_change_refused") == counted + 1
    assert hub.store.audit.count(outcome="rejected", actor="device:dev-1") == 5
    hub.clock.advance(60)
    hub.send(garbage)  # the next minute's first batch writes the last minute's summary
    [summary] = [s for s in hub.summaries() if s["reason"] == "malformed"]
    assert (summary["count"], summary["audited"], summary["top"]) == (100, 5, [["dev-1", 100]])


def test_a_frame_signed_by_another_device_on_its_topic_is_an_identity_mismatch_alert(
    hub: HubSim,
) -> None:
    victim = hub.device("dev-a", enrolled=True)
    attacker = hub.device("dev-b", enrolled=True)
    before = hub.snapshot()
    counted = security_events("identity_mismatch")

    hub.send(attacker.frame(telemetry(), topic_device=victim.id))

    assert hub.snapshot() == before
    assert alerts(hub) == [("device:dev-a", "identity_mismatch", "identity_mismatch")]
    assert security_events("identity_mismatch") == counted + 1


def test_an_unsigned_identity_mismatch_is_only_garbage(hub: HubSim) -> None:
    victim = hub.device("dev-a", enrolled=True)
    stranger = SimDevice("dev-b", hub.topics, hub.clock)  # not enrolled: nobody's key

    hub.send(stranger.frame(telemetry(), topic_device=victim.id))

    assert alerts(hub) == []
    assert hub.rejections() == [("device:dev-a", "frame_rejected", "identity_mismatch")]


def test_a_hub_signed_frame_sent_back_on_an_uplink_topic_is_a_wrong_role_alert(
    hub: HubSim,
) -> None:
    dev = hub.device("dev-1", enrolled=True)
    reflected = frame.encode(
        HubAck(committed=((1, 1),)),
        device_id=dev.id,
        seq=7,
        sent_at=hub.clock.now_ms(),
        nonce=os.urandom(16),
        key=hub.hub_key,
    )
    before = hub.snapshot()

    hub.send((hub.topics.up(dev.id, "ack"), reflected))

    assert hub.snapshot() == before
    assert alerts(hub) == [("device:dev-1", "wrong_role", "wrong_role")]


def test_alerts_past_their_budget_are_summarised_never_dropped(tmp_path: Path) -> None:
    hub = HubSim(tmp_path, audit_alerts_per_device_per_min=3)
    hub.device("dev-1", enrolled=True)
    clones = [SimDevice("dev-1", hub.topics, hub.clock) for _ in range(10)]

    hub.send(*[clone.hello() for clone in clones])
    hub.clock.advance(60)
    hub.send(clones[0].hello())

    rows = hub.store.audit.page(outcome="alert", action="key_change_refused", limit=100).items
    summarised = [r for r in rows if r.actor == "device:dev-1" and "summarised" in r.detail]
    assert len(rows) - len(summarised) == 4  # 3 in the first minute, 1 in the next
    assert [r.detail for r in summarised] == [
        f'{{"from_ms":{summarised[0].at - 60_000},"summarised":7,"to_ms":{summarised[0].at}}}'
    ]


def test_alert_rows_outlive_the_pruning_of_garbage(tmp_path: Path) -> None:
    hub = HubSim(tmp_path, audit_rejections_keep=10, audit_rejections_per_device_per_min=1000)
    hub.device("dev-1", enrolled=True)
    hub.send(SimDevice("dev-1", hub.topics, hub.clock).hello())
    for _ in range(20):
        hub.send(*[(hub.topics.up("dev-1", "state"), b"junk")] * 10)

    assert hub.store.audit.count(outcome="rejected") < 20
    assert alerts(hub) == [("device:dev-1", "key_change_refused", "identity_mismatch")]


def offline() -> StateReport:
    return StateReport(active=None, flags=(OFFLINE_FLAG,))


def test_a_stream_of_last_wills_flags_the_device_cloned_until_a_quiet_window(
    tmp_path: Path,
) -> None:
    hub = HubSim(tmp_path, cloned_takeovers=3, cloned_window_s=60.0)
    dev = hub.device("dev-1", enrolled=True)
    raised = sample("edgefleet_hub_cloned_device_alerts_total")
    takeovers = sample("edgefleet_hub_session_takeovers_total")

    for _ in range(4):  # two clones taking each other's session: a will each time
        hub.send(dev.frame(offline()), dev.frame(StateReport(active=None)))
        hub.clock.advance(2)

    assert hub.store.devices.get(dev.id).health == Health.CLONED_DEVICE
    assert sample("edgefleet_hub_session_takeovers_total") == takeovers + 3
    assert sample("edgefleet_hub_cloned_device_alerts_total") == raised + 1
    assert alerts(hub) == [("system", "cloned_device", "cloned_device")]

    hub.clock.advance(61)
    hub.send(dev.frame(StateReport(active=None)))
    assert hub.store.devices.get(dev.id).health == Health.OK


def test_one_will_after_an_outage_is_no_takeover(hub: HubSim) -> None:
    dev = hub.device("dev-1", enrolled=True)
    takeovers = sample("edgefleet_hub_session_takeovers_total")

    hub.send(dev.frame(offline()))
    hub.clock.advance(120)
    hub.send(dev.frame(offline()))

    assert sample("edgefleet_hub_session_takeovers_total") == takeovers
    assert hub.store.devices.get(dev.id).health == Health.OK


def refusal(key: str, *, known: bool = False, action: str = "frame_rejected") -> Refused:
    return Refused(key, "state", 1, "malformed", "Malformed", 4, known=known, action=action)


def test_the_ledger_tracks_a_bounded_number_of_strangers() -> None:
    ledger = Ledger(garbage_per_sender=1, alerts_per_sender=1, max_senders=3)
    now = 1_000_000
    rows = [ledger.refused(refusal(f"ghost-{i}"), now) for i in range(10)]
    # three strangers get a row each; the other seven share one bucket of one
    assert [r is not None for r in rows] == [True] * 4 + [False] * 6
    [summary] = ledger.summaries(now, flush=True)
    assert '"count":10' in summary.detail
    assert '"senders":4' in summary.detail


def test_an_alert_has_a_budget_garbage_cannot_use() -> None:
    ledger = Ledger(garbage_per_sender=2, alerts_per_sender=2)
    now = 1_000_000
    for _ in range(50):
        ledger.refused(refusal("dev-1", known=True), now)
    row = ledger.refused(refusal("dev-1", known=True, action="revoked_key_in_use"), now)
    assert row is not None
    assert row.outcome == "alert"


def test_the_takeover_watch_forgets_the_quietest_devices_beyond_its_bound() -> None:
    watch = TakeoverWatch(window_ms=60_000, threshold=1, max_devices=2)
    for i in range(5):
        watch.will(f"dev-{i}", 1_000 + i)
    assert watch.will("dev-4", 2_000).became_cloned  # the newest are still tracked
    assert not watch.cloned("dev-0", 2_000)
