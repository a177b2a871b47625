"""The hub's part of the edgefleet exception tree, drawn once, complete.

Who is at fault decides the branch; ``status_hint`` is what the REST layer answers (one
FastAPI exception handler maps every ``EdgefleetError`` to problem+json), and ``reason``
is the short code audit rows, counters and problem bodies carry. The classes live beside
the code that raises them (the module column); this drawing is the one place they are
all seen together, and ``tests/hub/test_errors.py`` keeps it complete and accurate::

    EdgefleetError              protocol.errors
    ├─ ProtocolError            protocol.errors           400  a peer sent what we refuse
    │  ├─ UnknownDevice         hub.fleet.identity        403  a device id never enrolled
    │  ├─ DevicePending         hub.fleet.identity        403  a device awaiting approval
    │  ├─ DeviceRevoked         hub.fleet.identity        403  a revoked device
    │  │  └─ RevokedKeyInUse    hub.ingest.rules          403  ... signing with its key (alert)
    │  ├─ IdentityMismatch      protocol.errors           403  a frame not its sender's
    │  │  ├─ KeyChangeRefused   hub.ingest.rules          403  an active device, another key (alert)
    │  │  └─ CrossDeviceFrame   hub.ingest.rules          403  signed by the named device (alert)
    │  ├─ WrongKind             protocol.errors           400  a message of one kind as another
    │  │  └─ WrongRole          hub.ingest.rules          400  the hub's frame sent up (alert)
    │  ├─ Replayed              protocol.errors           409  a seq already seen
    │  │  └─ SeqReused          hub.ingest.rules          409  ... with other content (alert)
    │  └─ Invalid               hub.ingest.rules          400  authentic, well-formed, nonsense
    ├─ HubError                 hub.errors                500  what the hub raises on purpose
    │  ├─ InvalidRequest        hub.errors                422  bad operator input; names the field
    │  │  ├─ IncompatibleWindow hub.drift.errors          422  a window that misfits its reference
    │  │  ├─ UnusableReference  hub.drift.errors          422  a profile drift tests cannot use
    │  │  └─ InvalidPolicy      hub.rounds.errors         422  a round policy that cannot work
    │  ├─ Conflict              hub.errors                409  valid, not in the current state
    │  │  ├─ IllegalTransition  hub.errors                409  no such move in a state table
    │  │  ├─ OverlappingParts   hub.drift.errors          409  aggregates sharing some windows
    │  │  └─ NothingToAggregate hub.rounds.errors         409  a round closed with no usable delta
    │  ├─ PermissionDenied      hub.errors                403  the token's role may not do this
    │  ├─ Unauthenticated       hub.errors                401  no token, or an unknown one
    │  ├─ KeyUnavailable        hub.errors                409  the signing key is kept offline
    │  ├─ StoreError            hub.store.interface       409  the store's constraints refuse it
    │  │  ├─ StoreUnreachable   hub.store.interface       503  the store's database is out of reach
    │  │  └─ NotFound           hub.store.interface       404  no such row
    │  ├─ ArtifactCorrupt       hub.registry.artifacts    500  a stored artifact's hash changed
    │  ├─ StoreUnavailable      hub.api.system            503  /healthz: the store does not answer
    │  ├─ BrokerError           hub.transport.broker      500  the embedded broker will not run
    │  ├─ ProvisioningError     hub.transport.broker_accounts 503  broker accounts cannot be written
    │  ├─ HttpUnavailable       hub.transport.http_server 500  the REST address cannot be bound
    │  ├─ BrokerUnreachable     hub.service               503  no broker at start-up
    │  ├─ DataDirInUse          hub.service               409  another hub runs on the data dir
    │  └─ RolloutError          hub.rollouts.errors       409  the rollout rules refuse it
    │     ├─ InvalidRolloutSpec hub.rollouts.errors       422  the spec is wrong; names the field
    │     ├─ RolloutConflict    hub.rollouts.errors       409  another rollout has these devices
    │     └─ InvalidGateInput   hub.rollouts.errors       422  metrics no device can report
    └─ KeyringError             hub.keyring               500  keys missing or unreadable (set-up)

Only the hub's own classes and the protocol classes they extend are drawn; the rest of
``ProtocolError`` (bad signatures, oversize frames, stale times...) is drawn in
:mod:`protocol.errors`.
"""

from __future__ import annotations

from protocol.errors import EdgefleetError


class HubError(EdgefleetError):
    """Root of the errors the hub raises on purpose."""

    reason = "hub"
    status_hint = 500


class InvalidRequest(HubError):
    """The operator's input is wrong; the message names the field and what was expected."""

    reason = "invalid_request"
    status_hint = 422


class Conflict(HubError):
    """Valid input, but not allowed in the current state (e.g. an unreleased version)."""

    reason = "conflict"
    status_hint = 409


class PermissionDenied(HubError):
    """The caller's role may not do this."""

    reason = "forbidden"
    status_hint = 403


class Unauthenticated(HubError):
    """No token, or one the hub does not know."""

    reason = "unauthenticated"
    status_hint = 401


class IllegalTransition(Conflict):
    """A state table (a rollout, a round, a drift alert) holds no move for this event in
    this state, e.g. approving a rollout that is not awaiting approval. Nothing changed."""

    reason = "illegal_transition"

    def __init__(self, state: str, event: str, *, what: str) -> None:
        super().__init__(f"{event} is not allowed while the {what} is {state}")
        self.state = state
        self.event = event


class KeyUnavailable(HubError):
    """The signing key this needs is kept offline (e.g. the release key)."""

    reason = "key_unavailable"
    status_hint = 409
