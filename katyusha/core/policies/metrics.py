"""Load metrics: one value per pod, only ever compared (lower is preferred), as tower's ``Load``.

A metric says what a pod's load is; a selector (selectors.py) decides by it.
Each metric offers :meth:`Load.load`; the rest is optional:

* ``prepare(candidates, now)`` runs once per pick before any ``load`` (sed's
  fleet median);
* ``observe(...)`` learns from a response (peak-EWMA's latency estimates);
* ``index(table)`` returns an incremental index over the table's ready pods
  (index.py), so "lowest" need not scan them all; None when the metric cannot
  be indexed, because its values drift with time on every pod (peak-EWMA).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import katyusha.core.policies.index as _index
from katyusha.core.delay import expected_delay_ms
from katyusha.core.errors import ConfigError
from katyusha.core.feedback import Feedback
from katyusha.core.loadtable import SPEED_MEMORY_S, LoadTable, PodEntry


class Load:
    """Base of the metrics: :meth:`load` is the only method a selector needs."""

    def load(self, entry: PodEntry, now: float):
        """The pod's load at ``now``: a number, or a tuple compared in order."""
        raise NotImplementedError

    def prepare(self, candidates: Sequence[PodEntry], now: float) -> None:
        """Called once per pick, before any :meth:`load`, with that pick's candidates."""

    def observe(self, entry: PodEntry, now: float, latency_s: float,
                feedback: Feedback | None) -> None:
        """Learn from a response of ``entry`` (the table is already updated)."""

    def index(self, table: LoadTable):
        """An index of the table's ready pods by this metric, or None (then picks scan)."""
        return None

    @property
    def learns(self) -> bool:
        """False when :meth:`observe` does nothing (a caller may then skip it)."""
        return type(self).observe is not Load.observe


class InFlight(Load):
    """katyusha's own requests in flight to the pod: exact, blind to other replicas."""

    def load(self, entry: PodEntry, now: float) -> int:
        return entry.in_flight

    def index(self, table: LoadTable):
        return _index.LowestIndex(table, self, timed=False)


class EstimatedLoad(Load):
    """:meth:`LoadTable.estimated_load`: the pod's piggybacked report, else local counts."""

    def __init__(self, table: LoadTable):
        self.load = table.estimated_load

    def index(self, table: LoadTable):
        return _index.LowestIndex(table, self, timed=True)


