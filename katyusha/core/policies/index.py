"""Indexes over the table's ready pods by a metric, kept current without looking at every pod.

"The lowest load, ties at random" over ``table.ready()`` would scan every pod
on every pick (jsq-piggyback: 1.3 ms at 10,000 pods, see docs/policies.md).
An index here holds each ready pod's key (its metric value) in groups of
equal keys, each group sorted by the pod's position in ``table.ready()``, and
the keys in a heap, so the lowest group is found at once and choosing its
``randrange(len(group))``-th member is what the scan would have chosen with
the same draw.

Keys change for three reasons, each handled without a scan:

* an event on a pod (dispatch, response, failure): the table calls its
  listeners (``LoadTable.add_listener``); the pod is marked and re-keyed at the
  next pick;
* time: a report going stale or a failure's weight lapsing
  (``LoadTable.load_changes_at``) is kept in a heap of due times, popped
  lazily at pick time;
* membership or readiness (``table.ready()`` is a new list): a rebuild, at
  control-plane rate. So is ``now`` going backwards.

Groups are plain sorted lists with ``bisect`` rather than one
``sortedcontainers.SortedList``: moving a pod among 10,000 costs about a third
as much (``python -m benchmarks.policy_micro --compare-groups``; figures in
docs/policies.md), and a pick's budget (20 µs for jsq-piggyback) counts them.
"""

from __future__ import annotations

import math
from bisect import bisect_left, bisect_right, insort
from heapq import heapify, heappop, heappush, heapreplace
from itertools import filterfalse
from typing import Protocol

from katyusha.core.delay import expected_delay_ms
from katyusha.core.loadtable import LoadTable, PodEntry

# Never equal to a time: a position whose due time was never worked out.
_NEVER = object()


class Groups:
    """Positions grouped by key, each group sorted; the lowest key found in amortised O(1)."""

    __slots__ = ("groups", "_heap")

    def __init__(self, groups: dict | None = None):
        self.groups: dict = groups or {}
        # Every key of ``groups`` is in the heap; keys of emptied groups stay
        # until they reach the top (or the heap is compacted).
        self._heap = list(self.groups)
        heapify(self._heap)

    def add(self, key, position: int) -> None:
        group = self.groups.get(key)
        if group is None:
            self.groups[key] = [position]
            heap = self._heap
            heappush(heap, key)
            if len(heap) > 2 * len(self.groups) + 32:
                heap[:] = self.groups
                heapify(heap)
        else:
            insort(group, position)

    def discard(self, key, position: int) -> None:
        group = self.groups[key]
        if len(group) == 1:
            del self.groups[key]
        else:
            del group[bisect_left(group, position)]

    def lowest(self):
        """The lowest key with a group, or None when there are none."""
        heap = self._heap
        groups = self.groups
        while heap:
            key = heap[0]
            if key in groups:
                return key
            heappop(heap)
        return None

    def lowest_except(self, excluded: set[int | None], budget: int):
        """The lowest key with a member not in ``excluded``, and those members, in group order.

        Walks the keys upward, skipping groups whose members are all
        excluded; None when the groups skipped hold more than ``budget``
        members (the caller then scans) or every member is excluded. Keys set
        aside on the way are put back. The list returned may be the group
        itself (when none of it is excluded): not to be changed.
        """
        heap = self._heap
        groups = self.groups
        popped = []
        try:
            while heap:
                key = heap[0]
                group = groups.get(key)
                if group is None:
                    heappop(heap)
                    continue
                if not excluded.isdisjoint(group):
                    group = list(filterfalse(excluded.__contains__, group))
                if group:
                    return group, key
                budget -= len(groups[key])
                if budget < 0:
                    return None
                popped.append(heappop(heap))
            return None
        finally:
            for key in popped:
                heappush(heap, key)


