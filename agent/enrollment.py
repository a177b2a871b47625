"""What the agent says while the hub has not pinned its key: waiting for approval, and why.

A device's first ``hello`` carries its public key and, if configured, an enrollment
token. The hub pins the key when the token is valid; otherwise the device is *pending*
until an operator approves it (``edgefleet hub device approve``). The agent cannot see
the hub's device list, so it says what it can know, once per change, at WARNING:

- the hello went out and no acknowledgement came back within ``ack_timeout_s``: the hub
  has not pinned the key (it does not acknowledge a pending device's frames), and
  whether a token was configured at all;
- the hub refused the hello with a reason (``HubAck.refused``): the reason, explained.
  The hub's enrollment reasons are ``no_token``, ``token_unknown``, ``token_expired``,
  ``token_revoked``, ``token_used``, ``pending`` (optionally ``pending: <why>``),
  ``pending_full`` and ``identity_mismatch``; an unknown one is shown as it came.

Pure: the uplink (agent/uplink.py) decides when to log, this module what to say.
"""

from __future__ import annotations

APPROVE = "an operator approves it (edgefleet hub device approve {device_id})"

REASONS = {
    "no_token": "the hello carried no enrollment token",
    "token_unknown": "the enrollment token is not one this hub issued (a typo, or another hub's)",
    "token_expired": "the enrollment token has expired",
    "token_revoked": "the enrollment token was revoked",
    "token_used": "the single-use enrollment token was used by another device already",
    "pending": "the hub knows this device and waits for an operator to approve it",
    "pending_full": "the hub holds too many pending devices and refuses more",
    "identity_mismatch": (
        "the hub has another key on record for this device id (a clone, or a reinstalled "
        "device whose old key must be revoked first)"
    ),
}


def explain(reason: str) -> str:
    """A refusal reason from the hub, in words (``pending: token_expired`` explains both)."""
    code, _, detail = reason.partition(":")
    words = REASONS.get(code.strip(), reason.strip() or "no reason given")
    if detail.strip():
        words = f"{words}: {explain(detail)}"
    return words


def waiting(device_id: str, *, token_configured: bool) -> str:
    """The line logged when the hello stays unacknowledged past the ack timeout."""
    cure = (
        "the enrollment token may be wrong or expired; "
        if token_configured
        else "no enrollment_token is configured; "
    )
    approve = APPROVE.format(device_id=device_id)
    return (
        f"waiting for approval: the hub has not pinned this device's key yet ({cure}"
        f"the key is pinned once a valid token is configured or {approve})"
    )


def refused(device_id: str, reason: str) -> str:
    """The line logged when the hub refuses the hello with ``reason``."""
    approve = APPROVE.format(device_id=device_id)
    return (
        f"waiting for approval: the hub refused this device's hello: {explain(reason)} "
        f"[{reason}]; it says hello again until {approve} or a valid token is configured"
    )


__all__ = ["REASONS", "explain", "refused", "waiting"]
