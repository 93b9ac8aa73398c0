"""The pick trace: the last N picks of a service, with the candidates' loads and the choice.

As tower traces both loads and the choice of every p2c pick. Every policy's
``pick`` takes a ``trace`` list and appends ``(entry, value)`` for each
candidate it compared, in its own metric (none for round-robin and random,
which compare nothing). Off (no object at all) unless ``trace-picks`` is set,
so the pick path pays nothing.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence

from katyusha.core.loadtable import LoadTable, PodEntry


class PickTrace:
    """A ring of the last ``size`` picks of one service."""

    def __init__(self, service: str, size: int, policy: object, table: LoadTable):
        self.service = service
        self.policy = policy
        self.table = table
        self._ring: deque[tuple[float, tuple[tuple[PodEntry, float], ...], PodEntry, int]] = deque(
            maxlen=size)

    def pick(self, candidates: Sequence[PodEntry], now: float) -> PodEntry:
        """``policy.pick(candidates, now)``, recorded."""
        compared: list[tuple[PodEntry, float]] = []
        chosen = self.policy.pick(candidates, now, compared)  # type: ignore[attr-defined]
        self._ring.append((now, tuple(compared), chosen, len(candidates)))
        return chosen

    def pick_except(self, candidates: Sequence[PodEntry], ready: list[PodEntry], excluded,
                    order: dict[PodEntry, int] | None, now: float) -> PodEntry:
        """``policy.pick_except(...)`` (the same choice as ``pick(candidates, now)``), recorded."""
        compared: list[tuple[PodEntry, float]] = []
        chosen = self.policy.pick_except(  # type: ignore[attr-defined]
            candidates, ready, excluded, order, now, compared)
        self._ring.append((now, tuple(compared), chosen, len(candidates)))
        return chosen

    def records(self, now: float) -> list[dict]:
        """The recorded picks, oldest first, as JSON: time, age, service, candidates with loads, choice."""
        return [
            {
                "at": at,
                "age_s": round(now - at, 6),
                "service": self.service,
                "policy": getattr(self.policy, "name", None),
                "load": "policy",
                "candidates": [{"pod": entry.name, "load": load} for entry, load in compared],
                "candidate_count": count,
                "chosen": chosen.name,
            }
            for at, compared, chosen, count in self._ring
        ]