class _Index:
    """What every index shares: tracking which ready pods may have a new key since the last pick."""

    __slots__ = ("table", "timed", "_dirty", "_ready", "_version", "_now", "_position", "_due", "_due_at",
                 "_seen_report", "_seen_failed", "_until", "repairs")

    def __init__(self, table: LoadTable, *, timed: bool):
        self.table = table
        self.timed = timed
        self._dirty: set[PodEntry] = set()
        table.add_listener(self._dirty.add)
        self._ready: list[PodEntry] | None = None
        self._version = -1
        self._now = -math.inf
        self._position: dict[PodEntry, int] = {}
        self._due: list[tuple[float, int]] = []  # heap of (when to re-key, position)
        self._due_at: list[float] = []  # per position: its live entry in _due, or inf
        # Per position: the report and failure times its due time was last worked out
        # from; an event that changed neither (a dispatch, an end) leaves it as it was.
        self._seen_report: list = []
        self._seen_failed: list = []
        # Per position: the due time _schedule last worked out (the key holds until then).
        self._until: list[float] = []
        # Picks that found a pod whose key had changed unannounced (see Lowest).
        self.repairs = 0

    def touch(self, entry: PodEntry) -> None:
        """Re-key ``entry`` at the next look, as if the table had announced a change."""
        self._dirty.add(entry)

    def sync(self, ready: list[PodEntry], now: float) -> None:
        """Bring every key up to date at ``now`` over ``ready``, which is ``table.ready()``."""
        table = self.table
        if ready is not self._ready or table.version != self._version or now < self._now:
            self._ready = ready
            self._version = table.version
            self._position = {entry: position for position, entry in enumerate(ready)}
            self._dirty.clear()
            self._due = []
            self._due_at = [math.inf] * len(ready)
            self._seen_report = [_NEVER] * len(ready)
            self._seen_failed = [_NEVER] * len(ready)
            self._until = [-math.inf] * len(ready)
            self._rebuild(ready, now)
        else:
            dirty = self._dirty
            if dirty:
                self._rekey_many(dirty, now)
                dirty.clear()
            due = self._due
            if due and due[0][0] <= now:
                due_at = self._due_at
                until = self._until
                while due and due[0][0] <= now:
                    when, position = due[0]
                    if due_at[position] != when:
                        heappop(due)  # a due time moved since
                    elif until[position] > now:
                        # Worked out from a report (or failure) renewed since: the pod was
                        # re-keyed then (the table's listener), and its key holds until the
                        # renewal's due time, which was not pushed (this one was earlier).
                        # Popped and pushed in one step (the entries are distinct pairs, so
                        # the heap gives the same ones in the same order).
                        later = due_at[position] = until[position]
                        heapreplace(due, (later, position))
                    else:
                        heappop(due)
                        due_at[position] = math.inf
                        self._seen_report[position] = _NEVER  # work its next due time out
                        self._rekey(position, ready[position], now)
        self._now = now

    def _schedule(self, position: int, entry: PodEntry, now: float) -> None:
        # The due time depends on the report's and the last failure's times only
        # (LoadTable.load_changes_at); with neither changed, the one pending stands,
        # and with none pending none is ahead (now only moves forward here).
        reported_at = entry.reported_at
        failed_at = entry.failed_at
        if reported_at == self._seen_report[position] and failed_at == self._seen_failed[position]:
            return
        self._seen_report[position] = reported_at
        self._seen_failed[position] = failed_at
        when = self.table.load_changes_at(entry, now)
        if when <= now:
            # Not changed yet at its due time (rounding): look again just after now.
            when = math.nextafter(now, math.inf)
        self._until[position] = when
        if when < self._due_at[position]:
            self._due_at[position] = when
            heappush(self._due, (when, position))

    def _rebuild(self, ready: list[PodEntry], now: float) -> None:
        raise NotImplementedError

    def _rekey(self, position: int, entry: PodEntry, now: float) -> None:
        raise NotImplementedError

    def _rekey_many(self, entries, now: float) -> None:
        """:meth:`_rekey` each of ``entries`` that is ready (the pods events touched since the last look)."""
        position_of = self._position
        for entry in entries:
            position = position_of.get(entry)
            if position is not None:
                self._rekey(position, entry, now)


