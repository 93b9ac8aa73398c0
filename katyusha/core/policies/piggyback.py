"""Policies that read the load pods piggyback on their responses: jsq-piggyback and sed-piggyback.

Both pick the lowest by a metric built on :meth:`LoadTable.estimated_load`,
which uses a pod's fresh report (seeing every katyusha replica's requests and
the pod's own queue) and falls back to katyusha's local counts when the
report is stale.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from katyusha.core.loadtable import LoadTable, PodEntry
from katyusha.core.policies.base import MetricPolicy, Trace
from katyusha.core.policies.metrics import ExpectedDelay, SpeedWeightedLoad
from katyusha.core.policies.selectors import Lowest


class JoinShortestQueue(MetricPolicy):
    """The candidate with the least estimated load, a pod without a fresh report weighed by its speed.

    The metric is :class:`~katyusha.core.policies.metrics.SpeedWeightedLoad`:
    a pod that reports (nonna) is ranked by its estimated load; one that does
    not by its in-flight count weighed by its own measured speed over the
    median pod's, so a slow pod without nonna gets less traffic. Ties broken at
    random. Before each pick the median is refreshed when due, and the pods
    whose key it moves are re-keyed in the selector's index (only pods with no
    fresh report: none in a fleet where every pod reports).
    """

    name = "jsq-piggyback"

    def __init__(self, *, rng: random.Random, table: LoadTable, same_speed: float = 1.5,
                 median_every_s: float = 0.1):
        metric = SpeedWeightedLoad(table, same_speed=same_speed, median_every_s=median_every_s)
        super().__init__(rng=rng, table=table, metric=metric, selector=Lowest(metric, rng, table))
        self._refresh = metric.refresh

    def pick(self, candidates: Sequence[PodEntry], now: float, trace: Trace | None = None
             ) -> PodEntry:
        moved = self._refresh(now)  # once per pick: the keys the median moves are re-keyed first
        if moved:
            self._rekey(moved)
        return self.selector.pick(candidates, now, trace)

    def pick_except(self, candidates: Sequence[PodEntry], ready: list[PodEntry], excluded,
                    order: dict[PodEntry, int] | None, now: float, trace: Trace | None = None
                    ) -> PodEntry:
        moved = self._refresh(now)  # once per pick: the keys the median moves are re-keyed first
        if moved:
            self._rekey(moved)
        return self.selector.pick_except(candidates, ready, excluded, order, now, trace)

    def _rekey(self, moved: list[PodEntry]) -> None:
        index = self.selector._index
        if index is not None:
            for entry in moved:
                index.touch(entry)


class ShortestExpectedDelay(MetricPolicy):
    """The candidate where a new request is expected to finish soonest.

    The lowest :class:`~katyusha.core.policies.metrics.ExpectedDelay`:
    ``expected_delay_ms(app, load, concurrency)`` with the pod's app-time
    EWMA (the candidates' median for a pod with none, or within
    ``same_speed`` of the median), then the lower load, then at random.
    Raises ConfigError for a non-positive ``prior_app_ms`` or
    ``median_every_s``, or a ``same_speed`` below 1.
    """

    name = "sed-piggyback"

    def __init__(self, *, rng: random.Random, table: LoadTable, prior_app_ms: float = 10.0,
                 same_speed: float = 1.5, median_every_s: float = 0.1):
        metric = ExpectedDelay(table, prior_app_ms=prior_app_ms, same_speed=same_speed,
                               median_every_s=median_every_s)
        super().__init__(rng=rng, table=table, metric=metric, selector=Lowest(metric, rng, table))

    def fallback_app_ms(self, candidates: Sequence[PodEntry]) -> float:
        """App time assumed for a pod that has reported none: the candidates' median, or the prior."""
        return self.metric.fallback_app_ms(candidates)

    def median_app_ms(self, candidates: Sequence[PodEntry], now: float) -> float:
        """The candidates' median app time, refreshed every ``median_every_s``."""
        return self.metric.median_app_ms(candidates, now)
