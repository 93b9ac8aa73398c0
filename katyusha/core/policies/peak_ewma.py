"""Peak-EWMA (Linkerd, Finagle): power of two choices on a latency-aware cost.

The cost is :class:`~katyusha.core.policies.metrics.PeakEwmaCost`: a latency
estimate that jumps at once to any slower sample and otherwise decays with
time constant ``decay_s``, times ``in_flight + 1``.
"""

from __future__ import annotations

import random

from katyusha.core.loadtable import LoadTable, PodEntry
from katyusha.core.policies.base import MetricPolicy
from katyusha.core.policies.metrics import PeakEwmaCost
from katyusha.core.policies.selectors import TwoChoices


class PeakEwma(MetricPolicy):
    """Power of two choices on ``peak-EWMA latency * (in_flight + 1)``.

    A pod with no sample yet costs ``default_rtt_ms * (in_flight + 1)``.
    Raises ConfigError for a non-positive ``decay_s`` or ``default_rtt_ms``.
    """

    name = "peak-ewma"

    def __init__(self, *, rng: random.Random, table: LoadTable, decay_s: float = 10.0,
                 default_rtt_ms: float = 10.0):
        metric = PeakEwmaCost(table, decay_s=decay_s, default_rtt_ms=default_rtt_ms)
        super().__init__(rng=rng, table=table, metric=metric, selector=TwoChoices(metric, rng))

    def latency_ms(self, entry: PodEntry, now: float) -> float:
        """The pod's peak-EWMA latency estimate at ``now``, decayed since its last sample."""
        return self.metric.latency_ms(entry, now)

    def cost(self, entry: PodEntry, now: float) -> float:
        """What :meth:`pick` compares: latency estimate times (in flight + 1)."""
        return self.metric.load(entry, now)
