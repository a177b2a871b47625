"""The collaborators the REST routes call, built once by whoever starts the hub.

:class:`HubServices` is a frozen bundle, not a container: the integrator (``hub serve``,
the simulator, a test) constructs the registry (with its key ring), artifact store and
downlink
for its own process and hands them to ``create_app``. Plain functions
over the store (:mod:`hub.fleet.enrollment`, :mod:`hub.fleet.desired`) are called directly. Routes
never construct collaborators themselves, so a test can pass a registry over a temporary
directory and a ``None`` downlink (desired state is then stored for the running hub's
reconciler to publish, see :mod:`hub.fleet.desired`).
"""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry

from hub.fleet.desired import Sender
from hub.registry.artifacts import ArtifactStore
from hub.registry.registry import Registry


@dataclass(frozen=True)
class HubServices:
    """What the routes need besides the store, the clock and the settings.

    Attributes:
        registry: registers models and accepts offline-signed release lists; its key
            ring signs assignments when an operator sets a device's desired state.
        artifacts: the content-addressed package store (downloads).
        downlink: publishes desired state to devices; None stores it for the running
            hub's reconciler to publish.
        metrics: the hub's Prometheus registry (``hub.metrics.REGISTRY``), exposed on
            ``/metrics`` beside the API's own request metrics.
    """

    registry: Registry
    artifacts: ArtifactStore
    downlink: Sender | None
    metrics: CollectorRegistry
