"""The simulated clock: a time and a calendar of callbacks, as SimPy's ``Environment`` without processes.

Time moves only in :meth:`Environment.run`, which takes the earliest
``(time, callback, argument)`` and calls ``callback(argument)``. Ties go to
the order of scheduling, so a run is deterministic. Callbacks rather than
generator processes: the core objects are plain calls taking ``now``, so a
request's life is a few scheduled calls, and a callback costs less than
resuming a generator (docs/simulator.md has the measurement).

The events wait in a calendar rather than one heap: a bucket per
``resolution`` of simulated time (a list, appended to in scheduling order).
A thousand nodes keep some 70,000 requests in flight, and a heap of that
size is walked from root to leaf on every pop, each step a cache miss
(docs/simulator.md, "Scale"); a bucket holds a few hundred events. The
bucket to run is sorted by time once, stably (so ties stay in scheduling
order, with no sequence number kept), and run front to back; an event
scheduled into it meanwhile is inserted after every event of its time or
earlier. The order is one heap of ``(time, seq)``'s exactly: buckets are
taken in time order, and within one the events by time, then scheduling.
"""

from __future__ import annotations

import math
import sys
from bisect import insort_right
from collections.abc import Callable
from heapq import heappop, heappush
from operator import itemgetter
from typing import Any

RESOLUTION_S = 0.01
# Times from here on all go to the last bucket (int() of infinity would raise).
_FAR = 1e300
_WHEN = itemgetter(0)


