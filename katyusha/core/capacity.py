"""Per-pod capacity: how many of this process's requests a pod may hold, and the pods with room.

As Knative's activator sizes its per-pod breakers, a pod may hold ``factor``
times its container concurrency (at least 1). The concurrency is the one
given when the pod joined, else the pod's last ``Nonna-Concurrency`` report
(0: unlimited, not capped). A pod that joined without one while reports are
read is *unproven*: it takes a single request until its first one ends, by
when its report has told its concurrency; a pod that never reports one is not
capped. When every ready pod's capacity is known and finite, the L1 limit in
force is the smaller of the configured one and their sum (:meth:`limit`), so
a burst held while no pod was ready goes out no faster than pods can take it.

``extra`` requests beyond that hide the round trip between two requests
(one waits in nonna while the pod works), but a request waiting behind a
slow pod's work waits long: a pod whose app time (``PodEntry.app_ewma_ms``)
is above ``SLOW_RATIO`` times the median of the pods' is *slow* and held to
its capacity without the extra. A pod is classed when one of its requests
ends, against the median recomputed once per round of the pods' ends.

The count compared with a capacity is the pod's one in-flight count,
``PodEntry.in_flight``; this class only watches it. The pods with room are
kept as a list updated in O(1) as pods fill and free (:attr:`open`), so a
pick never filters the pod set per request. The bound is per process.
"""

from __future__ import annotations

from collections.abc import Sequence

from katyusha.core.loadtable import PodEntry

# A pod whose app time is above this many times the pods' median gets no extra slot.
SLOW_RATIO = 1.5

# In PodCapacity.watch: a pod whose first request has not ended yet.
UNPROVEN = object()
_UNWATCHED = object()


