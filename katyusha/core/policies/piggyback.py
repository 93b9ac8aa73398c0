"""Policies that read the load pods piggyback on their responses: jsq-piggyback and sed-piggyback.

Both rank candidates by :meth:`LoadTable.estimated_load`, which uses a pod's
fresh report (seeing every katyusha replica's requests and the pod's own
queue) and falls back to katyusha's local counts when the report is stale.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from katyusha.core.errors import ConfigError
from katyusha.core.loadtable import SPEED_MEMORY_S, LoadTable, PodEntry
from katyusha.core.policies.base import Policy


class JoinShortestQueue(Policy):
    """The candidate with the least estimated load; ties broken at random.

    A pod with no fresh report (no nonna in front of it, or none lately) is
    ranked by what katyusha sees of it: its load (its in-flight count) weighed
    by its speed, ``speed * (load + 1) - 1``, where ``speed`` is its latency
    when sent a request with none other of ours in flight (``idle_latency_ms``)
    over the candidates' median. Speeds within ``same_speed`` (1.5) of the
    median count as 1: pods of one speed are ranked by load alone, and only a
    pod clearly slower (or faster) weighs differently, so a pod four times
    slower gets a request only when the others hold three or more each. A speed
    not measured for 5 s counts as 1 (the pod is measured again). Pods that
    report are ranked by their estimated load, as before: nonna's report and
    per-pod capacity already hold requests back from a slow pod.
    """

    name = "jsq-piggyback"

    def __init__(self, *, rng: random.Random, table: LoadTable, same_speed: float = 1.5,
                 median_every_s: float = 0.1):
        if not isinstance(same_speed, int | float) or not same_speed >= 1:
            raise ConfigError("same_speed", f"must be a number >= 1, got {same_speed!r}")
        super().__init__(rng=rng, table=table)
        self.same_speed = float(same_speed)
        self.median_every_s = float(median_every_s)
        self._median: float | None = None
        self._median_at = -float("inf")
        self._median_of: Sequence[PodEntry] | None = None

    def median_speed_ms(self, candidates: Sequence[PodEntry], now: float) -> float | None:
        """The median of the candidates' recent own-speed estimates (refreshed every ``median_every_s``)."""
        if candidates is not self._median_of or now - self._median_at >= self.median_every_s:
            known = sorted(speed for entry in candidates if (speed := _speed(entry, now)) is not None)
            self._median = _median(known) if known else None
            self._median_at = now
            self._median_of = candidates
        return self._median

    def pick(self, candidates: Sequence[PodEntry], now: float) -> PodEntry:
        table = self.table
        estimate = table.estimated_load
        stale_after = table.stale_after_s
        median: float | None = -1.0  # not looked up yet
        best: PodEntry | None = None
        best_key = best_load = 0.0
        ties: list[PodEntry] | None = None
        for entry in candidates:
            load = estimate(entry, now)
            key = load
            reported_at = entry.reported_at
            if reported_at is None or now - reported_at > stale_after:
                speed = _speed(entry, now)
                if speed is not None:
                    if median == -1.0:
                        median = self.median_speed_ms(candidates, now)
                    if median:
                        ratio = speed / median
                        if ratio > self.same_speed or ratio * self.same_speed < 1.0:
                            key = ratio * (load + 1.0) - 1.0
            if best is None or key < best_key or (key == best_key and load < best_load):
                best, best_key, best_load, ties = entry, key, load, None
            elif key == best_key and load == best_load:
                if ties is None:
                    ties = [best]
                ties.append(entry)
        assert best is not None
        if ties is None:
            return best
        return ties[self.rng.randrange(len(ties))]


def _speed(entry: PodEntry, now: float) -> float | None:
    speed = entry.idle_latency_ms
    if speed is None or now - entry.idle_latency_at > SPEED_MEMORY_S:
        return None
    return speed


def _median(values: list[float]) -> float:
    middle = len(values) // 2
    if len(values) % 2:
        return values[middle]
    return (values[middle - 1] + values[middle]) / 2.0


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
        return _median(known) if known else self.prior_app_ms

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
