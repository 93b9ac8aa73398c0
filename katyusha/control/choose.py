"""Which pods to wake or retire when the autoscaler changes the count.

For now the rule is the simplest one that keeps a fleet compact: wake the
first free pods in the fleet's pod order, retire the last serving ones. A
placement scheduler (image locality, node load) replaces this choice; it is
one function so that swap touches nothing else.
"""

from __future__ import annotations

from collections.abc import Sequence


def choose_pods(candidates: Sequence[str], count: int) -> list[str]:
    """The first ``count`` names of ``candidates`` (all of them when fewer); [] for a count <= 0.

    Callers pass free pods in fleet order to wake, serving pods in reverse
    fleet order to retire.
    """
    if count <= 0:
        return []
    return list(candidates[:count])
