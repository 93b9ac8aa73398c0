"""Policies that read the load pods piggyback on their responses: jsq-piggyback and sed-piggyback.

Both rank candidates by :meth:`LoadTable.estimated_load`, which uses a pod's
fresh report (seeing every katyusha replica's requests and the pod's own
queue) and falls back to katyusha's local counts when the report is stale.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from katyusha.core.errors import ConfigError
from katyusha.core.loadtable import LoadTable, PodEntry
from katyusha.core.policies.base import Policy


class JoinShortestQueue(Policy):
    """The candidate with the least estimated load; ties broken at random."""

    name = "jsq-piggyback"

    def pick(self, candidates: Sequence[PodEntry], now: float) -> PodEntry:
        estimate = self.table.estimated_load
        best = candidates[0]
        best_load = estimate(best, now)
        ties: list[PodEntry] | None = None
        for index in range(1, len(candidates)):
            entry = candidates[index]
            load = estimate(entry, now)
            if load < best_load:
                best, best_load, ties = entry, load, None
            elif load == best_load:
                if ties is None:
                    ties = [best]
                ties.append(entry)
        if ties is None:
            return best
        return ties[self.rng.randrange(len(ties))]


class ShortestExpectedDelay(Policy):
    """The candidate where a new request is expected to finish soonest.

    Expected delay of pod i: ``app_i * (load_i + 1)``, or with a reported
    container concurrency ``c_i > 0``: ``app_i * max(1, (load_i + 1) / c_i)``
    (a request starts at once while a slot is free, else waits for
    ``(load_i + 1) / c_i`` service times). ``load_i`` is the estimated load and
    ``app_i`` the pod's app-time EWMA from ``Server-Timing``; a pod with none
    yet uses the median of the candidates that have one, or ``prior_app_ms``.
    An app time within ``same_speed`` times the median of the candidates'
    (either way) counts as the median itself: pods of one speed are then
    ranked by load alone, as ``jsq-piggyback`` does, instead of by the noise
    in their averages, and only pods clearly slower or faster are weighed by
    their speed. ``same_speed=1`` turns that off. The median is refreshed at
    most every ``median_every_s``. Equal delays go to the lower load, then at
    random.

    Raises ConfigError for a non-positive ``prior_app_ms`` or
    ``median_every_s``, or a ``same_speed`` below 1.
    """

    name = "sed-piggyback"

    def __init__(self, *, rng: random.Random, table: LoadTable, prior_app_ms: float = 10.0,
                 same_speed: float = 1.5, median_every_s: float = 0.1):
        if not isinstance(prior_app_ms, int | float) or not prior_app_ms > 0:
            raise ConfigError("prior_app_ms", f"must be a positive number, got {prior_app_ms!r}")
        if not isinstance(same_speed, int | float) or not same_speed >= 1:
            raise ConfigError("same_speed", f"must be a number >= 1, got {same_speed!r}")
        if not isinstance(median_every_s, int | float) or not median_every_s > 0:
            raise ConfigError("median_every_s", f"must be a positive number, got {median_every_s!r}")
        super().__init__(rng=rng, table=table)
        self.prior_app_ms = float(prior_app_ms)
        self.same_speed = float(same_speed)
        self.median_every_s = float(median_every_s)
        self._median = self.prior_app_ms
        self._median_at = -float("inf")
        self._median_of: Sequence[PodEntry] | None = None

    def fallback_app_ms(self, candidates: Sequence[PodEntry]) -> float:
        """App time assumed for a pod that has reported none: the fleet median, or the prior."""
        known = sorted(e.app_ewma_ms for e in candidates if e.app_ewma_ms is not None)
        if not known:
            return self.prior_app_ms
        middle = len(known) // 2
        if len(known) % 2:
            return known[middle]
        return (known[middle - 1] + known[middle]) / 2.0

    def expected_delay(self, entry: PodEntry, now: float, app_ms: float) -> float:
        """Expected time (ms) for a new request sent to ``entry`` if its app time is ``app_ms``."""
        return _delay(app_ms, self.table.estimated_load(entry, now), entry.reported_concurrency)

    def median_app_ms(self, candidates: Sequence[PodEntry], now: float) -> float:
        """The candidates' median app time (:meth:`fallback_app_ms`), refreshed every ``median_every_s``."""
        if candidates is not self._median_of or now - self._median_at >= self.median_every_s:
            self._median = self.fallback_app_ms(candidates)
            self._median_at = now
            self._median_of = candidates
        return self._median

    def pick(self, candidates: Sequence[PodEntry], now: float) -> PodEntry:
        estimate = self.table.estimated_load
        median = self.median_app_ms(candidates, now)
        low = median / self.same_speed
        high = median * self.same_speed
        best: PodEntry | None = None
        best_delay = best_load = 0.0
        ties: list[PodEntry] | None = None
        for entry in candidates:
            app_ms = entry.app_ewma_ms
            if app_ms is None or low <= app_ms <= high:
                app_ms = median
            load = estimate(entry, now)
            delay = _delay(app_ms, load, entry.reported_concurrency)
            if best is None or delay < best_delay or (delay == best_delay and load < best_load):
                best, best_delay, best_load, ties = entry, delay, load, None
            elif delay == best_delay and load == best_load:
                if ties is None:
                    ties = [best]
                ties.append(entry)
        assert best is not None
        if ties is None:
            return best
        return ties[self.rng.randrange(len(ties))]


def _delay(app_ms: float, load: float, concurrency: int | None) -> float:
    if concurrency:
        waves = (load + 1.0) / concurrency
        return app_ms * (waves if waves > 1.0 else 1.0)
    return app_ms * (load + 1.0)
