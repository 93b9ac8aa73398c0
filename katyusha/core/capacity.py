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
its capacity without the extra, and its extra is out of the L1 limit (else,
with every pod at its room, one more request is let in and may be sent to
any pod, a held one too). A pod is classed when one of its requests ends,
against the median recomputed once per round of the pods' ends.

``hold`` (0: off) keeps a slow pod out of picking while the L1 queue is
short, the threshold rule of the slow-server problem: a request waiting for
a faster pod to free beats one sent to an idle slow pod while the wait is
shorter than the slow pod's extra work. A slow pod whose app time is ``r``
times the median is *held* (room 0, its slots out of the L1 limit) while at
most ``hold x F x (r - 1)`` requests wait in L1, ``F`` being the slots of the
pods that are not slow (``F / median`` is the rate they free at, so 1 is that
break-even point); beyond it, it takes requests as any pod. The owner calls
:meth:`review` with the queue's length when a request ends. A held pod is
let in for one request after ``HOLD_PROBE_S`` without one, so a pod slow for
a while is seen again when it is fast.

``shared`` (None: off) counts other balancers' requests: several katyusha
replicas in front of the same pods each hold a pod to its capacity, so
together they would put that many times as many requests on it, queued in
nonna's FIFO rather than in L1 where any pod that frees could take them. A
pod's report (``Nonna-Queue-Length`` + ``Nonna-In-Flight``, plus what was
sent to it since) less this process's ``in_flight`` is what others hold
there; when a request to the pod ends and its last report is fresh
(``shared``: the load table's ``reported_load``), the pod's room is cut by that many (:attr:`others`),
but by no more than half its slots of concurrency (rounded down), never its
extra: a pod with none of ours is always sent one, its answer bringing the
next report, and a replica cut by the others' load keeps half its room, so
that when replicas together want more than a pod holds they share it rather
than one taking it and the other's requests waiting in its L1 (cut to one
request, the second of two replicas in the simulator's worked example got a
sixth of the first pod's requests while the service scaled from zero). A pod
of concurrency 1 is not cut: measured live, taking its extra slot away made
the tail longer. The cut slots are out of the L1 limit while they are cut.

The count compared with a capacity is the pod's one in-flight count,
``PodEntry.in_flight``; this class only watches it. The pods with room are
kept as a list updated in O(1) as pods fill and free (:attr:`open`), so a
pick never filters the pod set per request. The bound is per process.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from itertools import filterfalse, repeat

from katyusha.core.loadtable import PodEntry

# A pod whose app time is above this many times the pods' median gets no extra slot.
SLOW_RATIO = 1.5
# A held slow pod is let in for a request after this long without one (its app time may have changed).
HOLD_PROBE_S = 1.0
# Only a pod this many times slower than the median is held: app times of equal pods with
# heavy-tailed work pass 1.5x often: held at 1.5x, the model's heavy-tail fleet had p99 1.2 to
# 2.9 s against 188 ms (benchmarks.tail_model).
HOLD_RATIO = 2.5

# In PodCapacity.watch: a pod whose first request has not ended yet.
UNPROVEN = object()
_UNWATCHED = object()


class PodCapacity:
    """Capacities, the full pods and the ready pods with room, for one service's load table."""

    # Slots: read on every request's start and end (as the core's other per-service objects).
    __slots__ = ("factor", "extra", "hold", "shared", "others", "_cuts", "_classes", "learn", "given",
                 "_given_caps", "watch", "caps", "full", "open", "order", "_ready", "built_from", "stale",
                 "slow", "median_app_ms", "_ends_to_median", "held", "thresholds", "_probe_at",
                 "_withheld", "_fast", "moved", "_total", "ready_extras")

    def __init__(self, factor: float, *, learn: bool, extra: int = 0, hold: float = 0.0,
                 shared: Callable[[PodEntry, float], int | None] | None = None):
        """``factor`` 0 turns capacity off; ``learn`` says reports may tell a pod's concurrency;
        ``extra`` requests are allowed beyond ``factor`` x concurrency (one waiting in nonna hides
        the round trip between two requests from a pod of concurrency 1); ``hold``: slow pods
        are held out while the L1 queue is short; ``shared`` (None: off): what a pod holds by
        its report, None when it has no fresh one (``LoadTable.reported_load``), which cuts its
        room by what other balancers hold there (see the module docstring)."""
        self.factor = float(factor)
        self.extra = int(extra)
        self.hold = float(hold)
        self.shared = shared
        # Other balancers' requests at each pod, by its last report (pods with none left out),
        # and the room each ready pod is cut by for them (in the L1 limit's kept-out slots).
        self.others: dict[PodEntry, int] = {}
        self._cuts: dict[PodEntry, int] = {}
        # Slow pods are classed only when something depends on it.
        self._classes = bool(self.extra or self.hold)
        self.learn = learn
        self.given: dict[PodEntry, int] = {}
        # The capacity each given concurrency makes (None: unlimited), kept with ``given``:
        # rebuild() reads it rather than working each pod's out again.
        self._given_caps: dict[PodEntry, int | None] = {}
        # Pods learning their capacity from reports: the concurrency their
        # capacity was last computed from (or UNPROVEN).
        self.watch: dict[PodEntry, object] = {}
        self.caps: dict[PodEntry, int] = {}
        self.full: set[PodEntry] = set()
        # Ready pods below their capacity; swap-removed and appended in O(1).
        self.open: list[PodEntry] = []
        # Each pod of open to its place in it (a plain attribute: read on every pick that
        # leaves full pods out).
        self.order: dict[PodEntry, int] = {}
        self._ready: set[PodEntry] = set()
        # The ready list of the last rebuild: open is exactly it without the full pods.
        self.built_from: Sequence[PodEntry] | None = None
        # Set when a report changed a capacity: the owner calls rebuild().
        self.stale = False
        # Pods held to their capacity without the extra (see SLOW_RATIO), the
        # median app time they are judged against, and ends until it is recomputed. An ordered
        # set (a dict's keys), visited in the order the pods became slow: review() opens released
        # pods in that order, and a set's order would follow their addresses, so the same events
        # could make different picks in another process or after other work in the same one.
        self.slow: dict[PodEntry, None] = {}
        self.median_app_ms: float | None = None
        self._ends_to_median = 0
        # Slow pods held out (room 0), the queue length each is held up to, when a held one
        # is let in for a probe, and the slots kept out of the L1 limit: a ready slow pod's
        # extra, a held one's whole capacity. ``moved``: the slow set changed what is kept
        # out since the owner last read :meth:`limit` (it clears it).
        self.held: set[PodEntry] = set()
        self.thresholds: dict[PodEntry, float] = {}
        self._probe_at: dict[PodEntry, float] = {}
        self._withheld = 0
        # The slots of the ready pods that are not slow (what _thresholds() weighs a slow
        # pod's extra work against), kept as pods turn slow or fast between rebuilds.
        self._fast = 0
        self.moved = False
        # The ready pods' total capacity (None: one is uncapped), from the last rebuild, and
        # the extra slots in it (what a hedge does not count as room: it would wait in nonna).
        self._total: int | None = None
        self.ready_extras = 0

    # -- membership rate ---------------------------------------------------

    def register(self, entry: PodEntry, concurrency: int | None, *, new: bool) -> None:
        """A pod joined or was updated with ``concurrency`` (None: not given)."""
        if concurrency is not None:
            self.given[entry] = concurrency
            self._given_caps[entry] = self._capacity_for(concurrency)
            self.watch.pop(entry, None)
        elif entry not in self.given and self.factor and self.learn:
            reported = entry.reported_concurrency
            self.watch.setdefault(entry, UNPROVEN if new and reported is None else reported)

    def forget(self, entry: PodEntry) -> None:
        """A pod left the set."""
        self.given.pop(entry, None)
        self._given_caps.pop(entry, None)
        self.watch.pop(entry, None)
        self.thresholds.pop(entry, None)
        self._probe_at.pop(entry, None)
        self.others.pop(entry, None)

    def rebuild(self, pods: Sequence[PodEntry], ready: Sequence[PodEntry]) -> None:
        """Recompute every capacity, the full pods and the open list (after a change of pods)."""
        self.stale = False
        caps = self._caps(pods) if self.factor else {}
        self.caps = caps
        slow = self.slow
        if slow:
            slow = self.slow = {entry: None for entry in slow if entry in caps}
        self._ready = ready_set = set(ready)
        # A held pod that left the ready set is no longer held (its slots are not in the total).
        held = self.held
        if held:
            held.intersection_update(slow)
            held &= ready_set
        total: int | None = 0
        unproven = 0  # ready pods on their single first request: no extra in their capacity
        watch = self.watch
        if watch:
            for entry in ready:
                cap = caps.get(entry)
                if cap is None:
                    total = None
                    break
                total += cap
                if watch.get(entry) is UNPROVEN:
                    unproven += 1
        else:
            try:
                total = sum(map(caps.__getitem__, ready))
            except KeyError:
                total = None  # a ready pod is uncapped
        self._total = total
        extra = self.extra
        withheld = slow_slots = slow_ready = 0
        for entry in slow:
            if entry in ready_set:
                cap = caps[entry]
                slow_ready += 1
                slow_slots += cap
                withheld += cap if entry in held else extra
        cuts = self._cuts
        cuts.clear()
        if self.others:
            for entry, others in self.others.items():
                if entry in ready_set and entry in caps:
                    cut = self._cut(entry, caps[entry], others)
                    if cut:
                        cuts[entry] = cut
                        withheld += cut
        self._withheld = withheld
        # A slow pod's extra is withheld already (its whole capacity while held).
        self.ready_extras = extra * (len(ready) - unproven - slow_ready) if total else 0
        self._fast = (total if total is not None else sum(map(caps.get, ready, repeat(0)))) - slow_slots
        self.moved = False
        if self.hold:
            self._thresholds()
        # The pods at their room: at their capacity, a slow one at it less the extra, a held one always.
        full = {entry for entry, cap in caps.items() if entry.in_flight >= cap}
        for entry in (*slow, *cuts) if slow and self._classes else cuts:
            if entry.in_flight >= self._room(entry, caps[entry]):
                full.add(entry)
            else:
                full.discard(entry)
        self.full = full
        self.built_from = ready
        self.open = open_ = list(filterfalse(full.__contains__, ready)) if full else list(ready)
        self.order = dict(zip(open_, range(len(open_)), strict=True))

    def _caps(self, pods: Sequence[PodEntry]) -> dict[PodEntry, int]:
        """Each capped pod's capacity, in ``pods``' order (as :meth:`capacity_of` gives it)."""
        given_caps = self._given_caps
        if (not self.watch and len(given_caps) == len(pods)
                and all(map(given_caps.__contains__, pods))):
            # Every pod's concurrency was given: their capacities are known already.
            caps = dict(zip(pods, map(given_caps.__getitem__, pods), strict=True))
            if None in caps.values():
                caps = {entry: cap for entry, cap in caps.items() if cap is not None}
            return caps
        caps = {}
        for entry in pods:
            cap = self.capacity_of(entry)
            if cap is not None:
                caps[entry] = cap
        return caps

    def capacity_of(self, entry: PodEntry) -> int | None:
        """Requests ``entry`` may hold from this process; None when uncapped (unknown or unlimited)."""
        concurrency = self.given.get(entry)
        if concurrency is None:
            concurrency = entry.reported_concurrency
        if concurrency is None:
            return 1 if self.watch.get(entry) is UNPROVEN else None
        return self._capacity_for(concurrency)

    def _capacity_for(self, concurrency: int) -> int | None:
        """The capacity a pod of ``concurrency`` gets (None: 0, unlimited)."""
        if concurrency == 0:
            return None
        return max(1, int(concurrency * self.factor)) + self.extra

    def _room(self, entry: PodEntry, cap: int) -> int:
        """Requests ``entry`` may hold now: its capacity, less the extra while it is slow, 0 while
        held, less its cut for other balancers' requests."""
        if self._classes and entry in self.slow:
            cap = 0 if entry in self.held else cap - self.extra
        cuts = self._cuts
        return cap - cuts.get(entry, 0) if cuts else cap

    def room(self, entry: PodEntry) -> int | None:
        """Requests ``entry`` may hold from this process now (None: not capped)."""
        cap = self.caps.get(entry)
        return None if cap is None else self._room(entry, cap)

    def _cut(self, entry: PodEntry, cap: int, others: int) -> int:
        """What ``others`` requests of other balancers cut ``entry``'s room by: at most half of its
        slots of concurrency (rounded down; none of a held pod's), never its extra."""
        if self._classes and entry in self.held:
            return 0
        half = (cap - self.extra) // 2  # 0 for an unproven pod's single request
        if half <= 0:
            return 0
        return others if others < half else half

    def _recut(self, entry: PodEntry) -> None:
        """``entry``'s cut again (its report, slowness or hold changed), the L1 limit's kept-out
        slots with it; then into or out of the open list as its room says."""
        cuts = self._cuts
        old = cuts.get(entry, 0)
        others = self.others.get(entry)
        cap = self.caps.get(entry)
        cut = self._cut(entry, cap, others) if others and cap is not None and entry in self._ready else 0
        if cut == old:
            return
        if cut:
            cuts[entry] = cut
        else:
            del cuts[entry]
        self._withheld += cut - old
        self.moved = True
        if cap is None:
            return
        if entry.in_flight >= self._room(entry, cap):
            if entry not in self.full:
                self._close(entry)
        else:
            self._reopen(entry)

    def idle_slot(self, entry: PodEntry) -> bool:
        """Whether ``entry`` would start one more request at once: below its capacity without the
        extra (an unproven pod's single request has none)."""
        cap = self.caps.get(entry)
        if cap is None:
            return True
        return (entry.in_flight + self.others.get(entry, 0)
                < (cap if self.watch.get(entry) is UNPROVEN else cap - self.extra))

    def _unheld_room(self, entry: PodEntry) -> int:
        """A slow pod's room when it is not held."""
        return self.caps[entry] - self.extra

    def _classify(self, entry: PodEntry) -> None:
        """After one of ``entry``'s requests ended: is it slow now? (only with an extra or a hold)."""
        self._ends_to_median -= 1
        if self._ends_to_median <= 0:
            times = sorted(e.app_ewma_ms for e in self.caps if e.app_ewma_ms is not None)
            self.median_app_ms = times[len(times) // 2] if times else None
            self._ends_to_median = max(1, len(self.caps))
            if self.hold:
                self._thresholds()
        median = self.median_app_ms
        app = entry.app_ewma_ms
        slow = median is not None and app is not None and app > SLOW_RATIO * median
        if slow == (entry in self.slow):
            return
        if entry in self._ready:
            self._fast += -self.caps[entry] if slow else self.caps[entry]
        if slow:
            self.slow[entry] = None
            if entry.in_flight >= self._room(entry, self.caps[entry]):
                self._close(entry)
        else:
            if entry in self.held:
                # Only review() hands the L1 limit a change of the held slots: a resync gives
                # these back (without it the limit stays short of the pods' room).
                self._release(entry)
                self.stale = True
            del self.slow[entry]
        if self.extra and entry in self._ready:
            # Its extra slot leaves or rejoins the L1 limit: an admitted request finds a pod
            # with room, never one beyond it (all full, any pod may be picked: a held one too).
            self._withheld += self.extra if slow else -self.extra
            self.ready_extras += -self.extra if slow else self.extra
            self.moved = True
        if entry in self.others:
            self._recut(entry)
        if self.hold:
            self._thresholds()

    def _thresholds(self) -> None:
        """Each slow pod's queue length to be held up to: hold x (the other pods' slots) x (r - 1)."""
        median = self.median_app_ms
        thresholds = self.thresholds
        thresholds.clear()
        if not self.slow or not median:
            return
        fast = self._fast
        if not fast:
            return  # nowhere else to wait for: slow pods are not held
        # The products worked out once (the same floats: hold x fast is what the expression
        # hold * fast * (r - 1) multiplies first).
        above = HOLD_RATIO * median
        scale = self.hold * fast
        for entry in self.slow:
            app = entry.app_ewma_ms
            if app is not None and app > above:
                thresholds[entry] = scale * (app / median - 1.0)

    def review(self, waiting: int, now: float) -> bool:
        """Hold or release each slow pod for ``waiting`` requests in L1; True when the L1 limit changed."""
        changed = False
        thresholds = self.thresholds
        # Only a pod with a threshold can be held, only a held one released: while every held
        # pod has a threshold, the pods with one (a subsequence of the slow set, kept in its
        # order by _thresholds) are all there is to visit, in the order a visit of all takes.
        held = self.held
        for entry in thresholds if not held or thresholds.keys() >= held else self.slow:
            threshold = thresholds.get(entry)
            hold = (threshold is not None and waiting <= threshold and entry in self._ready
                    and now < self._probe_at.get(entry, now + 1.0))
            if hold == (entry in self.held):
                continue
            changed = True
            if hold:
                self.held.add(entry)
                self._withheld += self._unheld_room(entry)
                if entry in self._cuts:
                    self._recut(entry)
                if entry not in self.full:
                    self._close(entry)
            else:
                self._release(entry)
        return changed

    def _release(self, entry: PodEntry) -> None:
        """A held pod takes requests again (room back, into the open list when it has some)."""
        self.held.discard(entry)
        self._withheld -= self._unheld_room(entry)
        if entry in self.others:
            self._recut(entry)
        self._reopen(entry)

    def _close(self, entry: PodEntry) -> None:
        """``entry`` is full: out of the open list, in O(1)."""
        self.full.add(entry)
        pos = self.order.pop(entry, None)
        if pos is not None:
            last = self.open.pop()
            if last is not entry:
                self.open[pos] = last
                self.order[last] = pos

    def limit(self, configured: int | None) -> int | None:
        """The configured L1 limit, lowered to the ready pods' total capacity (at the last
        :meth:`rebuild`, less the slow pods' extra and the held pods' slots) when each has one."""
        self.moved = False
        return self._lowered(configured, self._withheld)

    def slots_limit(self, configured: int | None) -> int | None:
        """:meth:`limit` without the extra slots still in it: the requests the ready pods start at
        once (what a hedge is judged against: one more would wait in nonna). Changes nothing."""
        return self._lowered(configured, self._withheld + self.ready_extras)

    def _lowered(self, configured: int | None, kept_out: int) -> int | None:
        """``configured`` lowered to the ready pods' total capacity less ``kept_out`` (at least 1),
        when each ready pod has a capacity."""
        total = self._total
        if configured is None or not total:
            return configured
        return min(configured, max(1, total - kept_out))

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

    def _reopen(self, entry: PodEntry) -> None:
        """Into the open list again if ``entry`` is full but has room now."""
        full = self.full
        if full and entry in full and entry.in_flight < self._room(entry, self.caps[entry]):
            full.discard(entry)
            if entry in self._ready:
                self.order[entry] = len(self.open)
                self.open.append(entry)

    def ended(self, entry: PodEntry, now: float = 0.0) -> None:
        """``entry.in_flight`` just went down; sets :attr:`stale` when a report changed its capacity."""
        if self._classes and entry in self.caps:
            if self.hold:
                self._probe_at[entry] = now + HOLD_PROBE_S
            self._classify(entry)
        if self.full and entry in self.full:
            self._reopen(entry)
        shared = self.shared
        if shared is not None:
            # Other balancers' requests at the pod: what its report says it holds, less ours.
            held = shared(entry, now)
            others = 0 if held is None else held - entry.in_flight
            known = self.others
            if others > 0:
                if known.get(entry) != others and entry in self.caps:
                    known[entry] = others
                    self._recut(entry)
            elif known and known.pop(entry, None) is not None:
                self._recut(entry)
        watch = self.watch
        if watch:
            seen = watch.get(entry, _UNWATCHED)
            if seen is not _UNWATCHED and seen != entry.reported_concurrency:
                # The pod told its concurrency (or its first request ended).
                watch[entry] = entry.reported_concurrency
                self.stale = True
