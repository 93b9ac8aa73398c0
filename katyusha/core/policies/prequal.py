"""Prequal (Wydrowski et al., NSDI 2024): hot-cold lexicographic choice over a pool of recent probes.

The policy keeps a small pool of recent load probes, at most one per pod:
requests in flight (RIF) and a latency estimate. Probes come from two places:

* piggybacking: every response's ``Nonna-Queue-Length + Nonna-In-Flight`` is
  the pod's RIF and its ``Server-Timing`` ``nonna-queue + app`` the latency
  (a response without feedback gives katyusha's own in-flight count and the
  end-to-end latency instead);
* probing: the live proxy asks nonna's admin ``/stats`` of a few pods off the
  request path (which ones: :meth:`Prequal.probe_targets`) and reports each
  answer with :meth:`Prequal.observe_probe`.

A probe ages out after ``max_age_s``; when the pool is full the oldest probe
leaves. To pick, a probe is *hot* when its RIF is above the ``hot_quantile``
quantile of the RIFs in the pool. Among the candidates' cold probes the lowest
latency wins (then the lower RIF); when all of them are hot, the lowest RIF
wins. A pick adds one to the chosen probe's RIF, so a burst between two
probes does not all land on one pod. With no usable probe for any candidate,
the pick falls back to power of two choices on local in-flight counts.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

from katyusha.core.errors import ConfigError
from katyusha.core.feedback import Feedback
from katyusha.core.loadtable import LoadTable, PodEntry
from katyusha.core.policies.base import Policy, two_indices


class Probe:
    """One pod's load as last probed: requests in flight, latency estimate (ms), when."""

    __slots__ = ("rif", "latency_ms", "at")

    def __init__(self, rif: int, latency_ms: float, at: float):
        self.rif = rif
        self.latency_ms = latency_ms
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
        self._candidates_list: Sequence[PodEntry] | None = None
        self._candidates_set: frozenset[PodEntry] = frozenset()
        self._candidates_version = -1

    # -- learning --------------------------------------------------------

    def observe_probe(self, entry: PodEntry, now: float, rif: int, latency_ms: float) -> None:
        """Record a probe of ``entry`` taken at ``now``; negative or non-finite values are ignored.

        The live proxy calls this with what nonna's admin ``/stats`` reported
        (its queue length plus in flight, and its recent latency).
        """
        if not rif >= 0 or not latency_ms >= 0 or not math.isfinite(latency_ms):
            return
        pool = self._pool
        probe = pool.pop(entry, None)
        if probe is None:
            self._expire(now)
            if len(pool) >= self.pool_size:
                del pool[next(iter(pool))]
            probe = Probe(rif, latency_ms, now)
        else:
            probe.rif = rif
            probe.latency_ms = latency_ms
            probe.at = now
        pool[entry] = probe

    def observe(
        self, entry: PodEntry, now: float, latency_s: float, feedback: Feedback | None
    ) -> None:
        if feedback is None:
            self.observe_probe(entry, now, entry.in_flight, latency_s * 1000.0)
            return
        rif = feedback.queue_length + feedback.in_flight
        if feedback.app_ms is None and feedback.queue_ms is None:
            latency_ms = latency_s * 1000.0
        else:
            latency_ms = (feedback.app_ms or 0.0) + (feedback.queue_ms or 0.0)
        self.observe_probe(entry, now, rif, latency_ms)

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
        return {e.name: (p.rif, p.latency_ms, now - p.at) for e, p in self._pool.items()}

    # -- choosing --------------------------------------------------------

    def hot_threshold(self) -> int:
        """The RIF above which a probe is hot: the ``hot_quantile`` quantile (nearest rank) of the pool."""
        rifs = sorted(probe.rif for probe in self._pool.values())
        rank = math.ceil(self.hot_quantile * len(rifs))
        return rifs[max(rank, 1) - 1]

    def pick(self, candidates: Sequence[PodEntry], now: float) -> PodEntry:
        self._expire(now)
        pool = self._pool
        if pool:
            allowed = self._allowed(candidates)
            threshold = self.hot_threshold()
            cold: tuple[PodEntry, Probe] | None = None
            hot: tuple[PodEntry, Probe] | None = None
            for entry, probe in pool.items():
                if entry not in allowed:
                    continue
                if probe.rif <= threshold:
                    if (
                        cold is None
                        or probe.latency_ms < cold[1].latency_ms
                        or (probe.latency_ms == cold[1].latency_ms and probe.rif < cold[1].rif)
                    ):
                        cold = (entry, probe)
                elif cold is None and (hot is None or probe.rif < hot[1].rif):
                    hot = (entry, probe)
            chosen = cold or hot
            if chosen is not None:
                chosen[1].rif += 1
                return chosen[0]
        count = len(candidates)
        if count == 1:
            return candidates[0]
        first, second = two_indices(count, self.rng)
        a = candidates[first]
        b = candidates[second]
        return a if a.in_flight <= b.in_flight else b

    def _allowed(self, candidates: Sequence[PodEntry]) -> frozenset[PodEntry]:
        # The proxy passes the table's cached ready() list, the same object
        # until the table changes, so the set is rebuilt only then.
        if candidates is not self._candidates_list or self._candidates_version != self.table.version:
            self._candidates_list = candidates
            self._candidates_set = frozenset(candidates)
            self._candidates_version = self.table.version
        return self._candidates_set

    def _expire(self, now: float) -> None:
        pool = self._pool
        oldest = now - self.max_age_s
        while pool:
            entry = next(iter(pool))
            if pool[entry].at >= oldest:
                break
            del pool[entry]
