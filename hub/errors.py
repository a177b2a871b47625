"""The hub's branch of the edgefleet exception tree.

Who is at fault decides the branch, and ``status_hint`` is what the REST layer answers
(one FastAPI exception handler maps every ``EdgefleetError`` to problem+json)::

    EdgefleetError (protocol.errors)
    ├─ ProtocolError ...            a device or an upload sent something we refuse (4xx)
    └─ HubError
       ├─ StoreError (hub.store.database)    a write the store's constraints refuse (409)
       │  └─ NotFound               no such row (404)
       ├─ InvalidRequest            the operator's input is wrong: names the field (422)
       ├─ Conflict                  valid, but not in the current state (409)
       ├─ PermissionDenied          the token's role may not do this (403)
       ├─ Unauthenticated           no or unknown token (401)
       ├─ KeyUnavailable            the key this needs is not on the hub (offline) (409)
       ├─ BrokerError (hub.transport.broker)  the embedded broker could not start or stop (500)
       ├─ BrokerUnreachable (hub.service)   no broker connection at start-up
       ├─ HttpUnavailable (hub.transport.http_server) the REST address cannot be bound
       ├─ ArtifactCorrupt (hub.registry.artifacts)   a stored artifact no longer matches its hash
       └─ StoreUnavailable (hub.api.system) /healthz cannot read the store (503)
    KeyringError (hub.keyring)      keys missing or unreadable; a set-up problem, not a request
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


class KeyUnavailable(HubError):
    """The signing key this needs is kept offline (e.g. the release key)."""

    reason = "key_unavailable"
    status_hint = 409
