"""The pick trace: the last N picks of a service, with the candidates' loads and the choice.

As tower traces both loads and the choice of every p2c pick. A policy whose
``pick`` takes a ``trace`` list appends ``(entry, load)`` for each candidate
it compared; for one that does not, the trace shows the first
:data:`SHOWN` candidates with the load table's estimated load. Off (no
object at all) unless ``trace-picks`` is set, so the pick path pays nothing.
"""

from __future__ import annotations

import inspect
from collections import deque
from collections.abc import Sequence

from katyusha.core.loadtable import LoadTable, PodEntry

# Candidates shown for a policy that does not report what it compared.
SHOWN = 8


def accepts_trace(policy: object) -> bool:
    """Whether ``policy.pick`` takes a ``trace`` argument."""
    try:
        return "trace" in inspect.signature(policy.pick).parameters  # type: ignore[attr-defined]
    except (TypeError, ValueError, AttributeError):
        return False


class PickTrace:
    """A ring of the last ``size`` picks of one service."""

    def __init__(self, service: str, size: int, policy: object, table: LoadTable):
        self.service = service
        self.policy = policy
        self.table = table
        self.own_metric = accepts_trace(policy)
        self._ring: deque[tuple[float, tuple[tuple[PodEntry, float], ...], PodEntry, int]] = deque(
            maxlen=size)

    def pick(self, candidates: Sequence[PodEntry], now: float) -> PodEntry:
        """``policy.pick(candidates, now)``, recorded."""
        if self.own_metric:
            compared: list[tuple[PodEntry, float]] = []
            chosen = self.policy.pick(candidates, now, compared)  # type: ignore[attr-defined]
        else:
            chosen = self.policy.pick(candidates, now)  # type: ignore[attr-defined]
            estimate = self.table.estimated_load
            compared = [(entry, estimate(entry, now)) for entry in candidates[:SHOWN]]
            if chosen not in candidates[:SHOWN]:
                compared.append((chosen, estimate(chosen, now)))
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
                "load": "policy" if self.own_metric else "estimated_load",
                "candidates": [{"pod": entry.name, "load": load} for entry, load in compared],
                "candidate_count": count,
                "chosen": chosen.name,
            }
            for at, compared, chosen, count in self._ring
        ]
