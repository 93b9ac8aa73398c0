"""What every load-balancing policy (fukabunsan) offers.

A policy chooses one pod among ready candidates and may learn from each
response. It owns no I/O: ``now`` and the ``random.Random`` come from the
caller, so the same inputs give the same picks wherever the policy runs.

Most policies are a selector over a load metric, as tower keeps its ``Load``
apart from its p2c balancer: the metric (katyusha/core/policies/metrics.py)
gives each pod a value that is only compared, lower preferred; the selector
(katyusha/core/policies/selectors.py) chooses by those values and knows
nothing of what they mean. :class:`MetricPolicy` joins the two.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from katyusha.core.feedback import Feedback
from katyusha.core.loadtable import LoadTable, PodEntry

# A pick's trace: (pod, the value the policy compared it on), appended in place.
Trace = list[tuple[PodEntry, object]]


class Policy:
    """Base of the policies. Subclasses override :meth:`pick`, and :meth:`observe` if they learn."""

    name = "policy"

    def __init__(self, *, rng: random.Random, table: LoadTable):
        self.rng = rng
        self.table = table

    def pick(self, candidates: Sequence[PodEntry], now: float, trace: Trace | None = None
             ) -> PodEntry:
        """Return one of ``candidates`` (the caller guarantees at least one).

        ``candidates`` is ``table.ready()`` itself, which a policy may serve
        from an index it keeps over the table, or any other list of the
        table's pods, which it then looks at in full. When ``trace`` is a
        list, ``(pod, value)`` is appended for the candidates the pick
        compared (a few at most) and the one it chose; a policy blind to load
        compares none and appends nothing. Passing a trace changes no pick.
        """
        raise NotImplementedError

    def pick_except(self, candidates: Sequence[PodEntry], ready: list[PodEntry], excluded,
                    order: dict[PodEntry, int] | None, now: float, trace: Trace | None = None
                    ) -> PodEntry:
        """:meth:`pick` over ``candidates``: ``ready`` (``table.ready()``) without the pods in ``excluded``.

        ``order`` maps each candidate to its place in ``candidates`` (None:
        ``ready``'s order). The choice, and the draws, are :meth:`pick`'s; a
        policy with an index may find it without looking at every candidate.
        """
        return self.pick(candidates, now) if trace is None else self.pick(candidates, now, trace)

    def observe(
        self, entry: PodEntry, now: float, latency_s: float, feedback: Feedback | None
    ) -> None:
        """Learn from a response of ``entry``; the table has already been updated by the caller."""

    @property
    def learns(self) -> bool:
        """False when :meth:`observe` does nothing (a caller may then skip it)."""
        return type(self).observe is not Policy.observe

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"


class MetricPolicy(Policy):
    """A selector over a load metric: ``pick`` is the selector's, ``observe`` feeds the metric."""

    def __init__(self, *, rng: random.Random, table: LoadTable, metric, selector):
        super().__init__(rng=rng, table=table)
        self.metric = metric
        self.selector = selector

    def pick(self, candidates: Sequence[PodEntry], now: float, trace: Trace | None = None
             ) -> PodEntry:
        return self.selector.pick(candidates, now, trace)

    def pick_except(self, candidates: Sequence[PodEntry], ready: list[PodEntry], excluded,
                    order: dict[PodEntry, int] | None, now: float, trace: Trace | None = None
                    ) -> PodEntry:
        selector = self.selector
        if hasattr(selector, "pick_except"):
            return selector.pick_except(candidates, ready, excluded, order, now, trace)
        return selector.pick(candidates, now, trace)

    def observe(
        self, entry: PodEntry, now: float, latency_s: float, feedback: Feedback | None
    ) -> None:
        self.metric.observe(entry, now, latency_s, feedback)

    @property
    def learns(self) -> bool:
        return getattr(self.metric, "learns", True)
