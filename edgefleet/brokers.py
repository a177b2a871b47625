"""Broker URLs, as the agent's config and the hub's settings both spell them.

``mqtt://host[:port]`` (1883) or ``mqtts://host[:port]`` (8883), nothing more:
credentials belong in files, never in URLs, where logs and process lists show them.
"""

from __future__ import annotations

import ipaddress
import logging
from dataclasses import dataclass
from functools import cache
from urllib.parse import urlsplit

logger = logging.getLogger(__name__)

DEFAULT_PORTS = {"mqtt": 1883, "mqtts": 8883}


class BadBrokerUrl(ValueError):
    """Not an ``mqtt://`` or ``mqtts://`` URL with only a host and a port; the message says
    what is wrong. Callers wrap it in their own configuration error."""


@dataclass(frozen=True)
class BrokerUrl:
    """Where the broker listens: ``BrokerUrl.parse("mqtts://broker.local")``.

    ``str(BrokerUrl.parse(s))`` is ``s`` with its port spelled out.
    """

    host: str
    port: int
    tls: bool = False

    @classmethod
    def parse(cls, url: str) -> BrokerUrl:
        """Parse a broker URL.

        Raises:
            BadBrokerUrl: another scheme, no host, a bad port, or a path, query or
                credentials in the URL.
        """
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError as e:
            raise BadBrokerUrl(f"broker URL {url!r}: {e}") from e
        if parts.scheme not in DEFAULT_PORTS:
            raise BadBrokerUrl(f"broker URL {url!r}: scheme must be mqtt:// or mqtts://")
        if not parts.hostname:
            raise BadBrokerUrl(f"broker URL {url!r} names no host")
        if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
            raise BadBrokerUrl(f"broker URL {url!r}: only scheme, host and port are allowed")
        return cls(parts.hostname, port or DEFAULT_PORTS[parts.scheme], parts.scheme == "mqtts")

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'mqtts' if self.tls else 'mqtt'}://{host}:{self.port}"

    @property
    def exposed(self) -> bool:
        """Plain MQTT to a host other than this machine: a password in CONNECT crosses
        the network in clear (threat-model M8)."""
        return not self.tls and not _loopback(self.host)


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@cache
def warn_if_exposed(url: BrokerUrl, who: str) -> None:
    """Log once per process and broker that ``who`` logs in over plain MQTT off this
    machine; frames stay signed, but the password is readable on the wire."""
    if url.exposed:
        logger.warning(
            "%s logs in to %s over plain mqtt://: its broker password crosses the network "
            "in clear; use mqtts:// where the network is not yours (docs/broker-security.md)",
            who,
            url,
        )


__all__ = ["BadBrokerUrl", "BrokerUrl", "warn_if_exposed"]
