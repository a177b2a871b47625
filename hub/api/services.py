"""The collaborators the REST routes call besides the hub context, built once by whoever
starts the hub.

:class:`HubServices` is a frozen bundle, not a container: the integrator (``hub serve``,
the simulator, a test) constructs the registry and artifact store for its own process
and hands them to ``create_app`` with the :class:`~hub.context.HubContext` (store, key
ring, clock, settings, downlink). Plain functions over the context
(:mod:`hub.fleet.enrollment`, :mod:`hub.fleet.desired`) are called directly. Routes
never construct collaborators themselves, so a test can pass a registry over a temporary
directory and a context without a downlink (desired state is then stored for the running
hub's reconciler to publish, see :mod:`hub.fleet.desired`).
"""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry

from hub.registry.artifacts import Artifacts
from hub.registry.registry import Registry


@dataclass(frozen=True)
class HubServices:
    """What the routes need besides the hub context.

    Attributes:
        registry: registers models and accepts offline-signed release lists.
        artifacts: the content-addressed package store (downloads).
        metrics: the hub's Prometheus registry (``hub.metrics.REGISTRY``), exposed on
            ``/metrics`` beside the API's own request metrics.
    """

    registry: Registry
    artifacts: Artifacts
    metrics: CollectorRegistry
