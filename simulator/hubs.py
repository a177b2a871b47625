"""Where a scenario's hub is: in this process (``--with-hub``) or anywhere else (``--hub``).

A scenario talks to its hub only over REST (the operator's acts, everything the report
reads) and MQTT (its agents), so the hub can be another process, another machine or
several replicas behind one URL. :func:`in_process` starts a hub over an embedded broker
in this process, as the demo does: the only thing it adds is that the scenario may restart
that broker (the ``broker-restart`` fault). :func:`remote` takes the URLs, an admin token
and the root metadata the agents pin.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from edgefleet.clock import SystemClock
from hub import keyring
from hub.api import auth
from hub.service import HubService
from hub.settings import HubSettings
from hub.transport.broker import EmbeddedBroker

GRACE_S = 1.0
"""Drift buckets are scored this long after they close (the hub's default is 120 s)."""
OFFLINE_AFTER_S = 15.0
"""A device silent this long is offline (default 120 s): an agent stopped before the hub
acknowledged its ``offline`` report is seen gone within the scenario's time scale."""


@dataclass(frozen=True)
class HubLink:
    """The hub as a scenario sees it; ``broker`` only when this process runs it."""

    api: httpx.Client
    http_url: str
    token: str
    broker_url: str
    root_file: Path
    broker: EmbeddedBroker | None = None


def fast_settings(data_dir: Path, broker_url: str | None = None) -> HubSettings:
    """The hub's real settings with the scenarios' time scales (docs/simulator.md)."""
    settings = HubSettings(
        data_dir=data_dir, http_port=0, reconcile_interval_s=1.0, round_tick_interval_s=0.5,
        drift_score_interval_s=0.5, drift_grace_s=GRACE_S, rollout_tick_s=0.5,
        offline_after_s=OFFLINE_AFTER_S, offline_check_interval_s=1.0,
    )  # fmt: skip
    return dataclasses.replace(settings, broker_url=broker_url) if broker_url else settings


@contextmanager
def in_process(workdir: Path, broker_url: str | None = None) -> Iterator[HubLink]:
    """A key ring (root 2-of-3), a hub over an embedded broker (or ``broker_url``'s, such
    as a Mosquitto the scenario cannot restart), an admin token."""
    clock = SystemClock()
    settings = fast_settings(workdir / "hub", broker_url)
    ring = keyring.init(settings.keys_dir, now_ms=clock.now_ms())
    root_file = workdir / "root.json"
    root_file.write_bytes(ring.chain[0].to_bytes())
    broker = None if broker_url else EmbeddedBroker()
    with HubService.start(settings, embedded_broker=broker) as hub:
        admin = auth.create_token(
            hub.store, role="admin", name="sim", actor="sim", now_ms=clock.now_ms()
        )
        with _client(hub.http_url, admin.token) as api:
            yield HubLink(api, hub.http_url, admin.token, hub.broker_url, root_file, broker)


@contextmanager
def remote(hub_url: str, token: str, broker_url: str, root_file: Path) -> Iterator[HubLink]:
    """A hub elsewhere (``hub_url`` without ``/api/v1``)."""
    base = hub_url.rstrip("/").removesuffix("/api/v1")
    with _client(base, token) as api:
        yield HubLink(api, base, token, broker_url, root_file)


def listing(api: httpx.Client) -> list[dict[str, Any]]:
    """Every device the hub knows (``GET /devices`` page by page, 1000 at a time)."""
    items: list[dict[str, Any]] = []
    while True:
        response = api.get("/devices", params={"limit": 1000, "offset": len(items)})
        response.raise_for_status()
        page = response.json()["items"]
        items += page
        if len(page) < 1000:
            return items


def _client(http_url: str, token: str) -> httpx.Client:
    return httpx.Client(
        base_url=f"{http_url}/api/v1",
        headers={"Authorization": f"Bearer {token}"},
        timeout=60.0,
    )
