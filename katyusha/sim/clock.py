"""The simulated clock: a time and a calendar of callbacks, as SimPy's ``Environment`` without processes.

Time moves only in :meth:`Environment.run`, which takes the earliest
``(time, seq, callback, argument)`` and calls ``callback(argument)``. Ties go
to the order of scheduling (``seq``), so a run is deterministic. Callbacks
rather than generator processes: the core objects are plain calls taking
``now``, so a request's life is a few scheduled calls, and a callback costs
less than resuming a generator (docs/simulator.md has the measurement).

The events wait in a calendar rather than one heap: a bucket per
``resolution`` of simulated time (a list, appended to), and a small heap for
the bucket being run. A thousand nodes keep some 70,000 requests in flight,
and a heap of that size is walked from root to leaf on every pop, each step
a cache miss (docs/simulator.md, "Scale"); a bucket holds a few events. The
order is the heap's exactly: buckets are taken in time order, and within one
the events by ``(time, seq)``.
"""

from __future__ import annotations

import itertools
import sys
from collections.abc import Callable
from heapq import heapify, heappop, heappush
from typing import Any

RESOLUTION_S = 0.01
# Times from here on all go to the last bucket (int() of infinity would raise).
_FAR = 1e300


class Environment:
    """Simulated seconds and the events due at them."""

    __slots__ = ("now", "_seq", "events", "_per_s", "_buckets", "_order", "_current", "_current_id")

    def __init__(self, start: float = 0.0, resolution: float = RESOLUTION_S):
        """``resolution``: the simulated seconds one bucket spans (any positive value gives the same order)."""
        if not resolution > 0:
            raise ValueError(f"resolution must be positive, got {resolution!r}")
        self.now = float(start)
        self._seq = itertools.count()
        self.events = 0
        self._per_s = 1.0 / resolution
        self._buckets: dict[int, list] = {}  # bucket number -> its events, unordered
        self._order: list[int] = []  # heap of the numbers of _buckets
        self._current: list[tuple[float, int, Callable[[Any], None], Any]] = []  # a heap: the bucket being run
        self._current_id = int(self.now * self._per_s)

    def _put(self, item: tuple) -> None:
        try:
            number = int(item[0] * self._per_s)
        except OverflowError:  # at infinity: after every finite time
            number = sys.maxsize
        if number == self._current_id:
            heappush(self._current, item)
        elif number > self._current_id:
            bucket = self._buckets.get(number)
            if bucket is None:
                self._buckets[number] = [item]
                heappush(self._order, number)
            else:
                bucket.append(item)
        else:
            # Earlier than the bucket being run (scheduled from outside run(), after the
            # clock looked ahead): that bucket goes back to wait, and this one is run first.
            if self._current:
                self._buckets[self._current_id] = self._current
                heappush(self._order, self._current_id)
            self._current_id = number
            self._current = [item]

    def at(self, when: float, callback: Callable[[Any], None], argument: Any = None) -> None:
        """Call ``callback(argument)`` at simulated time ``when`` (never before ``now``)."""
        now = self.now
        if when > now and when < _FAR:
            # _put's common cases inline: the bucket being run (a hop of a millisecond or
            # less), or a later one that has events already (most of the others).
            number = int(when * self._per_s)
            if number == self._current_id:
                heappush(self._current, (when, next(self._seq), callback, argument))
                return
            bucket = self._buckets.get(number)
            if bucket is not None:
                bucket.append((when, next(self._seq), callback, argument))
                return
        self._put((when if when > now else now, next(self._seq), callback, argument))

    def after(self, delay: float, callback: Callable[[Any], None], argument: Any = None) -> None:
        """Call ``callback(argument)`` ``delay`` simulated seconds from now (``delay`` >= 0)."""
        self._put((self.now + delay if delay > 0 else self.now, next(self._seq), callback, argument))

    def _first(self) -> tuple | None:
        """The earliest event (left in place), or None when none is scheduled."""
        current = self._current
        if not current:
            order = self._order
            if not order:
                return None
            self._current_id = number = heappop(order)
            self._current = current = self._buckets.pop(number)
            heapify(current)
        return current[0]

    def peek(self) -> float | None:
        """When the next event is due, or None when none is scheduled."""
        first = self._first()
        return None if first is None else first[0]

    def run(self, until: float | None = None, stop: Callable[[], bool] | None = None) -> None:
        """Run events in time order up to and including ``until`` (None: until none is left).

        ``stop`` is asked after each event; True ends the run there. ``now``
        ends at ``until`` when events remain after it, else at the last event.
        """
        limit = float("inf") if until is None else until
        first_of = self._first
        count = 0
        try:
            while True:
                current = self._current
                if not current:
                    if first_of() is None:
                        break
                    current = self._current
                # The bucket's events while they are due. One scheduled meanwhile is never
                # earlier than now (at() and after() see to it), so it joins this heap or a
                # later bucket and this bucket stays the one being run.
                while current:
                    first = current[0]
                    when = first[0]
                    if when > limit:
                        if until is not None and self.now < until:
                            self.now = until
                        return
                    heappop(current)
                    self.now = when
                    first[2](first[3])
                    count += 1
                    if stop is not None and stop():
                        return
        finally:
            self.events += count
