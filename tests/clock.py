"""A clock that moves only when the test says so.

Services never read the wall clock themselves: they take a ``Clock``, a protocol with one
method, ``now_ms() -> int`` (milliseconds since the Unix epoch). The hub's
``edgefleet.clock.SystemClock`` and the agent's own ``SystemClock`` read the real time; tests
pass a :class:`FakeClock` and move it with :meth:`FakeClock.advance`::

    clock = FakeClock()
    service = make_service(..., clock=clock)    # any service that takes a Clock
    clock.advance(15 * 60)                      # a quarter of an hour later, instantly

Pure functions take ``now`` directly (``clock.now_ms()`` at the call site). The clock
starts at a fixed, realistic instant (``EPOCH_MS``, 2026-11-23T00:00:00Z) so expiry dates
and freshness windows in tests read like real ones and runs are reproducible.
"""

from __future__ import annotations

EPOCH_MS = 1_795_392_000_000  # 2026-11-23T00:00:00Z


class FakeClock:
    """Settable time in whole milliseconds; satisfies the ``Clock`` protocol.

    Not locked: advance it from the test's thread; services on other threads only read it.
    """

    def __init__(self, start_ms: int = EPOCH_MS) -> None:
        self._ms = start_ms

    def now_ms(self) -> int:
        """Milliseconds since the Unix epoch."""
        return self._ms

    def now(self) -> float:
        """Seconds since the Unix epoch (what APScheduler-style code and ``time.time`` use)."""
        return self._ms / 1000

    def advance(self, seconds: float) -> None:
        """Move forward by ``seconds`` (rounded to the millisecond).

        Raises:
            ValueError: ``seconds`` is negative; use :meth:`set` to model a clock stepping back.
        """
        if seconds < 0:
            raise ValueError(f"advance({seconds}) would move time backwards; use set()")
        self._ms += round(seconds * 1000)

    def set(self, ms: int) -> None:
        """Jump to ``ms`` milliseconds since the epoch, forwards or backwards (clock skew)."""
        self._ms = ms

    def __repr__(self) -> str:
        return f"FakeClock({self._ms})"