class Keyed(Protocol):
    """What a LowestIndex keys pods by: a metric (metrics.py, which imports this module)."""

    def load(self, entry: PodEntry, now: float) -> object: ...


class LowestIndex(_Index):
    """The ready pods by ``metric.load(entry, now)``; ``timed`` when the key moves with time as
    estimated_load does. ``metric.load`` is read at each look, not once: a metric may put a
    cheaper function in its place while it gives the same values (SpeedWeightedLoad)."""

    __slots__ = ("_metric", "_keys", "_groups")

    def __init__(self, table: LoadTable, metric: Keyed, *, timed: bool):
        super().__init__(table, timed=timed)
        self._metric = metric
        self._keys: list = []
        self._groups = Groups()

    def lowest(self, ready: list[PodEntry], now: float):
        """``(tied positions in ready, their key)`` of the lowest key at ``now``.

        ``ready`` must be ``table.ready()``: positions index it.
        """
        self.sync(ready, now)
        key = self._groups.lowest()
        return self._groups.groups[key], key

    def lowest_except(self, ready: list[PodEntry], excluded, now: float, budget: int):
        """As :meth:`lowest`, over the pods of ``ready`` not in ``excluded``; None past ``budget``.

        The positions returned are those of the lowest key among the pods not
        excluded, in ``ready``'s order: what a scan of ``ready`` without
        ``excluded`` would tie. None when the groups walked past (all their
        pods excluded) hold more than ``budget`` pods, or every pod is
        excluded: the caller then scans.
        """
        self.sync(ready, now)
        # The excluded pods' positions; None for one not ready (no position is None).
        left_out = set(map(self._position.get, excluded))
        return self._groups.lowest_except(left_out, budget)

    def _rebuild(self, ready: list[PodEntry], now: float) -> None:
        key_of = self._metric.load
        self._keys = keys = [key_of(entry, now) for entry in ready]
        groups: dict = {}
        for position, key in enumerate(keys):
            groups.setdefault(key, []).append(position)
        self._groups = Groups(groups)
        if self.timed:
            for position, entry in enumerate(ready):
                self._schedule(position, entry, now)

    def _rekey(self, position: int, entry: PodEntry, now: float) -> None:
        key = self._metric.load(entry, now)
        keys = self._keys
        old = keys[position]
        if key != old:
            groups = self._groups
            groups.discard(old, position)
            groups.add(key, position)
            keys[position] = key
        # _schedule's first test inline: most events (a dispatch, an end) change neither time.
        if self.timed and (entry.reported_at != self._seen_report[position]
                           or entry.failed_at != self._seen_failed[position]):
            self._schedule(position, entry, now)

    def _rekey_many(self, entries, now: float) -> None:
        # _rekey's steps with the lookups hoisted out of the loop: this runs on every pick,
        # for each pod that had a dispatch or a response since the last.
        position_of = self._position
        key_of = self._metric.load
        keys = self._keys
        groups = self._groups
        timed = self.timed
        seen_report = self._seen_report
        seen_failed = self._seen_failed
        for entry in entries:
            position = position_of.get(entry)
            if position is None:
                continue
            key = key_of(entry, now)
            old = keys[position]
            if key != old:
                groups.discard(old, position)
                groups.add(key, position)
                keys[position] = key
            if timed and (entry.reported_at != seen_report[position] or entry.failed_at != seen_failed[position]):
                self._schedule(position, entry, now)


