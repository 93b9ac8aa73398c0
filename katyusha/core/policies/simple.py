"""Policies that read only katyusha's own counts: round-robin, random, least-in-flight, p2c."""

from __future__ import annotations

import random
from collections.abc import Sequence

from katyusha.core.loadtable import LoadTable, PodEntry
from katyusha.core.policies.base import Policy, two_indices


class RoundRobin(Policy):
    """Each pick takes the next candidate in turn; blind to load."""

    name = "round-robin"

    def __init__(self, *, rng: random.Random, table: LoadTable):
        super().__init__(rng=rng, table=table)
        self._next = 0

    def pick(self, candidates: Sequence[PodEntry], now: float) -> PodEntry:
        index = self._next % len(candidates)
        self._next = index + 1
        return candidates[index]


class RandomChoice(Policy):
    """A uniformly random candidate; blind to load."""

    name = "random"

    def pick(self, candidates: Sequence[PodEntry], now: float) -> PodEntry:
        return candidates[self.rng.randrange(len(candidates))]


class LeastInFlight(Policy):
    """The candidate with the fewest of katyusha's requests in flight; ties at random.

    HAProxy's leastconn with local counts only: exact for a single katyusha,
    blind to other replicas' load.
    """

    name = "least-in-flight"

    def pick(self, candidates: Sequence[PodEntry], now: float) -> PodEntry:
        best = candidates[0]
        best_load = best.in_flight
        ties: list[PodEntry] | None = None
        for entry in candidates:
            load = entry.in_flight
            if load < best_load:
                best, best_load, ties = entry, load, None
            elif load == best_load and entry is not best:
                if ties is None:
                    ties = [best]
                ties.append(entry)
        if ties is None:
            return best
        return ties[self.rng.randrange(len(ties))]


class PowerOfTwo(Policy):
    """Power of two choices on local in-flight counts, as Knative's activator does.

    Two distinct candidates drawn at random; the less loaded one wins (the
    first drawn on a tie, itself random). Never picks the more loaded of the two.
    """

    name = "p2c"

    def pick(self, candidates: Sequence[PodEntry], now: float) -> PodEntry:
        count = len(candidates)
        if count == 1:
            return candidates[0]
        first, second = two_indices(count, self.rng)
        a = candidates[first]
        b = candidates[second]
        return a if a.in_flight <= b.in_flight else b
