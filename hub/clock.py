"""Time for the hub's services: a ``Clock`` is passed in, never read from a global.

Tests pass ``tests.clock.FakeClock`` (same ``now_ms``) and advance it; APScheduler jobs
are one-line shims that call the pure logic with ``clock.now_ms()``.
"""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    def now_ms(self) -> int:
        """Milliseconds since the Unix epoch."""
        ...


class SystemClock:
    """The real wall clock."""

    def now_ms(self) -> int:
        return time.time_ns() // 1_000_000
