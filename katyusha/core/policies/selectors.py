"""Selectors: how a policy chooses among candidates by their loads, whatever the loads mean.

* :class:`Lowest`: the lowest load, ties at random (least-in-flight,
  jsq-piggyback, sed-piggyback);
* :class:`TwoChoices`: power of two choices (p2c, peak-ewma, prequal's
  fallback);
* :func:`hot_cold`: Prequal's hot-cold lexicographic rule over probes.

Each reads loads only through a metric's ``load(entry, now)`` (metrics.py),
or, for :class:`Lowest` over the whole ready set of a large fleet, through
the metric's index (index.py), which gives the same answer without a scan.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

from katyusha.core.loadtable import LoadTable, PodEntry
from katyusha.core.policies.base import Trace
from katyusha.core.policies.metrics import Load

_NO_PREPARE = Load.prepare

# From this many candidates, Lowest answers from an index when the candidates
# are the table's ready list: below it a scan is cheaper than keeping an index.
INDEX_FROM = 32
# Lowest.pick_except serves "ready minus a few" from the index while the
# excluded pods are at most this share of the ready ones; past it, or when the
# walk past excluded pods looks at more than this share of the pods, it scans.
EXCEPT_SHARE = 0.25
# A trace lists at most this many of the candidates compared, plus the choice.
TRACE_LIMIT = 8


def two_indices(count: int, rng: random.Random) -> tuple[int, int]:
    """Two distinct random indices below ``count`` (which must be at least 2)."""
    first = rng.randrange(count)
    second = rng.randrange(count - 1)
    if second >= first:
        second += 1
    return first, second


def lowest(candidates: Sequence[PodEntry], load: Callable, now: float, rng: random.Random,
           trace: Trace | None = None) -> PodEntry:
    """The candidate of least ``load(entry, now)``; among equals, one at random.

    Draws from ``rng`` only on a tie: ``randrange(number of tied)``, the tied
    taken in candidate order.
    """
    best = candidates[0]
    best_load = load(best, now)
    ties: list[PodEntry] | None = None
    for position in range(1, len(candidates)):
        entry = candidates[position]
        value = load(entry, now)
        if value < best_load:
            best, best_load, ties = entry, value, None
        elif value == best_load:
            if ties is None:
                ties = [best]
            ties.append(entry)
    chosen = best if ties is None else ties[rng.randrange(len(ties))]
    if trace is not None:
        shown = candidates[:TRACE_LIMIT]
        trace.extend((entry, load(entry, now)) for entry in shown)
        if chosen not in shown:
            trace.append((chosen, best_load))
    return chosen


class Lowest:
    """The candidate with the lowest load, ties at random, by ``metric``.

    Over ``table.ready()`` of at least :data:`INDEX_FROM` pods the answer
    comes from the metric's index (when it has one), which keeps the
    candidates' order among ties and so draws and decides as the scan would.
    The chosen pod's load is checked against the index's (one metric call):
    a mismatch means a load input was written behind the table's back; the
    pod is re-keyed and counted in the index's ``repairs``.
    """

    def __init__(self, metric, rng: random.Random, table: LoadTable):
        self.metric = metric
        self.rng = rng
        self.table = table
        self._index = None
        self._indexable = True
        self._prepare = _prepare_of(metric)

    def pick(self, candidates: Sequence[PodEntry], now: float, trace: Trace | None = None
             ) -> PodEntry:
        if self._indexable and len(candidates) >= INDEX_FROM and candidates is self.table.ready():
            index = self._index
            if index is None:
                index = self._index = self.metric.index(self.table)
                self._indexable = index is not None
            for _ in range(3 if index is not None else 0):
                found = index.lowest(candidates, now)
                if found is None:
                    break
                ties, value = found
                position = ties[self.rng.randrange(len(ties))] if len(ties) > 1 else ties[0]
                chosen = candidates[position]
                if self.metric.load(chosen, now) != value:
                    # Its load changed without the table telling its listeners (a
                    # field written outside LoadTable's methods): left alone, the
                    # index would send every pick to it. Re-key it, look again.
                    index.repairs += 1
                    index.touch(chosen)
                    continue
                if trace is not None:
                    shown = [candidates[p] for p in ties[:TRACE_LIMIT]]
                    trace.extend((entry, value) for entry in shown)
                    if chosen not in shown:
                        trace.append((chosen, value))
                return chosen
        if self._prepare is not None:
            self._prepare(candidates, now)
        if trace is None and len(candidates) == 1:
            # What lowest() answers for one candidate (no tie, no draw), without computing its load.
            return candidates[0]
        return lowest(candidates, self.metric.load, now, self.rng, trace)

    def pick_except(self, candidates: Sequence[PodEntry], ready: list[PodEntry], excluded,
                    order: dict[PodEntry, int] | None, now: float, trace: Trace | None = None
                    ) -> PodEntry:
        """``pick(candidates, now, trace)``, where ``candidates`` are ``ready`` without ``excluded``.

        ``ready`` must be ``table.ready()``; ``excluded`` a set of pods (those
        not ready are ignored); ``order`` maps each candidate to its place in
        ``candidates`` (None: they are in ``ready``'s order). While the
        excluded pods are few (:data:`EXCEPT_SHARE`) the answer comes from
        the index, walking its keys upward past groups that hold only
        excluded pods; the lowest group's other pods, put in ``candidates``'
        order, take the same draw as the scan's ties, so the choice is the
        scan's. Otherwise, or for a metric whose index cannot leave pods out
        (sed's median is the candidates'), ``candidates`` are scanned.
        """
        count = len(ready)
        if (self._indexable and self._prepare is None and len(candidates) >= INDEX_FROM
                and len(excluded) <= EXCEPT_SHARE * count and ready is self.table.ready()):
            index = self._index
            if index is None:
                index = self._index = self.metric.index(self.table)
                self._indexable = index is not None
            walk = getattr(index, "lowest_except", None)
            budget = int(EXCEPT_SHARE * count)
            for _ in range(3 if walk is not None else 0):
                found = walk(ready, excluded, now, budget)
                if found is None:
                    break
                ties, value = found
                tied = None
                if len(ties) == 1:
                    chosen = ready[ties[0]]
                elif order is None:
                    chosen = ready[ties[self.rng.randrange(len(ties))]]
                else:
                    # The draw's pod is the tied one at that rank in candidates'
                    # order: their places, sorted as ints (no key function, no pod list).
                    places = sorted(map(order.__getitem__, map(ready.__getitem__, ties)))
                    chosen = candidates[places[self.rng.randrange(len(places))]]
                    if trace is not None:
                        tied = [candidates[place] for place in places]
                if trace is not None and tied is None and len(ties) > 1:
                    tied = [ready[p] for p in ties]
                if self.metric.load(chosen, now) != value:
                    index.repairs += 1
                    index.touch(chosen)
                    continue
                if trace is not None:
                    shown = tied[:TRACE_LIMIT] if tied is not None else [chosen]
                    trace.extend((entry, value) for entry in shown)
                    if chosen not in shown:
                        trace.append((chosen, value))
                return chosen
        return self.pick(candidates, now, trace)


class TwoChoices:
    """Power of two choices by ``metric``: two distinct random candidates, the lower load wins.

    The first drawn wins a tie (itself random); never the higher of the two.
    """

    def __init__(self, metric, rng: random.Random):
        self.metric = metric
        self.rng = rng
        self._prepare = _prepare_of(metric)

    def pick(self, candidates: Sequence[PodEntry], now: float, trace: Trace | None = None
             ) -> PodEntry:
        metric = self.metric
        if self._prepare is not None:
            self._prepare(candidates, now)
        count = len(candidates)
        if count == 1:
            if trace is not None:
                trace.append((candidates[0], metric.load(candidates[0], now)))
            return candidates[0]
        first, second = two_indices(count, self.rng)
        a = candidates[first]
        b = candidates[second]
        load_a = metric.load(a, now)
        load_b = metric.load(b, now)
        if trace is not None:
            trace.append((a, load_a))
            trace.append((b, load_b))
        return a if load_a <= load_b else b


def _prepare_of(metric) -> Callable | None:
    """The metric's per-pick ``prepare``, or None when it has none (one call saved a pick)."""
    prepare = getattr(metric, "prepare", None)
    if prepare is None or getattr(prepare, "__func__", None) is _NO_PREPARE:
        return None
    return prepare


def hot_cold(items: Sequence[tuple[PodEntry, object]], threshold: float, rng: random.Random,
             trace: Trace | None = None) -> tuple[PodEntry, object]:
    """Prequal's choice among ``(pod, probe)`` items, each probe with ``rif`` and ``latency_ms``.

    A probe is cold when its ``rif`` is at most ``threshold``. Among the cold,
    the lowest ``latency_ms`` wins, then the lower ``rif``, then one at random
    (``randrange(number tied)``, in item order); when every item is hot, the
    first of lowest ``rif``. ``items`` must not be empty.
    """
    cold: list[tuple[PodEntry, object]] = []
    hot: tuple[PodEntry, object] | None = None
    for item in items:
        probe = item[1]
        if probe.rif <= threshold:
            if not cold:
                cold.append(item)
                continue
            best = cold[0][1]
            if probe.latency_ms < best.latency_ms or (
                probe.latency_ms == best.latency_ms and probe.rif < best.rif
            ):
                cold = [item]
            elif probe.latency_ms == best.latency_ms and probe.rif == best.rif:
                cold.append(item)
        elif not cold and (hot is None or probe.rif < hot[1].rif):
            hot = item
    if cold:
        chosen = cold[0] if len(cold) == 1 else cold[rng.randrange(len(cold))]
    else:
        assert hot is not None
        chosen = hot
    if trace is not None:
        shown = items[:TRACE_LIMIT]
        trace.extend((entry, (probe.rif, probe.latency_ms)) for entry, probe in shown)
        if chosen not in shown:
            trace.append((chosen[0], (chosen[1].rif, chosen[1].latency_ms)))
    return chosen
