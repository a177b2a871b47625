"""The hub's model side for agent tests: signed trust documents, packages and chunks.

:class:`FleetDouble` is the content, in memory: a :class:`~tests.protocol.trust_sim.TrustSim`
(role keys, root chain, release list, assignment and heartbeat drafts) plus the package
bytes it has released, and it answers a :class:`~protocol.messages.FetchRequest` with a
:class:`~protocol.messages.Chunk` as the hub's delivery does (cut to the artifact's end),
corrupting the chunk at an offset once when told to::

    fleet = FleetDouble(TrustSim(now=clock.now_ms()))
    entry = fleet.release(build_package(models.gemm_classifier(), version=2))
    fleet.assign(entry)                     # new assignment + heartbeat pinning the list
    fleet.corrupt.add(512)                  # the next chunk at offset 512 is damaged once

:class:`ModelHub` serves the same content over a real broker, on top of
:class:`~tests.agent.hub_double.HubDouble` (ingest, SQLite, acks), with every downlink
frame signed by the rollout key the agent trusts: the root chain, release list and
heartbeat retained on ``fleet/*``, the desired state retained on the device's
``down/desired``, and a chunk for every committed ``up/fetch``.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Self

from protocol.frame import Envelope
from protocol.messages import Chunk, FetchRequest, StateReport
from protocol.metadata import ReleaseEntry, encode_root_chain
from protocol.topics import Topics
from tests.agent.hub_double import Endpoint, HubDouble
from tests.mqtt import TestClient
from tests.packages import Built
from tests.protocol.trust_sim import TrustSim


class FleetDouble:
    """Trust documents and packages; see the module docstring."""

    def __init__(self, sim: TrustSim) -> None:
        self.sim = sim
        self.packages: dict[str, bytes] = {}
        self.corrupt: set[int] = set()
        self.served: list[FetchRequest] = []

    def release(self, built: Built, *, data: bytes | None = None) -> ReleaseEntry:
        """Add ``built`` to the release list (next counter, list version + 1).

        ``data``: serve these bytes for it instead (a hub serving the wrong file).
        """
        entries = self.sim.release.entries
        counter = 1 + max((e.release_counter for e in entries), default=0)
        entry = built.entry(counter)
        self.sim.release.entries = (*entries, entry)
        self.sim.release.version += 1
        self.packages[entry.sha256] = built.data if data is None else data
        return entry

    def assign(self, entry: ReleaseEntry) -> None:
        """A new assignment of ``entry`` and a fresh heartbeat pinning the current list."""
        self.sim.beat()
        self.sim.assign(entry)

    def chunk(self, request: FetchRequest) -> Chunk | None:
        """The answer to ``request`` (``None``: not an artifact this hub has)."""
        self.served.append(request)
        data = self.packages.get(request.sha256)
        if data is None or request.offset >= len(data):
            return None
        part = data[request.offset : request.offset + request.length]
        digest = hashlib.sha256(part).hexdigest()
        if request.offset in self.corrupt:
            self.corrupt.discard(request.offset)
            part = bytes([part[0] ^ 0xFF]) + part[1:]
        return Chunk(request.sha256, request.offset, len(data), digest, part)

    def root_chain(self) -> bytes:
        """The ``fleet/root`` payload, as the hub publishes it."""
        return encode_root_chain(self.sim.root_chain)


class ModelHub:
    """A :class:`FleetDouble` served over a real broker to one device."""

    def __init__(
        self,
        broker: Endpoint,
        topics: Topics,
        db_path: Path,
        fleet: FleetDouble,
        device_id: str,
    ) -> None:
        self.fleet = fleet
        self.topics = topics
        self.device_id = device_id
        self.double = HubDouble(broker, topics, db_path, key=fleet.sim.signers["rollout"][0])
        self.double.on("fetch", self._on_fetch)
        self._publisher = TestClient(broker)

    def __enter__(self) -> Self:
        self.double.start()
        self._publisher.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self._publisher.close()
        self.double.stop()

    def publish_fleet(self) -> None:
        """Root chain, release list and heartbeat, retained."""
        sim = self.fleet.sim
        for kind, payload in (
            ("root", self.fleet.root_chain()),
            ("release", sim.release_doc().to_bytes()),
            ("heartbeat", sim.heartbeat_doc().to_bytes()),
        ):
            self._publisher.publish(self.topics.fleet(kind), payload, retain=True)

    def publish_desired(self) -> int:
        """The device's desired state (the current assignment), retained; returns its seq."""
        return self.double.publish_down(self.device_id, self.fleet.sim.desired(), retain=True)

    def states(self) -> list[StateReport]:
        """Every committed state report of the device, oldest first."""
        messages = [e.message for e in self.double.messages(self.device_id, "state")]
        return [m for m in messages if isinstance(m, StateReport)]

    def _on_fetch(self, hub: HubDouble, envelope: Envelope) -> None:
        if not isinstance(envelope.message, FetchRequest):
            return
        chunk = self.fleet.chunk(envelope.message)
        if chunk is not None:
            hub.publish_down(self.device_id, chunk)