class Environment:
    """Simulated seconds and the events due at them."""

    __slots__ = ("now", "events", "_per_s", "_buckets", "_order", "_current", "_next", "_current_id", "_running",
                 "_bound")

    def __init__(self, start: float = 0.0, resolution: float = RESOLUTION_S):
        """``resolution``: the simulated seconds one bucket spans (any positive value gives the same order)."""
        if not resolution > 0:
            raise ValueError(f"resolution must be positive, got {resolution!r}")
        self.now = float(start)
        self.events = 0
        self._per_s = 1.0 / resolution
        self._buckets: dict[int, list] = {}  # bucket number -> its events, in scheduling order
        self._order: list[int] = []  # heap of the numbers of _buckets
        # The bucket being run, sorted by time (ties in scheduling order); the events before
        # _next have run.
        self._current: list[tuple[float, Callable[[Any], None], Any]] = []
        self._next = 0
        self._current_id = int(self.now * self._per_s)
        self._bound = self._bound_of(self._current_id)
        # While run() takes a bucket whole: its iterator over _current, which _next lags behind.
        self._running = None

    def _bound_of(self, number: int) -> float:
        """A time before which every time falls in bucket ``number`` or an earlier one.

        A time from now to this bound is scheduled into the bucket being run, by time: it is
        earlier than every event of a later bucket, so the order is the heap's."""
        if abs(number) >= 2**52:  # far out (or infinity's bucket): every time takes _put's way
            return -math.inf
        per_s = self._per_s
        bound = (number + 1) / per_s
        while int(bound * per_s) > number:  # rounding: step down to the last time of this bucket
            bound = math.nextafter(bound, -math.inf)
        return bound

    def _position(self) -> int:
        """The place in _current of the first event not yet run."""
        running = self._running
        if running is None:
            return self._next
        self._next = position = len(self._current) - running.__length_hint__()
        return position

    def _put(self, item: tuple) -> None:
        try:
            number = int(item[0] * self._per_s)
        except OverflowError:  # at infinity: after every finite time
            number = sys.maxsize
        if number == self._current_id:
            insort_right(self._current, item, self._position(), key=_WHEN)
        elif number > self._current_id:
            bucket = self._buckets.get(number)
            if bucket is None:
                self._buckets[number] = [item]
                heappush(self._order, number)
            else:
                bucket.append(item)
        else:
            # Earlier than the bucket being run (scheduled from outside run(), after the
            # clock looked ahead): what is left of that bucket goes back to wait (still in
            # scheduling order among equal times), and this one is run first.
            current = self._current
            position = self._position()
            if position < len(current):
                self._buckets[self._current_id] = current[position:]
                heappush(self._order, self._current_id)
            self._current_id = number
            self._bound = self._bound_of(number)
            self._current = [item]
            self._next = 0
            self._running = None

    def at(self, when: float, callback: Callable[[Any], None], argument: Any = None) -> None:
        """Call ``callback(argument)`` at simulated time ``when`` (never before ``now``)."""
        if when < self._bound:
            if when > self.now:
                # Into the bucket being run, by time (a hop of a millisecond or less): every
                # event before the first not yet run is due no later than now, so a search of
                # the whole bucket finds the place a search after them would.
                insort_right(self._current, (when, callback, argument), key=_WHEN)
                return
        elif when < _FAR:
            # A later bucket that has events already (most of the other events).
            bucket = self._buckets.get(int(when * self._per_s))
            if bucket is not None:
                bucket.append((when, callback, argument))
                return
        now = self.now
        self._put((when if when > now else now, callback, argument))

    def after(self, delay: float, callback: Callable[[Any], None], argument: Any = None) -> None:
        """Call ``callback(argument)`` ``delay`` simulated seconds from now (``delay`` >= 0)."""
        self._put((self.now + delay if delay > 0 else self.now, callback, argument))

    def _first(self) -> tuple | None:
        """The earliest event (left in place), or None when none is scheduled."""
        current = self._current
        position = self._position()
        if position >= len(current):
            order = self._order
            if not order:
                return None
            self._current_id = number = heappop(order)
            self._bound = self._bound_of(number)
            self._current = current = self._buckets.pop(number)
            self._running = None
            current.sort(key=_WHEN)  # stable: equal times stay in scheduling order
            self._next = position = 0
        return current[position]

    def peek(self) -> float | None:
        """When the next event is due, or None when none is scheduled."""
        first = self._first()
        return None if first is None else first[0]

    def halt(self) -> None:
        """End :meth:`run` once the event being run returns (for a callback to call; the events
        due meanwhile, and the ones it schedules after, wait for the next run).

        Cheaper than ``run``'s ``stop``, which is asked after every event: a marker goes in
        front of the events not yet run, and running it ends the run.
        """
        position = self._position()
        current = self._current
        if position < len(current) and current[position][1] is _halt:
            return  # asked twice in one event
        current.insert(position, (self.now, _halt, None))

    def run(self, until: float | None = None, stop: Callable[[], bool] | None = None) -> None:
        """Run events in time order up to and including ``until`` (None: until none is left).

        ``stop`` is asked after each event; True ends the run there (so does :meth:`halt`).
        ``now`` ends at ``until`` when events remain after it, else at the last event.
        """
        limit = float("inf") if until is None else until
        # Buckets numbered below this are due whole: int() of the time scaled never decreases
        # as the time grows, so an event of a lower number than ``until``'s is not after it.
        whole = int(limit * self._per_s) if limit < _FAR else math.inf
        first_of = self._first
        count = 0  # events taken to run (the halt marker included)
        try:
            while True:
                if self._next >= len(self._current) and first_of() is None:
                    break
                current = self._current
                position = self._next
                if stop is None and self._current_id < whole:
                    # Every event of this bucket is due, one scheduled meanwhile included (it
                    # goes into this bucket after the running one, or into a later bucket): the
                    # list's own iterator takes them in order and sees the ones inserted ahead
                    # of it. _next is worked out from the iterator when it is wanted.
                    events = self._running = iter(current)
                    if position:
                        events.__setstate__(position)
                    try:
                        for when, callback, argument in events:
                            self.now = when
                            callback(argument)
                    finally:
                        done = len(current) - events.__length_hint__()
                        count += done - position
                        if self._running is events:  # not put aside by peek() or _put meanwhile
                            self._running = None
                            self._next = done
                    continue
                # The bucket's events while they are due. One scheduled meanwhile is never
                # earlier than now (at() and after() see to it), so it goes into this bucket
                # after _next or into a later one, and this bucket stays the one being run.
                while position < len(current):
                    when, callback, argument = current[position]
                    if when > limit:
                        if until is not None and self.now < until:
                            self.now = until
                        return
                    position += 1
                    self._next = position
                    self.now = when
                    count += 1
                    callback(argument)
                    if stop is not None and stop():
                        return
        except _Halted:
            # The marker has just run, the last event taken: out of the calendar and the count.
            count -= 1
            self._next -= 1
            del self._current[self._next]
        finally:
            self.events += count


class _Halted(Exception):
    """Raised by the marker :meth:`Environment.halt` puts in; run() catches it and returns."""


def _halt(_) -> None:
    raise _Halted
