"""The simulated clock: a time and a heap of callbacks, as SimPy's ``Environment`` without processes.

Time moves only in :meth:`Environment.run`, which pops the earliest
``(time, seq, callback, argument)`` and calls ``callback(argument)``. Ties go
to the order of scheduling (``seq``), so a run is deterministic. Callbacks
rather than generator processes: the core objects are plain calls taking
``now``, so a request's life is a few scheduled calls, and a callback costs
less than resuming a generator (docs/simulator.md has the measurement).
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable
from typing import Any

_push = heapq.heappush


class Environment:
    """Simulated seconds and the events due at them."""

    __slots__ = ("now", "_heap", "_seq", "events")

    def __init__(self, start: float = 0.0):
        self.now = float(start)
        self._heap: list[tuple[float, int, Callable[[Any], None], Any]] = []
        self._seq = itertools.count()
        self.events = 0

    def at(self, when: float, callback: Callable[[Any], None], argument: Any = None) -> None:
        """Call ``callback(argument)`` at simulated time ``when`` (never before ``now``)."""
        now = self.now
        _push(self._heap, (when if when > now else now, next(self._seq), callback, argument))

    def after(self, delay: float, callback: Callable[[Any], None], argument: Any = None) -> None:
        """Call ``callback(argument)`` ``delay`` simulated seconds from now (``delay`` >= 0)."""
        _push(self._heap, (self.now + delay if delay > 0 else self.now, next(self._seq), callback, argument))

    def peek(self) -> float | None:
        """When the next event is due, or None when none is scheduled."""
        return self._heap[0][0] if self._heap else None

    def run(self, until: float | None = None, stop: Callable[[], bool] | None = None) -> None:
        """Run events in time order up to and including ``until`` (None: until none is left).

        ``stop`` is asked after each event; True ends the run there. ``now``
        ends at ``until`` when events remain after it, else at the last event.
        """
        heap = self._heap
        pop = heapq.heappop
        limit = float("inf") if until is None else until
        count = 0
        try:
            while heap and heap[0][0] <= limit:
                when, _, callback, argument = pop(heap)
                self.now = when
                callback(argument)
                count += 1
                if stop is not None and stop():
                    return
            if heap and until is not None and self.now < until:
                self.now = until
        finally:
            self.events += count