class SpeedWeightedLoad(Load):
    """jsq-piggyback's metric: the estimated load, a pod without a fresh report's weighed by its speed.

    A pod with a fresh report is keyed by its estimated load: nonna's report
    and per-pod capacity already hold requests back from a slow pod. A pod
    with none (no nonna in front of it, or none lately) is ranked by what
    katyusha sees of it: its load (its in-flight count) weighed by its speed,
    ``ratio * (load + 1) - 1``, where ``ratio`` is its latency when sent a
    request with none other of ours in flight (``idle_latency_ms``) over the
    median of the ready pods' (refreshed by :meth:`refresh` every
    ``median_every_s``, moved when it changed by more than a tenth). Ratios within ``same_speed`` of 1 count as 1: pods of
    one speed are ranked by load alone, and a pod four times slower gets a
    request only when the others hold three or more each. A speed not measured
    for ``SPEED_MEMORY_S`` counts as 1 (the pod is measured again). Raises ConfigError for ``same_speed`` below
    1 or a non-positive ``median_every_s``.
    """

    def __init__(self, table: LoadTable, *, same_speed: float = 1.5, median_every_s: float = 0.1):
        if not isinstance(same_speed, int | float) or not same_speed >= 1:
            raise ConfigError("same_speed", f"must be a number >= 1, got {same_speed!r}")
        if not isinstance(median_every_s, int | float) or not median_every_s > 0:
            raise ConfigError("median_every_s", f"must be a positive number, got {median_every_s!r}")
        self.table = table
        self.same_speed = float(same_speed)
        self.median_every_s = float(median_every_s)
        self.median: float | None = None
        self._median_at = -math.inf
        self._weighed: list[PodEntry] = []
        self._weighing = False
        self._stale_after = table.stale_after_s
        self._estimate = table.estimated_load
        # While no pod is weighed (see refresh), a pod's load is its estimated load: the
        # table's method itself, one call less for each key the index works out.
        self.load = self._estimate

    def refresh(self, now: float) -> Sequence[PodEntry]:
        """Recompute the median speed when due; returns the pods whose key that may have changed
        (an empty tuple, the same one each time, when it was not due: most picks).

        The median in force moves only when the new one differs from it by more
        than a tenth, so keys stay put while it jitters; pods whose speed was
        just forgotten are returned too.
        """
        if now - self._median_at < self.median_every_s and now >= self._median_at:
            return ()
        self._median_at = now
        # Only the pods with a known speed, not every ready pod (a pod gets one when sent a
        # request alone: few have a recent one). The weighed (no fresh report) are only
        # re-keyed, so their order does not matter.
        timed = self.table.timed(now)
        stale_after = self._stale_after
        known = sorted([entry.idle_latency_ms for entry in timed])
        weighed = [entry for entry in timed if entry.reported_at is None or now - entry.reported_at > stale_after]
        middle = median(len(known), known.__getitem__, 0.0) or None
        old = self.median
        forgotten = [entry for entry in self._weighed if _speed(entry, now) is None]
        self._weighed = weighed
        moved = middle is None or old is None or abs(middle - old) > 0.1 * old
        if moved:
            self.median = middle
        # While no pod without a report has a speed, every key is the estimated load.
        weighing = bool(weighed) and self.median is not None
        if moved or weighing != self._weighing:
            self._weighing = weighing
            self.load = self._weighed_load if weighing else self._estimate
            return weighed + forgotten
        return forgotten

    # No prepare(): the policy calls refresh() once before each pick, scan or index
    # (JoinShortestQueue.pick), since the index must hear of the keys it moves.

    def _weighed_load(self, entry: PodEntry, now: float) -> float:
        """:meth:`load` while some pod is weighed."""
        load = self._estimate(entry, now)
        reported_at = entry.reported_at
        if reported_at is not None and now - reported_at <= self._stale_after:
            return load
        middle = self.median
        speed = _speed(entry, now)
        if speed is None or not middle:
            return load
        ratio = speed / middle
        if ratio > self.same_speed or ratio * self.same_speed < 1.0:
            return ratio * (load + 1.0) - 1.0
        return load

    def index(self, table: LoadTable):
        return _index.LowestIndex(table, self, timed=True)


def _speed(entry: PodEntry, now: float) -> float | None:
    speed = entry.idle_latency_ms
    if speed is None or now - entry.idle_latency_at > SPEED_MEMORY_S:
        return None
    return speed


class ExpectedDelay(Load):
    """``(expected delay in ms, estimated load)`` of a new request: sed's metric.

    The delay is :func:`katyusha.core.delay.expected_delay_ms` of the pod's
    app time, estimated load and reported concurrency. A pod with no app time,
    or one within ``same_speed`` times the candidates' median either way,
    counts as the median (refreshed by :meth:`prepare` at most every
    ``median_every_s``, or when the candidates change): pods of one speed are
    then ranked by load, not by noise in their averages. The median of no
    known app time is ``prior_app_ms``. Raises ConfigError for a non-positive
    ``prior_app_ms`` or ``median_every_s``, or a ``same_speed`` below 1.
    """

    def __init__(self, table: LoadTable, *, prior_app_ms: float = 10.0,
                 same_speed: float = 1.5, median_every_s: float = 0.1):
        if not isinstance(prior_app_ms, int | float) or not prior_app_ms > 0:
            raise ConfigError("prior_app_ms", f"must be a positive number, got {prior_app_ms!r}")
        if not isinstance(same_speed, int | float) or not same_speed >= 1:
            raise ConfigError("same_speed", f"must be a number >= 1, got {same_speed!r}")
        if not isinstance(median_every_s, int | float) or not median_every_s > 0:
            raise ConfigError("median_every_s", f"must be a positive number, got {median_every_s!r}")
        self.table = table
        self.prior_app_ms = float(prior_app_ms)
        self.same_speed = float(same_speed)
        self.median_every_s = float(median_every_s)
        self.median = self.prior_app_ms
        self.band = (self.median / self.same_speed, self.median * self.same_speed)
        self._median_at = -math.inf
        self._median_of: Sequence[PodEntry] | None = None

    def fallback_app_ms(self, candidates: Sequence[PodEntry]) -> float:
        """The candidates' median app time, or ``prior_app_ms`` when none has one."""
        known = sorted(e.app_ewma_ms for e in candidates if e.app_ewma_ms is not None)
        return median(len(known), known.__getitem__, self.prior_app_ms)

    def median_app_ms(self, candidates: Sequence[PodEntry], now: float,
                      known: tuple[int, Callable[[int], float]] | None = None) -> float:
        """The candidates' median app time, recomputed when due.

        ``known`` is ``(count, at)``: the candidates' app times already sorted,
        read by ``at(i)`` (an index's), instead of sorting them here.
        """
        if candidates is not self._median_of or now - self._median_at >= self.median_every_s:
            if known is None:
                self.median = self.fallback_app_ms(candidates)
            else:
                self.median = median(known[0], known[1], self.prior_app_ms)
            self.band = (self.median / self.same_speed, self.median * self.same_speed)
            self._median_at = now
            self._median_of = candidates
        return self.median

    def prepare(self, candidates: Sequence[PodEntry], now: float) -> None:
        self.median_app_ms(candidates, now)

    def load(self, entry: PodEntry, now: float) -> tuple[float, float]:
        app_ms = entry.app_ewma_ms
        low, high = self.band
        if app_ms is None or low <= app_ms <= high:
            app_ms = self.median
        load = self.table.estimated_load(entry, now)
        return expected_delay_ms(app_ms, load, entry.reported_concurrency), load

    def index(self, table: LoadTable):
        return _index.DelayIndex(table, self)


