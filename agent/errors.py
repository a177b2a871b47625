"""The agent's branch of the edgefleet exception tree.

Split by who is at fault, each with the HTTP status the local API answers when the error
reaches it (``status_hint``) and a short ``reason`` for logs and counters::

    EdgefleetError                      (protocol.errors)
    └─ AgentError                       the agent cannot do what was asked (500)
       ├─ ConfigError                   a bad agent.toml key or EDGEFLEET_AGENT_* variable (400)
       ├─ IdentityError                 the device key file is unreadable or not a key (500)
       ├─ StateDirInUse                 another agent runs on the same state_dir (500)
       ├─ OutboxError                   a message the outbox refuses to hold (500)
       └─ RequestError                  a local API caller sent something we refuse (400)
          ├─ BadRequest                 not JSON, or not the documented body (400)
          ├─ InvalidInput               well-formed, but wrong shape, dtype or label (422)
          ├─ PayloadTooLarge            body over the API's cap (413)
          └─ NotReady                   nothing to serve yet, e.g. no active model (503)

Errors from the wire (a bad downlink frame) stay ``protocol.errors.ProtocolError``; the
agent counts and logs those, it never raises them to its callers.
"""

from __future__ import annotations

from typing import ClassVar

from protocol.errors import EdgefleetError


class AgentError(EdgefleetError):
    """Root of the errors the agent raises on purpose."""

    reason: ClassVar[str] = "agent"
    status_hint: ClassVar[int] = 500


class ConfigError(AgentError):
    """A configuration value is missing or wrong; the message names the key."""

    reason = "config"
    status_hint = 400


class IdentityError(AgentError):
    """The device key file exists but cannot be read as an Ed25519 private key."""

    reason = "identity"


class StateDirInUse(AgentError):
    """Another agent process holds the state directory's lock (edgefleet/lock.py): this
    one must not read or repair anything there, and exits."""

    reason = "state_dir_in_use"


class OutboxError(AgentError):
    """The outbox refuses a message (a transient kind, or one that can never fit)."""

    reason = "outbox"


class RequestError(AgentError):
    """A local API request the agent refuses; never the agent's own fault."""

    reason = "bad_request"
    status_hint = 400


class BadRequest(RequestError):
    """The body is not JSON or not shaped as the route documents."""

    reason = "bad_request"


class InvalidInput(RequestError):
    """Well-formed JSON whose values the model cannot take (shape, dtype, unknown id)."""

    reason = "invalid_input"
    status_hint = 422


class PayloadTooLarge(RequestError):
    """The request body is larger than the API accepts."""

    reason = "too_large"
    status_hint = 413


class NotReady(RequestError):
    """The agent cannot serve this yet (no active model, still starting)."""

    reason = "not_ready"
    status_hint = 503


__all__ = [
    "AgentError",
    "BadRequest",
    "ConfigError",
    "IdentityError",
    "InvalidInput",
    "NotReady",
    "OutboxError",
    "PayloadTooLarge",
    "RequestError",
    "StateDirInUse",
]


# Local learning (agent/feedback.py, agent/trainer.py, agent/learner.py):
#
#    AgentError
#    ├─ TrainingError                 local retraining failed or diverged; nothing is sent (500)
#    └─ RequestError
#       ├─ InvalidInput
#       │  └─ InvalidLabel            a label outside the model's classes, or not finite (422)
#       └─ RetrainingOff              feedback for a model with no trainable head (409)


class TrainingError(AgentError):
    """Local retraining could not produce a usable head (too few rows, a non-finite result).

    The learner reports it in its status and never sends the delta (threat-model B27).
    """

    reason = "training_failed"


class InvalidLabel(InvalidInput):
    """A feedback label the model cannot learn from: not one of its classes, or not finite."""

    reason = "invalid_label"
    status_hint = 422


class RetrainingOff(RequestError):
    """Feedback for a model that cannot be retrained here; the message says why."""

    reason = "retraining_off"
    status_hint = 409


__all__ += ["InvalidLabel", "RetrainingOff", "TrainingError"]


# Model lifecycle (agent/trust_store.py, agent/runtime.py, agent/slots.py,
# agent/download.py, agent/updater.py):
#
#    AgentError
#    ├─ StateCorrupt                  a persisted trust or slot file cannot be read (500)
#    ├─ IllegalTransition             an install step the slot state machine forbids (500)
#    ├─ ModelUnhealthy                a model failed its health check or cannot load (500)
#    ├─ SlowRetrieval                 a download below the minimum throughput or past its
#    │                                deadline (threat-model T12) (500)
#    ├─ InferenceFailed               the runtime failed, or produced NaN/Inf, on valid input (500)
#    └─ RequestError
#       └─ InvalidInput               (already above) wrong shape or dtype for the model (422)


class StateCorrupt(AgentError):
    """A persisted trust or slot file exists but cannot be read: refuse to guess.

    Atomic writes (temp, fsync, rename) make this a disk fault, not a crash artefact;
    starting over from the pinned root would forget every high-water mark (T2).
    """

    reason = "state_corrupt"


class IllegalTransition(AgentError):
    """An install event the slot state machine does not allow in its current state."""

    reason = "illegal_transition"

    def __init__(self, state: str, event: str) -> None:
        super().__init__(f"cannot handle {event} while {state}")
        self.state = state
        self.event = event


class ModelUnhealthy(AgentError):
    """A model failed its health check (threat-model B23) or onnxruntime cannot load it."""

    reason = "model_unhealthy"


class SlowRetrieval(AgentError):
    """A download fell below the minimum throughput or ran past its deadline (T12)."""

    reason = "slow_retrieval"


class InferenceFailed(AgentError):
    """The runtime raised, or returned NaN/Inf, for input that passed validation."""

    reason = "inference_failed"


__all__ += [
    "IllegalTransition",
    "InferenceFailed",
    "ModelUnhealthy",
    "SlowRetrieval",
    "StateCorrupt",
]
