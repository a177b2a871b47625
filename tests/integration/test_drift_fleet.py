"""Issue 11's acceptance end to end: real agents, a real broker, the hub's real ingest.

Ten agents (:class:`simulator.fleet.SimulatedFleet`, each a real :class:`agent.device.Device`
with its own key, outbox and local API) run a 10-feature classifier and send data windows
every second; three of them (``region=eu``, 30% of the fleet, tagged by their enrollment
token) start seeing features f2 and f7 shifted by 1σ. The hub merges each window into its
device bucket in the ingest transaction, its scheduler scores closed buckets and plans
alerts; the alert must name exactly f2 and f7 and ``region=eu``, and be visible through
REST and the CLI, while the stationary cohorts stay quiet.

The model ignores f2 and f7 (tests/hub/monitor/drifthub.py), so its predictions do not
move: the alert is about inputs only. Buckets are 3 s wide (a per-model policy) and the
score job runs every 0.5 s, so a run takes seconds, not the default 5-minute buckets.
Each device predicts 150 rows per bucket, in the middle of the bucket, so one window holds
them and the window's start lies in that bucket.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import replace
from functools import partial
from pathlib import Path

import httpx
import numpy as np
import pytest

from agent.device import Device
from edgefleet.cli import main
from edgefleet.clock import SystemClock
from hub import keyring
from hub.api import auth
from hub.context import HubContext
from hub.fleet import enrollment
from hub.fleet.desired import set_desired
from hub.monitor import views
from hub.registry.artifacts import ArtifactStore
from hub.registry.registry import Registry
from hub.service import HubService
from hub.settings import HubSettings
from hub.store.dialects import open_store
from protocol.messages import DeviceConfig
from protocol.topics import Topics
from simulator.fleet import SimulatedFleet
from tests.brokers import BrokerRunner
from tests.hub.monitor.drifthub import FEATURES, MODEL, npz, reference_rows, sensor_model
from tests.integration.live_fleet import eventually, hub_settings, write_root

CLOCK = SystemClock()
BUCKET_MS = 4_000
SHIFT = np.array([1.0 if f in (2, 7) else 0.0 for f in range(FEATURES)])  # 1 sigma on f2, f7
REGIONS = {"eu": 3, "us": 4, "asia": 3}
ROWS = 150
STATIONARY, SHIFTED = 2, 4


def hub_data(path: Path, database: str = "") -> Path:
    ring = keyring.init(path / "keys", now_ms=CLOCK.now_ms())
    settings = HubSettings(data_dir=path, database=database)
    store = open_store(settings.store_location)
    try:
        registry = Registry(
            HubContext(store, ring, CLOCK, settings),
            ArtifactStore(path / "artifacts"),
        )
        x_val = reference_rows(500, seed=12)
        y_val = np.random.default_rng(13).integers(0, 3, size=500)
        registry.register(
            sensor_model(),
            name=MODEL,
            reference=npz(X=reference_rows()),
            validation=npz(X=x_val, y=y_val),
            actor="test",
        )
    finally:
        store.close()
    return path


@pytest.fixture
def hub(
    tmp_path: Path, broker: BrokerRunner, topics: Topics, database: str
) -> Iterator[HubService]:
    data = hub_data(tmp_path / "hub", database)
    settings = replace(
        hub_settings(data, broker, topics),
        drift_score_interval_s=0.5,
        drift_grace_s=1.0,
        database=database,
    )
    with HubService.start(settings) as service:
        views.put_policy(service.context, MODEL, {"bucket_ms": BUCKET_MS}, by="test")
        yield service


@pytest.fixture
def fleets(hub: HubService, tmp_path: Path, topics: Topics) -> Iterator[dict[str, SimulatedFleet]]:
    root = write_root(hub.settings.data_dir, tmp_path / "root.json")
    with ExitStack() as stack:
        fleets = {}
        for region, count in REGIONS.items():
            token = enrollment.create_token(
                hub.store,
                kind="fleet",
                by="test",
                now_ms=CLOCK.now_ms(),
                expires_at=CLOCK.now_ms() + 3_600_000,
                tags={"region": region, "fleet": "sim"},
            )
            fleets[region] = stack.enter_context(
                SimulatedFleet.start(
                    tmp_path / "devices" / region,
                    count=count,
                    broker_url=hub.broker_url,
                    root_metadata=root,
                    enrollment_token=token.secret,
                    prefix=region,
                    topic_prefix=topics.prefix,
                    telemetry_interval_s=3600,
                    retrain_interval_s=3600,
                    drain_interval_s=0.1,
                    ack_timeout_s=1.0,
                    stop_grace_s=0.5,
                )
            )
        config = DeviceConfig(window_s=1.0, telemetry_interval_s=3600, retrain=False)
        for fleet in fleets.values():
            for device_id in fleet.device_ids:
                eventually(partial(_active, hub, device_id), f"{device_id} enrolled")
                set_desired(
                    hub.context,
                    device_id=device_id,
                    model_name=MODEL,
                    model_version=1,
                    config=config,
                    actor="test",
                )
        for fleet in fleets.values():
            for device in fleet.devices.values():
                eventually(partial(_serving, device), "every device serves v1")
        yield fleets


def _active(hub: HubService, device_id: str) -> bool:
    found = hub.store.devices.find(device_id)
    return found is not None and found.status == "active"


def _serving(device: Device) -> bool:
    runtime = device.manager.runtime
    return runtime is not None and runtime.ref.version == 1


def predict_one_bucket(
    fleets: dict[str, SimulatedFleet], rng: np.random.Generator, *, shift_eu: bool
) -> None:
    """Wait for the next bucket, then 150 rows to every device's local API at once.

    All devices at once (a thread each), early in the bucket: sent one after another on a
    loaded machine, the last region's rows slipped into the next bucket, which then held
    mostly the shifted cohort's rows and was, rightly, called a fleet-wide drift.
    """
    now = time.time() * 1000
    target = now - now % BUCKET_MS + 0.25 * BUCKET_MS
    if target < now:
        target += BUCKET_MS
    time.sleep((target - now) / 1000)
    posts = [
        (url, rng.normal(size=(ROWS, FEATURES)) + (shift_eu and region == "eu") * SHIFT)
        for region, fleet in fleets.items()
        for url in fleet.urls.values()
    ]

    def post(url: str, x: np.ndarray) -> None:
        answer = httpx.post(f"{url}/predict", json={"inputs": x.tolist()}, timeout=10.0)
        assert answer.status_code == 200, (url, answer.text)

    with ThreadPoolExecutor(max_workers=len(posts)) as pool:
        for done in [pool.submit(post, url, x) for url, x in posts]:
            done.result()


@pytest.mark.parametrize(
    ("broker", "database"),
    [("mosquitto", "sqlite"), ("amqtt", "sqlite"), ("mosquitto", "postgresql")],
    indirect=True,
)  # both brokers, both stores; PostgreSQL on one broker (the suite's time)
def test_a_shift_of_two_features_in_one_cohort_alerts_on_exactly_them_end_to_end(
    hub: HubService, fleets: dict[str, SimulatedFleet], capsys: pytest.CaptureFixture[str]
) -> None:
    rng = np.random.default_rng(42)
    for _ in range(STATIONARY):
        predict_one_bucket(fleets, rng, shift_eu=False)
    for _ in range(SHIFTED):
        predict_one_bucket(fleets, rng, shift_eu=True)
    admin = auth.create_token(
        hub.store, role="admin", name="t", actor="test", now_ms=CLOCK.now_ms()
    )
    api = httpx.Client(
        base_url=f"{hub.http_url}/api/v1",
        headers={"Authorization": f"Bearer {admin.token}"},
        timeout=10.0,
    )
    with api:

        def alerting() -> bool:
            found = api.get("/drift/alerts").json()
            return any(a["severity"] == "alert" for a in found)

        eventually(alerting, "an alert of alert severity", timeout_s=20)
        [alert] = api.get("/drift/alerts").json()
        assert alert["kind"] == "drift"
        assert alert["model"] == MODEL
        assert set(alert["features"]) == {"f2", "f7"}
        assert alert["cohorts"] == ["region=eu"]
        for feature in alert["detail"]["features"]:
            [cohort] = feature["cohorts"]
            assert cohort["cohort"] == "region=eu"
            assert cohort["share"] > 0.9
        eu = api.get("/drift", params={"model": MODEL, "cohort": "region=eu", "since": 0}).json()
        shifted = [b["scores"][2]["psi"] for b in eu["buckets"] if b["scores"][2]["psi"]]
        assert max(shifted) > 0.25
        for region in ("us", "asia"):
            quiet = api.get(
                "/drift", params={"model": MODEL, "cohort": f"region={region}", "since": 0}
            ).json()
            assert quiet["buckets"], f"region={region} was scored"
            for bucket in quiet["buckets"]:
                assert all(s["psi"] is None or s["psi"] < 0.1 for s in bucket["scores"])
        metrics = httpx.get(f"{hub.http_url}/metrics", headers=api.headers).text
        assert 'edgefleet_drift_alerts_open{kind="drift",severity="alert"} 1.0' in metrics
        target = ["--hub", hub.http_url, "--token", admin.token]
        assert main(["drift", "alerts", "--state", "open", *target]) == 0
        listed = capsys.readouterr().out
        assert alert["id"] in listed
        assert "region=eu" in listed
        assert main(["drift", "ack", alert["id"], *target]) == 0
        assert api.get(f"/drift/alerts/{alert['id']}").json()["state"] == "acknowledged"
