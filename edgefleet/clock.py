"""Time, passed in: a ``Clock`` is given to whatever stamps or schedules, never read from a
global.

Every signature speaks of time the same way: ``now_ms`` is integer milliseconds since
the Unix epoch, and durations carry their unit in the name (``timeout_s``,
``interval_s``). Pure functions take ``now_ms``; services take a :class:`Clock`, so
tests pass ``tests.clock.FakeClock`` and advance it. Waiting (``Event.wait``) still uses
real time; only "what time is it" is injected.
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


__all__ = ["Clock", "SystemClock"]
