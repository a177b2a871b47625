"""The device's broker login: its user name (the device id) and a password it made itself.

On first start :func:`load_or_create` makes a random password and its verifier
(:mod:`protocol.broker_auth`, Mosquitto's ``$7$`` form) and keeps both in
``<state_dir>/broker.json`` (0600, written atomically like the device key). The hello
carries the verifier, never the password; once the hub trusts the device's key it
provisions that verifier on the broker, and the device logs in with user name = client
id = its device id (docs/broker-security.md). Until then the broker refuses the login and
the link falls back to an anonymous session that may only say hello (:mod:`agent.link`).

**Rotation:** delete ``broker.json`` and restart the agent. It makes a new password, the
broker refuses the old account's login with it, the agent says hello anonymously with the
new verifier (signed with its pinned key, so only this device can rotate its password), the
hub provisions it, and the next login succeeds. The verifier is kept with the password
(same salt every start), so a restart alone changes nothing on the broker.
"""

from __future__ import annotations

import json
import logging
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from agent.errors import IdentityError
from edgefleet.files import write_atomic
from protocol import broker_auth
from protocol.errors import Malformed

logger = logging.getLogger(__name__)

LOGIN_FILE = "broker.json"


@dataclass(frozen=True)
class BrokerLogin:
    """User name, password (never in ``repr``) and the verifier the hello carries."""

    username: str
    password: str = field(repr=False)
    verifier: str


def load_or_create(state_dir: Path, device_id: str) -> BrokerLogin:
    """The device's broker login, made on first start.

    Raises:
        IdentityError: the file exists but is unreadable or damaged, or cannot be written.
    """
    path = state_dir / LOGIN_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return _create(path, device_id)
    except (OSError, ValueError) as e:
        raise IdentityError(f"broker login {path} is unreadable: {e}") from e
    try:
        password, verifier = str(data["password"]), str(data["verifier"])
        broker_auth.check_verifier(verifier)
    except (KeyError, TypeError, Malformed) as e:
        raise IdentityError(f"broker login {path} is damaged: delete it to make a new one") from e
    if not broker_auth.check_password(verifier, password):
        raise IdentityError(f"broker login {path} does not match its verifier: delete it")
    return BrokerLogin(device_id, password, verifier)


def _create(path: Path, device_id: str) -> BrokerLogin:
    password = secrets.token_urlsafe(32)
    verifier = broker_auth.make_verifier(password, secrets.token_bytes(broker_auth.SALT_BYTES))
    text = json.dumps({"password": password, "verifier": verifier}).encode("utf-8")
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_atomic(path, text, mode=0o600)
    except OSError as e:
        raise IdentityError(f"cannot write broker login {path}: {e.strerror}") from e
    logger.info("made a broker password for %s (%s)", device_id, path)
    return BrokerLogin(device_id, password, verifier)