class PeakEwmaCost(Load):
    """Linkerd's and Finagle's cost: peak-EWMA latency (ms) times ``in_flight + 1``.

    The latency estimate jumps up at once to any slower sample (the "peak")
    and otherwise moves toward new samples with time constant ``decay_s``: a
    sample ``dt`` seconds after the previous one has weight
    ``1 - exp(-dt / decay_s)``. With no news it fades toward zero at the same
    rate, so a pod that was slow once is tried again later. A pod with no
    sample yet has ``default_rtt_ms``. Raises ConfigError for a non-positive
    ``decay_s`` or ``default_rtt_ms``.
    """

    def __init__(self, table: LoadTable, *, decay_s: float = 10.0, default_rtt_ms: float = 10.0):
        if not isinstance(decay_s, int | float) or not decay_s > 0:
            raise ConfigError("decay_s", f"must be a positive number of seconds, got {decay_s!r}")
        if not isinstance(default_rtt_ms, int | float) or not default_rtt_ms > 0:
            raise ConfigError("default_rtt_ms", f"must be a positive number, got {default_rtt_ms!r}")
        self.table = table
        self.decay_s = float(decay_s)
        self.default_rtt_ms = float(default_rtt_ms)
        # Per entry: [estimate ms, when]. Keyed by entry object, so a pod that
        # leaves and comes back starts afresh.
        self._estimates: dict[PodEntry, list[float]] = {}
        self._version = table.version

    def latency_ms(self, entry: PodEntry, now: float) -> float:
        """The pod's latency estimate at ``now``, decayed since its last sample."""
        estimate = self._estimates.get(entry)
        if estimate is None:
            return self.default_rtt_ms
        rtt_ms, stamp = estimate
        elapsed = now - stamp
        if elapsed <= 0:
            return rtt_ms
        return rtt_ms * math.exp(-elapsed / self.decay_s)

    def load(self, entry: PodEntry, now: float) -> float:
        return self.latency_ms(entry, now) * (entry.in_flight + 1)

    def observe(self, entry: PodEntry, now: float, latency_s: float,
                feedback: Feedback | None) -> None:
        if self._version != self.table.version:
            self._version = self.table.version
            known = set(self.table.pods())
            for gone in [e for e in self._estimates if e not in known]:
                del self._estimates[gone]
        sample = latency_s * 1000.0
        if not sample >= 0 or not math.isfinite(sample):
            return
        estimate = self._estimates.get(entry)
        if estimate is None:
            self._estimates[entry] = [sample, now]
            return
        elapsed = now - estimate[1]
        weight = math.exp(-elapsed / self.decay_s) if elapsed > 0 else 1.0
        current = estimate[0] * weight
        estimate[0] = sample if sample > current else current + sample * (1.0 - weight)
        if now > estimate[1]:
            estimate[1] = now


def median(count: int, at: Callable[[int], float], empty: float) -> float:
    """The median of ``count`` sorted values read by ``at(i)``; ``empty`` when there are none."""
    if not count:
        return empty
    middle = count // 2
    if count % 2:
        return at(middle)
    return (at(middle - 1) + at(middle)) / 2.0
