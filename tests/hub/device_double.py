"""A protocol-level device for hub tests: what an agent does on the wire, and nothing else.

:class:`DeviceDouble` speaks to a real broker through :class:`tests.mqtt.TestClient` and
trusts exactly what :mod:`protocol.trust` lets it trust, starting from the root v1 it
was provisioned with::

    with DeviceDouble(broker, topics, "dev-1", root_v1, now=clock.now_ms) as device:
        device.hello(token)                 # enrollment
        assignment = device.sync()          # root chain, heartbeat, release list, desired
        entry = assignment.entry
        package = device.download(entry)            # fetch / chunk, hash-checked
        device.report(ModelRef(entry.name, entry.version, entry.sha256))

Downlink frames are verified with the rollout-role keys of the device's trusted root,
and a seq already seen is ignored (the retained desired state comes back on every
reconnect). Uplink frames are signed with the device's own key, with a strictly
increasing seq. Nothing is persisted and no model is run: the agent does that; this
double checks that the hub's side of the protocol holds.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from hashlib import sha256
from types import TracebackType
from typing import Self

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from protocol import frame, keys, metadata, trust
from protocol.documents import SignedDocument
from protocol.errors import ProtocolError
from protocol.frame import Message
from protocol.messages import Chunk, DesiredState, FetchRequest, Hello, ModelRef, StateReport
from protocol.metadata import Assignment, ReleaseEntry, ReleaseList
from protocol.topics import Topics
from tests.mqtt import Endpoint, Received, TestClient

DEFAULT_TIMEOUT_S = 15.0


class DeviceDouble:
    """One device on the wire; use it as a context manager."""

    def __init__(
        self,
        broker: Endpoint,
        topics: Topics,
        device_id: str,
        root: SignedDocument,
        *,
        now: Callable[[], int],
        key: Ed25519PrivateKey | None = None,
    ) -> None:
        self.device_id = device_id
        self.topics = topics
        self.key = key or Ed25519PrivateKey.generate()
        self.state = trust.TrustedState.initial(root)
        self.now = now
        self.seq = 0
        self.down_seqs: set[int] = set()
        self.desired: DesiredState | None = None
        self.assignment: Assignment | None = None
        self.client = TestClient(broker, client_id=f"device-{device_id}")

    @property
    def public_hex(self) -> str:
        return keys.public_hex(self.key.public_key())

    def __enter__(self) -> Self:
        self.client.connect()
        self.client.subscribe(self.topics.device_down(self.device_id))
        self.client.subscribe(self.topics.all_fleet())
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.client.close()

    # ---------------------------------------------------------------- uplink

    def send(self, message: Message) -> None:
        """Sign ``message`` with the device key and publish it on its ``up`` topic."""
        self.seq += 1
        data = frame.encode(
            message,
            device_id=self.device_id,
            seq=self.seq,
            sent_at=self.now(),
            nonce=os.urandom(16),
            key=self.key,
        )
        self.client.publish(self.topics.up(self.device_id, message.KIND), data)

    def hello(self, enrollment_token: str | None = None) -> None:
        """Introduce the device: its public key (the frame is signed with it) and a token."""
        self.send(
            Hello(
                public_key=self.public_hex,
                agent_version="device-double",
                enrollment_token=enrollment_token,
            )
        )

    def report(self, active: ModelRef | None) -> None:
        """Tell the hub what runs now (the twin's reported half)."""
        self.send(StateReport(active=active, trust=self.state.versions()))

    # ---------------------------------------------------------------- downlink

    def sync(self, timeout_s: float = DEFAULT_TIMEOUT_S) -> Assignment:
        """Read fleet documents and desired states until an assignment verifies.

        Raises:
            AssertionError: none verified within the timeout (the message lists what the
                trust core refused, last first).
        """
        refusals: list[str] = []

        def accepted(message: Received) -> bool:
            try:
                self.handle(message)
            except ProtocolError as e:
                refusals.append(f"{message.topic.rsplit('/', 1)[-1]}: {type(e).__name__}: {e}")
                return False
            return self._try_assignment(refusals)

        try:
            self.client.wait_for(accepted, timeout_s)
        except AssertionError as e:
            raise AssertionError(f"{e}; refused: {list(reversed(refusals))[:5]}") from None
        assert self.assignment is not None
        return self.assignment

    def handle(self, message: Received) -> DesiredState | Chunk | None:
        """Apply one message to the trusted state; return a verified downlink message.

        Raises:
            ProtocolError: the message is refused (a TrustError from the trust core).
        """
        route = self.topics.parse(message.topic)
        if not message.payload:
            return None
        now = trust.effective_now(self.state, self.now())
        if route.direction == "fleet":
            if route.kind == "root":
                self.state = trust.update_root(
                    self.state, metadata.decode_root_chain(message.payload)
                )
            elif route.kind == "heartbeat":
                doc = SignedDocument.from_bytes(message.payload)
                self.state = trust.update_heartbeat(self.state, doc, now)
            else:
                doc = SignedDocument.from_bytes(message.payload)
                self.state = trust.update_release_list(self.state, doc, now)
            return None
        envelope = frame.decode(
            message.payload,
            self.state.root.role_keys("rollout").values(),
            expect_kind=route.qualified_kind,
            expect_device=self.device_id,
        )
        if envelope.header.seq in self.down_seqs:
            return None
        self.down_seqs.add(envelope.header.seq)
        if isinstance(envelope.message, DesiredState):
            self.desired = envelope.message
            carried = envelope.message.release_list
            trusted = self.state.release
            if carried is not None and (
                trusted is None or metadata.parse(ReleaseList, carried).version > trusted.version
            ):
                self.state = trust.update_release_list(self.state, carried, now)
            return envelope.message
        if isinstance(envelope.message, Chunk):
            return envelope.message
        return None

    def _try_assignment(self, refusals: list[str]) -> bool:
        desired = self.desired
        if desired is None or desired.assignment is None:
            return False
        try:
            verdict = trust.verify_assignment(
                self.state, desired.assignment, self.now(), device_id=self.device_id
            )
        except ProtocolError as e:
            refusals.append(f"assignment: {type(e).__name__}: {e}")
            return False
        self.state = verdict.state
        self.assignment = verdict.assignment
        return True

    def download(
        self, entry: ReleaseEntry, *, chunk: int = 64 * 1024, timeout_s: float = DEFAULT_TIMEOUT_S
    ) -> bytes:
        """Fetch ``entry``'s artifact one chunk at a time; check it as an agent does.

        Raises:
            AssertionError: a chunk that does not fit, or none within the timeout.
            ContentMismatch: the reassembled bytes differ from the signed entry.
        """
        data = bytearray()
        deadline = time.monotonic() + timeout_s
        while len(data) < entry.length:
            self.send(FetchRequest(entry.sha256, len(data), chunk))
            got = self._next_chunk(max(deadline - time.monotonic(), 0.1))
            assert got.sha256 == entry.sha256, "chunk of another artifact"
            assert got.offset == len(data), f"chunk at {got.offset}, expected {len(data)}"
            assert got.total_length == entry.length, "total length differs from the release"
            data.extend(got.data)
        trust.check_artifact(entry, bytes(data))
        return bytes(data)

    def _next_chunk(self, timeout_s: float) -> Chunk:
        found: list[Chunk] = []

        def is_chunk(message: Received) -> bool:
            handled = self.handle(message)
            if isinstance(handled, Chunk):
                assert handled.chunk_sha256 == sha256(handled.data).hexdigest(), "bad chunk hash"
                found.append(handled)
            return bool(found)

        self.client.wait_for(is_chunk, timeout_s)
        return found[0]
