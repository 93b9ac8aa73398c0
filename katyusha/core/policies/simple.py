"""Policies that read only katyusha's own counts: round-robin, random, least-in-flight, p2c."""

from __future__ import annotations

import random
from collections.abc import Sequence

from katyusha.core.loadtable import LoadTable, PodEntry
from katyusha.core.policies.base import MetricPolicy, Policy, Trace
from katyusha.core.policies.metrics import InFlight
from katyusha.core.policies.selectors import Lowest, TwoChoices


class RoundRobin(Policy):
    """Each pick takes the next candidate in turn; blind to load (a trace stays empty)."""

    name = "round-robin"

    def __init__(self, *, rng: random.Random, table: LoadTable):
        super().__init__(rng=rng, table=table)
        self._next = 0

    def pick(self, candidates: Sequence[PodEntry], now: float, trace: Trace | None = None
             ) -> PodEntry:
        index = self._next % len(candidates)
        self._next = index + 1
        return candidates[index]


class RandomChoice(Policy):
    """A uniformly random candidate; blind to load (a trace stays empty)."""

    name = "random"

    def pick(self, candidates: Sequence[PodEntry], now: float, trace: Trace | None = None
             ) -> PodEntry:
        return candidates[self.rng.randrange(len(candidates))]


class LeastInFlight(MetricPolicy):
    """The candidate with the fewest of katyusha's requests in flight; ties at random.

    HAProxy's leastconn with local counts only: exact for a single katyusha,
    blind to other replicas' load.
    """

    name = "least-in-flight"

    def __init__(self, *, rng: random.Random, table: LoadTable):
        metric = InFlight()
        super().__init__(rng=rng, table=table, metric=metric, selector=Lowest(metric, rng, table))


class PowerOfTwo(MetricPolicy):
    """Power of two choices on local in-flight counts, as Knative's activator does.

    Two distinct candidates drawn at random; the less loaded one wins (the
    first drawn on a tie, itself random). Never picks the more loaded of the two.
    """

    name = "p2c"

    def __init__(self, *, rng: random.Random, table: LoadTable):
        metric = InFlight()
        super().__init__(rng=rng, table=table, metric=metric, selector=TwoChoices(metric, rng))