class PodCapacity:
    """Capacities, the full pods and the ready pods with room, for one service's load table."""

    def __init__(self, factor: float, *, learn: bool, extra: int = 0):
        """``factor`` 0 turns capacity off; ``learn`` says reports may tell a pod's concurrency;
        ``extra`` requests are allowed beyond ``factor`` x concurrency (one waiting in nonna hides
        the round trip between two requests from a pod of concurrency 1)."""
        self.factor = float(factor)
        self.extra = int(extra)
        self.learn = learn
        self.given: dict[PodEntry, int] = {}
        # Pods learning their capacity from reports: the concurrency their
        # capacity was last computed from (or UNPROVEN).
        self.watch: dict[PodEntry, object] = {}
        self.caps: dict[PodEntry, int] = {}
        self.full: set[PodEntry] = set()
        # Ready pods below their capacity; swap-removed and appended in O(1).
        self.open: list[PodEntry] = []
        self._pos: dict[PodEntry, int] = {}
        self._ready: set[PodEntry] = set()
        # The ready list of the last rebuild: open is exactly it without the full pods.
        self.built_from: Sequence[PodEntry] | None = None
        # Set when a report changed a capacity: the owner calls rebuild().
        self.stale = False
        # Pods held to their capacity without the extra (see SLOW_RATIO), the
        # median app time they are judged against, and ends until it is recomputed.
        self.slow: set[PodEntry] = set()
        self.median_app_ms: float | None = None
        self._ends_to_median = 0

    # -- membership rate ---------------------------------------------------

    def register(self, entry: PodEntry, concurrency: int | None, *, new: bool) -> None:
        """A pod joined or was updated with ``concurrency`` (None: not given)."""
        if concurrency is not None:
            self.given[entry] = concurrency
            self.watch.pop(entry, None)
        elif entry not in self.given and self.factor and self.learn:
            reported = entry.reported_concurrency
            self.watch.setdefault(entry, UNPROVEN if new and reported is None else reported)

    def forget(self, entry: PodEntry) -> None:
        """A pod left the set."""
        self.given.pop(entry, None)
        self.watch.pop(entry, None)

    def rebuild(self, pods: Sequence[PodEntry], ready: Sequence[PodEntry]) -> None:
        """Recompute every capacity, the full pods and the open list (after a change of pods)."""
        self.stale = False
        caps: dict[PodEntry, int] = {}
        if self.factor:
            for entry in pods:
                cap = self.capacity_of(entry)
                if cap is not None:
                    caps[entry] = cap
        self.caps = caps
        self.slow &= caps.keys()
        full = self.full = {entry for entry, cap in caps.items() if entry.in_flight >= self._room(entry, cap)}
        self._ready = set(ready)
        self.built_from = ready
        self.open = [entry for entry in ready if entry not in full] if full else list(ready)
        self._pos = {entry: index for index, entry in enumerate(self.open)}

    @property
    def order(self) -> dict[PodEntry, int]:
        """Each pod of :attr:`open` to its place in it (kept as pods fill and drain)."""
        return self._pos

    def capacity_of(self, entry: PodEntry) -> int | None:
        """Requests ``entry`` may hold from this process; None when uncapped (unknown or unlimited)."""
        concurrency = self.given.get(entry)
        if concurrency is None:
            concurrency = entry.reported_concurrency
        if concurrency is None:
            return 1 if self.watch.get(entry) is UNPROVEN else None
        if concurrency == 0:
            return None
        return max(1, int(concurrency * self.factor)) + self.extra

    def _room(self, entry: PodEntry, cap: int) -> int:
        """Requests ``entry`` may hold now: its capacity, less the extra while it is slow."""
        return cap - self.extra if self.extra and entry in self.slow else cap

    def _classify(self, entry: PodEntry) -> None:
        """After one of ``entry``'s requests ended: is it slow now? (only with an extra)."""
        self._ends_to_median -= 1
        if self._ends_to_median <= 0:
            times = sorted(e.app_ewma_ms for e in self.caps if e.app_ewma_ms is not None)
            self.median_app_ms = times[len(times) // 2] if times else None
            self._ends_to_median = max(1, len(self.caps))
        median = self.median_app_ms
        app = entry.app_ewma_ms
        slow = median is not None and app is not None and app > SLOW_RATIO * median
        if slow == (entry in self.slow):
            return
        if slow:
            self.slow.add(entry)
            if entry.in_flight >= self.caps[entry] - self.extra:
                self._close(entry)
        else:
            self.slow.discard(entry)

    def _close(self, entry: PodEntry) -> None:
        """``entry`` is full: out of the open list, in O(1)."""
        self.full.add(entry)
        pos = self._pos.pop(entry, None)
        if pos is not None:
            last = self.open.pop()
            if last is not entry:
                self.open[pos] = last
                self._pos[last] = pos

    def limit(self, configured: int | None, ready: Sequence[PodEntry]) -> int | None:
        """The configured L1 limit, lowered to the ready pods' total capacity when each has one."""
        caps = self.caps
        if not caps or configured is None:
            return configured
        total = 0
        for entry in ready:
            cap = caps.get(entry)
            if cap is None:
                return configured
            total += cap
        return min(configured, total) if total else configured

    # -- per request -------------------------------------------------------

    def candidates(self, ready: list[PodEntry]) -> list[PodEntry]:
        """The pods to pick from: ``ready`` itself while no pod is full, else those with room.

        When every ready pod is full (for a moment after the set shrank) any may be picked.
        """
        if not self.full:
            return ready
        return self.open or ready

    def started(self, entry: PodEntry) -> None:
        """``entry.in_flight`` just went up."""
        cap = self.caps.get(entry)
        if cap is not None and entry not in self.full and entry.in_flight >= self._room(entry, cap):
            self._close(entry)

    def ended(self, entry: PodEntry) -> None:
        """``entry.in_flight`` just went down; sets :attr:`stale` when a report changed its capacity."""
        if self.extra and entry in self.caps:
            self._classify(entry)
        full = self.full
        if full and entry in full and entry.in_flight < self._room(entry, self.caps[entry]):
            full.discard(entry)
            if entry in self._ready:
                self._pos[entry] = len(self.open)
                self.open.append(entry)
        watch = self.watch
        if watch:
            seen = watch.get(entry, _UNWATCHED)
            if seen is not _UNWATCHED and seen != entry.reported_concurrency:
                # The pod told its concurrency (or its first request ended).
                watch[entry] = entry.reported_concurrency
                self.stale = True
