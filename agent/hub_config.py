"""The hub's device config and the job intervals it set, kept across restarts.

The hub's :class:`~protocol.messages.DeviceConfig` comes with every ``desired`` frame and
is kept in ``<learning dir>/device-config.json``: the downlink guard does not hand the
retained desired state over again after a restart, and a hub that switched retraining
off must stay obeyed. Its ``window_s`` and ``telemetry_interval_s`` set the
``sketch-window`` and ``telemetry`` jobs' intervals once the hub sends a value other than
the one it sent before (at first, the protocol's default): until then the local config's
intervals apply. The intervals applied are kept in ``<learning dir>/intervals.json`` and
applied again on attach after a restart. An unreadable file is logged and ignored (the
hub's defaults, the local intervals): both are resent with the next desired state.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from edgefleet.files import write_atomic
from protocol import canonical, schema
from protocol.errors import ProtocolError
from protocol.messages import DeviceConfig

logger = logging.getLogger(__name__)

CONFIG_FILE = "device-config.json"
INTERVALS_FILE = "intervals.json"
HUB_INTERVALS = {"telemetry": "telemetry_interval_s", "sketch-window": "window_s"}
"""The daemon's jobs the hub's :class:`DeviceConfig` sets the interval of, by field."""


class HubConfig:
    """The config and intervals in ``directory`` (created if missing); see the module
    docstring. Not thread-safe: the downlink job is its only writer."""

    def __init__(self, directory: Path) -> None:
        self._dir = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.config = self._load_config()
        self.intervals = self._load_intervals()
        """Job name -> seconds, for the jobs whose interval the hub set."""

    def changed_intervals(self, config: DeviceConfig) -> dict[str, float]:
        """The job intervals ``config`` sets to other values than the kept config did."""
        return {
            name: float(getattr(config, field))
            for name, field in HUB_INTERVALS.items()
            if getattr(config, field) != getattr(self.config, field)
        }

    def keep(self, config: DeviceConfig, changed: dict[str, float]) -> None:
        """Persist ``config`` and the ``changed`` intervals (applied already by the caller:
        a failure here is retried on the next delivery)."""
        if changed:
            intervals = {**self.intervals, **changed}
            write_atomic(self._dir / INTERVALS_FILE, json.dumps(intervals).encode())
            self.intervals = intervals
        write_atomic(self._dir / CONFIG_FILE, canonical.dumps(schema.to_json(config)))
        self.config = config

    def _load_intervals(self) -> dict[str, float]:
        try:
            raw = json.loads((self._dir / INTERVALS_FILE).read_bytes())
        except FileNotFoundError:
            return {}
        except ValueError as e:
            logger.warning("%s unreadable, the local intervals apply: %s", INTERVALS_FILE, e)
            return {}
        if not isinstance(raw, dict):
            return {}
        return {
            name: float(value)
            for name, value in raw.items()
            if name in HUB_INTERVALS
            and isinstance(value, int | float)
            and not isinstance(value, bool)
            and 0.1 <= value <= 86_400
        }

    def _load_config(self) -> DeviceConfig:
        try:
            raw = (self._dir / CONFIG_FILE).read_bytes()
        except FileNotFoundError:
            return DeviceConfig()
        try:
            return schema.from_json(DeviceConfig, canonical.loads(raw))
        except ProtocolError as e:
            logger.warning("%s unreadable, the hub's defaults apply: %s", CONFIG_FILE, e)
            return DeviceConfig()


__all__ = ["CONFIG_FILE", "HUB_INTERVALS", "INTERVALS_FILE", "HubConfig"]
