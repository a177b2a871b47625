"""Time for the agent: a ``Clock`` is passed in, never read from a global.

Everything that stamps or schedules (the outbox's ``sent_at`` and resend deadlines,
telemetry, scheduler jobs) asks the clock it was given, so tests pass a fake clock and
advance it. Waiting (``Event.wait``) still uses real time; only "what time is it" is
injected.
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
