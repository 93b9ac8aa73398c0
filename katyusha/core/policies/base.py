"""What every load-balancing policy (fukabunsan) offers, and the small helpers they share.

A policy chooses one pod among ready candidates and may learn from each
response. It owns no I/O: ``now`` and the ``random.Random`` come from the
caller, so the same inputs give the same picks in the live proxy and in the
simulator.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from katyusha.core.feedback import Feedback
from katyusha.core.loadtable import LoadTable, PodEntry


class Policy:
    """Base of the policies. Subclasses override :meth:`pick`, and :meth:`observe` if they learn."""

    name = "policy"

    def __init__(self, *, rng: random.Random, table: LoadTable):
        self.rng = rng
        self.table = table

    def pick(self, candidates: Sequence[PodEntry], now: float) -> PodEntry:
        """Return one of ``candidates`` (the caller guarantees at least one)."""
        raise NotImplementedError

    def observe(
        self, entry: PodEntry, now: float, latency_s: float, feedback: Feedback | None
    ) -> None:
        """Learn from a response of ``entry``; the table has already been updated by the caller."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"


def two_indices(count: int, rng: random.Random) -> tuple[int, int]:
    """Two distinct random indices below ``count`` (which must be at least 2)."""
    first = rng.randrange(count)
    second = rng.randrange(count - 1)
    if second >= first:
        second += 1
    return first, second
