"""The simulated clock: a time and a heap of callbacks, as SimPy's ``Environment`` without processes.

Time moves only in :meth:`Environment.run`, which takes the earliest
``(time, seq, callback, argument)`` and calls ``callback(argument)``. Ties go
to the order of scheduling (``seq``), so a run is deterministic. Callbacks
rather than generator processes: the core objects are plain calls taking
``now``, so a request's life is a few scheduled calls, and a callback costs
less than resuming a generator (docs/simulator.md has the measurement).

Events scheduled a fixed delay ahead (:meth:`Environment.hop`: a network
trip, the same few delays for every request) wait in one first-in first-out
lane per delay instead of the heap: since ``now`` never goes back, a lane is
already in ``(time, seq)`` order, so it costs O(1) a push and a pop, and the
run takes events in exactly the order one heap would give.
"""

from __future__ import annotations

import heapq
import itertools
from collections import deque
from collections.abc import Callable
from typing import Any

_push = heapq.heappush


class Environment:
    """Simulated seconds and the events due at them."""

    __slots__ = ("now", "_heap", "_seq", "events", "_lanes", "_lane_list")

    def __init__(self, start: float = 0.0):
        self.now = float(start)
        self._heap: list[tuple[float, int, Callable[[Any], None], Any]] = []
        self._seq = itertools.count()
        self.events = 0
        self._lanes: dict[float, deque] = {}
        self._lane_list: list[deque] = []

    def at(self, when: float, callback: Callable[[Any], None], argument: Any = None) -> None:
        """Call ``callback(argument)`` at simulated time ``when`` (never before ``now``)."""
        now = self.now
        _push(self._heap, (when if when > now else now, next(self._seq), callback, argument))

    def after(self, delay: float, callback: Callable[[Any], None], argument: Any = None) -> None:
        """Call ``callback(argument)`` ``delay`` simulated seconds from now (``delay`` >= 0)."""
        _push(self._heap, (self.now + delay if delay > 0 else self.now, next(self._seq), callback, argument))

    def hop(self, delay: float, callback: Callable[[Any], None], argument: Any = None) -> None:
        """:meth:`after` for a delay used over and over (a network trip): O(1), in its delay's lane.

        The event runs at ``now + delay``, in the same order among all events
        as :meth:`after` would run it. ``delay`` must be positive; use few
        distinct delays (one lane each, every lane's head is compared per event).
        """
        lane = self._lanes.get(delay)
        if lane is None:
            if not delay > 0:
                raise ValueError(f"a hop takes a positive delay, got {delay!r}")
            lane = self._lanes[delay] = deque()
            self._lane_list.append(lane)
        lane.append((self.now + delay, next(self._seq), callback, argument))

    def peek(self) -> float | None:
        """When the next event is due, or None when none is scheduled."""
        first = self._heap[0] if self._heap else None
        for lane in self._lane_list:
            if lane and (first is None or lane[0] < first):
                first = lane[0]
        return None if first is None else first[0]

    def run(self, until: float | None = None, stop: Callable[[], bool] | None = None) -> None:
        """Run events in time order up to and including ``until`` (None: until none is left).

        ``stop`` is asked after each event; True ends the run there. ``now``
        ends at ``until`` when events remain after it, else at the last event.
        """
        heap = self._heap
        lanes = self._lane_list
        pop = heapq.heappop
        limit = float("inf") if until is None else until
        count = 0
        try:
            if not lanes:
                while heap and heap[0][0] <= limit:
                    when, _, callback, argument = pop(heap)
                    self.now = when
                    callback(argument)
                    count += 1
                    if stop is not None and stop():
                        return
                    if lanes:
                        break  # the first hop was scheduled: go on below
            while True:
                first = heap[0] if heap else None
                source = None
                for lane in lanes:
                    if lane:
                        head = lane[0]
                        if first is None or head < first:
                            first = head
                            source = lane
                if first is None or first[0] > limit:
                    break
                if source is None:
                    pop(heap)
                else:
                    source.popleft()
                when, _, callback, argument = first
                self.now = when
                callback(argument)
                count += 1
                if stop is not None and stop():
                    return
            if until is not None and self.now < until and self.peek() is not None:
                self.now = until
        finally:
            self.events += count
