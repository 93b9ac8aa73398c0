"""Peak-EWMA (Linkerd, Finagle): latency-aware power of two choices.

Each pod keeps a latency estimate that jumps up at once to any slower sample
(the "peak") and otherwise moves toward new samples with a time constant
``decay_s``: a sample ``dt`` seconds after the previous one has weight
``1 - exp(-dt / decay_s)``. With no news the estimate fades toward zero at the
same rate, as if idle time were fast samples, so a pod that was slow once is
tried again later instead of being shunned forever. The cost of a pod is
``estimate * (pending + 1)`` with ``pending`` katyusha's own in-flight count;
two random candidates are compared and the cheaper wins.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

from katyusha.core.errors import ConfigError
from katyusha.core.feedback import Feedback
from katyusha.core.loadtable import LoadTable, PodEntry
from katyusha.core.policies.base import Policy, two_indices


class _Estimate:
    __slots__ = ("rtt_ms", "stamp")

    def __init__(self, rtt_ms: float, stamp: float):
        self.rtt_ms = rtt_ms
        self.stamp = stamp


class PeakEwma(Policy):
    """Power of two choices on ``peak-EWMA latency * (in_flight + 1)``.

    A pod with no sample yet costs ``default_rtt_ms * (in_flight + 1)``.
    Raises ConfigError for a non-positive ``decay_s`` or ``default_rtt_ms``.
    """

    name = "peak-ewma"

    def __init__(
        self,
        *,
        rng: random.Random,
        table: LoadTable,
        decay_s: float = 10.0,
        default_rtt_ms: float = 10.0,
    ):
        if not isinstance(decay_s, int | float) or not decay_s > 0:
            raise ConfigError("decay_s", f"must be a positive number of seconds, got {decay_s!r}")
        if not isinstance(default_rtt_ms, int | float) or not default_rtt_ms > 0:
            raise ConfigError("default_rtt_ms", f"must be a positive number, got {default_rtt_ms!r}")
        super().__init__(rng=rng, table=table)
        self.decay_s = float(decay_s)
        self.default_rtt_ms = float(default_rtt_ms)
        self._estimates: dict[PodEntry, _Estimate] = {}
        self._version = table.version

    def latency_ms(self, entry: PodEntry, now: float) -> float:
        """The pod's peak-EWMA latency estimate at ``now``, decayed since its last sample."""
        estimate = self._estimates.get(entry)
        if estimate is None:
            return self.default_rtt_ms
        elapsed = now - estimate.stamp
        if elapsed <= 0:
            return estimate.rtt_ms
        return estimate.rtt_ms * math.exp(-elapsed / self.decay_s)

    def cost(self, entry: PodEntry, now: float) -> float:
        """What :meth:`pick` compares: latency estimate times (in flight + 1)."""
        return self.latency_ms(entry, now) * (entry.in_flight + 1)

    def pick(self, candidates: Sequence[PodEntry], now: float) -> PodEntry:
        count = len(candidates)
        if count == 1:
            return candidates[0]
        first, second = two_indices(count, self.rng)
        a = candidates[first]
        b = candidates[second]
        return a if self.cost(a, now) <= self.cost(b, now) else b

    def observe(
        self, entry: PodEntry, now: float, latency_s: float, feedback: Feedback | None
    ) -> None:
        if self._version != self.table.version:
            self._forget_departed()
        sample = latency_s * 1000.0
        if not sample >= 0 or not math.isfinite(sample):
            return
        estimate = self._estimates.get(entry)
        if estimate is None:
            self._estimates[entry] = _Estimate(sample, now)
            return
        elapsed = now - estimate.stamp
        weight = math.exp(-elapsed / self.decay_s) if elapsed > 0 else 1.0
        current = estimate.rtt_ms * weight
        if sample > current:
            estimate.rtt_ms = sample
        else:
            estimate.rtt_ms = current + sample * (1.0 - weight)
        if now > estimate.stamp:
            estimate.stamp = now

    def _forget_departed(self) -> None:
        # Keyed by entry object, so a pod that leaves and comes back starts afresh.
        self._version = self.table.version
        known = set(self.table.pods())
        for entry in [e for e in self._estimates if e not in known]:
            del self._estimates[entry]
