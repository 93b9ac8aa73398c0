"""One asyncio timer at a sans-IO object's next deadline: how a driver turns deadlines-as-data into time.

The core keeps no timers; it answers ``next_deadline()`` and acts when told
the time. A driver makes one :class:`DeadlineTimer` per core object, calls
:meth:`DeadlineTimer.follow` after anything that may bring the next deadline
closer, and the timer calls ``on_due(now)`` once it has passed, then follows
the next one.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

# Seconds past a deadline the timer fires, so that a millisecond-resolution
# loop never fires just before it (the core would find nothing due yet).
SLACK_S = 0.001


class DeadlineTimer:
    """Calls ``on_due(now)`` when ``next_deadline()`` has passed; ``clock`` is the core's time."""

    __slots__ = ("_next_deadline", "_on_due", "_clock", "_handle", "_at")

    def __init__(self, next_deadline: Callable[[], float | None], on_due: Callable[[float], object],
                 clock: Callable[[], float] = time.monotonic):
        self._next_deadline = next_deadline
        self._on_due = on_due
        self._clock = clock
        self._handle: asyncio.TimerHandle | None = None
        self._at = 0.0

    def follow(self) -> None:
        """Be armed at the next deadline (none when there is none); call from the event loop."""
        deadline = self._next_deadline()
        if deadline is None:
            self.cancel()
            return
        if self._handle is not None and self._at <= deadline:
            return  # fires first and follows on from there
        self.cancel()
        self._at = deadline
        delay = max(deadline - self._clock(), 0.0) + SLACK_S
        self._handle = asyncio.get_running_loop().call_later(delay, self._fire)

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _fire(self) -> None:
        self._handle = None
        self._on_due(self._clock())
        self.follow()
