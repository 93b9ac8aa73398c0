"""Prequal (Wydrowski et al., NSDI 2024): hot-cold lexicographic choice over a pool of recent probes.

The policy keeps a small pool of recent load probes, at most one per pod:
requests in flight (RIF) and the latency a new request can expect there.
Probes come from two places:

* piggybacking: every response's ``Nonna-Queue-Length + Nonna-In-Flight`` is
  the pod's RIF, and the expected latency is the pod's smoothed app time
  (``PodEntry.app_ewma_ms``) times ``(RIF + 1) / concurrency``, at least one
  app time (a response without feedback gives katyusha's own in-flight count
  and latency EWMA instead);
* probing: the live proxy asks nonna's admin ``/stats`` of a few pods off the
  request path (which ones: :meth:`Prequal.probe_targets`) and reports each
  answer (its RIF and ``latency_ms``) with :meth:`Prequal.observe_probe`.

A probe ages out after ``max_age_s``; when the pool is full the oldest probe
leaves. To pick, a probe is *hot* when its RIF is above the ``hot_quantile``
quantile of the RIFs in the pool. Among the candidates' cold probes the lowest
latency wins (then the lower RIF, then at random); when all of them are hot,
the lowest RIF wins. A pick adds one request to the chosen probe: its RIF
grows by one and its latency by what one more request costs there, so a burst
between two probes spreads over the cold pods instead of all landing on the
one that looked best. A candidate with no live probe competes with a stand-in
built from the load table (its estimated load and app time; a pod never timed
looks idle and fast, so it is tried): every such candidate while there are at
most :data:`SCAN_UP_TO`, else :data:`SAMPLE` of them drawn at random, so a
pick's work does not grow with the fleet. With an empty pool, the pick falls
back to power of two choices on local in-flight counts.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

from katyusha.core.delay import expected_delay_ms
from katyusha.core.errors import ConfigError
from katyusha.core.feedback import Feedback
from katyusha.core.loadtable import LoadTable, PodEntry
from katyusha.core.policies.base import Policy, Trace
from katyusha.core.policies.metrics import InFlight
from katyusha.core.policies.selectors import TwoChoices, hot_cold

# Up to this many candidates, every one without a live probe gets a stand-in;
# beyond, SAMPLE of them drawn at random do.
SCAN_UP_TO = 32
SAMPLE = 16


class Probe:
    """One pod's load as last probed: requests in flight, expected latency (ms), when.

    ``step_ms`` is what one more request adds to ``latency_ms``.
    """

    __slots__ = ("rif", "latency_ms", "step_ms", "at")

    def __init__(self, rif: int, latency_ms: float, step_ms: float, at: float):
        self.rif = rif
        self.latency_ms = latency_ms
        self.step_ms = step_ms
        self.at = at


class Prequal(Policy):
    """Hot-cold lexicographic selection on probed RIF and latency; see the module docstring."""

    name = "prequal"

    def __init__(
        self,
        *,
        rng: random.Random,
        table: LoadTable,
        pool_size: int = 16,
        max_age_s: float = 1.0,
        hot_quantile: float = 0.84,
    ):
        if isinstance(pool_size, bool) or not isinstance(pool_size, int) or pool_size < 1:
            raise ConfigError("pool_size", f"must be an integer >= 1, got {pool_size!r}")
        if not isinstance(max_age_s, int | float) or not max_age_s > 0:
            raise ConfigError("max_age_s", f"must be a positive number of seconds, got {max_age_s!r}")
        if not isinstance(hot_quantile, int | float) or not 0 < hot_quantile <= 1:
            raise ConfigError("hot_quantile", f"must be in (0, 1], got {hot_quantile!r}")
        super().__init__(rng=rng, table=table)
        self.pool_size = pool_size
        self.max_age_s = float(max_age_s)
        self.hot_quantile = float(hot_quantile)
        # Insertion order is age order: a refreshed probe is moved to the end.
        self._pool: dict[PodEntry, Probe] = {}
        self._fallback = TwoChoices(InFlight(), rng)

    # -- learning --------------------------------------------------------

    def observe_probe(
        self, entry: PodEntry, now: float, rif: int, latency_ms: float,
        step_ms: float | None = None,
    ) -> None:
        """Record a probe of ``entry`` taken at ``now``; negative or non-finite values are ignored.

        ``latency_ms`` is what a new request can expect on the pod;
        ``step_ms`` what each further request adds to it (by default
        ``latency_ms / (rif + 1)``, right for a pod that serves one at a time).
        The live proxy calls this with what nonna's admin ``/stats`` reported.
        """
        if not rif >= 0 or not latency_ms >= 0 or not math.isfinite(latency_ms):
            return
        if step_ms is None or not step_ms >= 0 or not math.isfinite(step_ms):
            step_ms = latency_ms / (rif + 1)
        pool = self._pool
        probe = pool.pop(entry, None)
        if probe is None:
            self._expire(now)
            if len(pool) >= self.pool_size:
                del pool[next(iter(pool))]
            probe = Probe(rif, latency_ms, step_ms, now)
        else:
            probe.rif = rif
            probe.latency_ms = latency_ms
            probe.step_ms = step_ms
            probe.at = now
        pool[entry] = probe

    def observe(
        self, entry: PodEntry, now: float, latency_s: float, feedback: Feedback | None
    ) -> None:
        if feedback is None:
            # No report: our own count and the end-to-end latency stand in.
            known = entry.latency_ewma_ms
            self.observe_probe(
                entry, now, entry.in_flight, latency_s * 1000.0 if known is None else known
            )
            return
        rif = feedback.queue_length + feedback.in_flight
        # The table's smoothed app time, not this one response's: one quick
        # sample must not make a slow pod look fast.
        app_ms = entry.app_ewma_ms
        if app_ms is None:
            app_ms = feedback.app_ms if feedback.app_ms is not None else latency_s * 1000.0
        concurrency = feedback.concurrency
        if concurrency:
            self.observe_probe(
                entry, now, rif, expected_delay_ms(app_ms, rif, concurrency), app_ms / concurrency
            )
        else:
            self.observe_probe(entry, now, rif, app_ms, 0.0)

    def probe_targets(self, candidates: Sequence[PodEntry], now: float, count: int = 2) -> list[PodEntry]:
        """Up to ``count`` distinct random candidates to probe now, preferring pods with no live probe."""
        self._expire(now)
        pool = self._pool
        unprobed = [entry for entry in candidates if entry not in pool]
        if len(unprobed) >= count:
            return self.rng.sample(unprobed, count)
        rest = [entry for entry in candidates if entry in pool]
        return unprobed + self.rng.sample(rest, min(count - len(unprobed), len(rest)))

    def probes(self, now: float) -> dict[str, tuple[int, float, float]]:
        """The live pool as ``{pod name: (rif, latency_ms, age_s)}``, for introspection."""
        self._expire(now)
        return {e.name: (p.rif, round(p.latency_ms, 6), now - p.at) for e, p in self._pool.items()}

    # -- choosing --------------------------------------------------------

    def hot_threshold(self) -> int:
        """The RIF above which a probe is hot: the ``hot_quantile`` quantile (nearest rank) of the pool."""
        rifs = sorted(probe.rif for probe in self._pool.values())
        rank = math.ceil(self.hot_quantile * len(rifs))
        return rifs[max(rank, 1) - 1]

    def pick(self, candidates: Sequence[PodEntry], now: float, trace: Trace | None = None
             ) -> PodEntry:
        self._expire(now)
        pool = self._pool
        if not pool:
            return self._fallback.pick(candidates, now, trace)
        if len(candidates) <= SCAN_UP_TO:
            # A pod nobody has heard from lately must still be chosen
            # sometimes, or the first pods to answer take all the traffic.
            items = [(entry, pool.get(entry) or self._from_table(entry, now))
                     for entry in candidates]
        else:
            items = self._pool_and_sample(candidates, now)
        entry, probe = hot_cold(items, self.hot_threshold(), self.rng, trace)
        # A stand-in probe is not kept: the table counts the dispatch instead.
        probe.rif += 1
        probe.latency_ms += probe.step_ms
        return entry

    def _pool_and_sample(self, candidates: Sequence[PodEntry], now: float
                         ) -> list[tuple[PodEntry, Probe]]:
        """The candidates' live probes, then stand-ins for :data:`SAMPLE` random unprobed candidates."""
        pool = self._pool
        table = self.table
        if candidates is table.ready():
            items = [(e, p) for e, p in pool.items() if e.ready and table.get(e.name) is e]
        else:
            members = set(candidates)
            items = [(e, p) for e, p in pool.items() if e in members]
        for position in self.rng.sample(range(len(candidates)), SAMPLE):
            entry = candidates[position]
            if entry not in pool:
                items.append((entry, self._from_table(entry, now)))
        return items

    def _from_table(self, entry: PodEntry, now: float) -> Probe:
        """A stand-in probe from what the load table knows of a pod that has no live probe."""
        rif = int(self.table.estimated_load(entry, now))
        app_ms = entry.app_ewma_ms
        if app_ms is None:
            # Never timed: optimistic, so it is tried and then timed.
            app_ms = 0.0 if entry.latency_ewma_ms is None else entry.latency_ewma_ms
        concurrency = entry.reported_concurrency or 1
        return Probe(rif, expected_delay_ms(app_ms, rif, concurrency), app_ms / concurrency, now)

    def _expire(self, now: float) -> None:
        pool = self._pool
        oldest = now - self.max_age_s
        while pool:
            entry = next(iter(pool))
            if pool[entry].at >= oldest:
                break
            del pool[entry]