class DelayIndex(_Index):
    """sed's index: ``(expected delay, load)`` per pod, for an :class:`ExpectedDelay` metric.

    A pod whose app time counts as the fleet median is keyed by
    ``(delay per ms of app time, load)``, which does not change when the
    median moves; the others by ``(delay, load)``. The two groups' lowest are
    compared at pick time, with the delay of the first computed from the
    median then. When the median moves, only the pods whose app time crosses
    the edge of the ``same_speed`` band change group: found by bisecting the
    sorted app times. A median of 0 cannot be factored out: :meth:`lowest`
    returns None and the pick scans.
    """

    __slots__ = ("metric", "_band", "_apps", "_app", "_keys", "_median_class", "_outliers")

    def __init__(self, table: LoadTable, metric):
        super().__init__(table, timed=True)
        self.metric = metric
        self._band = metric.band
        self._apps: list[tuple[float, int]] = []  # sorted (app time, position)
        self._app: list[float | None] = []
        self._keys: list[tuple[bool, tuple]] = []
        self._median_class = Groups()
        self._outliers = Groups()

    def lowest(self, ready: list[PodEntry], now: float):
        """``(tied positions in ready, (delay, load))`` of the lowest at ``now``, or None.

        ``ready`` must be ``table.ready()``: positions index it.
        """
        self.sync(ready, now)
        apps = self._apps
        median = self.metric.median_app_ms(ready, now, (len(apps), lambda i: apps[i][0]))
        if not median > 0:
            return None
        if self.metric.band != self._band:
            self._move_band(self.metric.band, ready, now)
        in_band = self._median_class.lowest()
        outlier = self._outliers.lowest()
        if in_band is not None:
            factor, load = in_band
            in_band_value = (median * factor, load)
            if outlier is None or in_band_value < outlier:
                return self._median_class.groups[in_band], in_band_value
            if in_band_value == outlier:
                tied = self._median_class.groups[in_band] + self._outliers.groups[outlier]
                return sorted(tied), outlier
        return self._outliers.groups[outlier], outlier

    def _move_band(self, band: tuple[float, float], ready: list[PodEntry], now: float) -> None:
        apps = self._apps
        end = len(ready)
        old_first = bisect_left(apps, (self._band[0], -1))
        old_end = bisect_right(apps, (self._band[1], end))
        self._band = band
        first = bisect_left(apps, (band[0], -1))
        stop = bisect_right(apps, (band[1], end))
        if old_end <= first or stop <= old_first or old_first >= old_end or first >= stop:
            spans = ((old_first, old_end), (first, stop))
        else:
            spans = ((min(first, old_first), max(first, old_first)),
                     (min(stop, old_end), max(stop, old_end)))
        moved = [apps[i][1] for lo, hi in spans for i in range(lo, hi)]
        for position in moved:
            self._rekey(position, ready[position], now)

    def _rebuild(self, ready: list[PodEntry], now: float) -> None:
        self._band = self.metric.band
        self._app = [entry.app_ewma_ms for entry in ready]
        self._apps = sorted((app, p) for p, app in enumerate(self._app) if app is not None)
        self._keys = [(False, ())] * len(ready)
        self._median_class = Groups()
        self._outliers = Groups()
        for position, entry in enumerate(ready):
            self._keys[position] = key = self._key(entry, entry.app_ewma_ms, now)
            (self._median_class if key[0] else self._outliers).add(key[1], position)
            self._schedule(position, entry, now)

    def _key(self, entry: PodEntry, app: float | None, now: float) -> tuple[bool, tuple]:
        load = self.table.estimated_load(entry, now)
        concurrency = entry.reported_concurrency
        low, high = self._band
        if app is None or low <= app <= high:
            return True, (expected_delay_ms(1.0, load, concurrency), load)
        return False, (expected_delay_ms(app, load, concurrency), load)

    def _rekey(self, position: int, entry: PodEntry, now: float) -> None:
        app = entry.app_ewma_ms
        old_app = self._app[position]
        if app != old_app:
            apps = self._apps
            if old_app is not None:
                del apps[bisect_left(apps, (old_app, position))]
            if app is not None:
                insort(apps, (app, position))
            self._app[position] = app
        key = self._key(entry, app, now)
        old = self._keys[position]
        if key != old:
            (self._median_class if old[0] else self._outliers).discard(old[1], position)
            (self._median_class if key[0] else self._outliers).add(key[1], position)
            self._keys[position] = key
        self._schedule(position, entry, now)
