"""Which pods to wake or retire when the autoscaler changes the count.

A chooser is two coroutines: ``wake(free, busy, count)`` names the free slots
to wake, ``retire(serving, count)`` the serving ones to retire. The actuator
hands it whole slots (node, admin URLs), so a chooser may read their states
before it answers. :class:`FleetOrder` is the simplest rule, which keeps a
fleet compact: wake the first free pods in the fleet's pod order, retire the
last serving ones. The placement scheduler (katyusha.control.placement)
replaces it with image locality and node room.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from katyusha.control.actuator import Slot


class PodChooser(Protocol):
    """Picks slots for the actuator; both answers are names taken from the slots given."""

    async def wake(self, free: Sequence[Slot], busy: Sequence[Slot], count: int) -> list[str]:
        """At most ``count`` names from ``free`` (``busy``: slots serving, waking or retiring)."""
        ...

    async def retire(self, serving: Sequence[Slot], count: int) -> list[str]:
        """At most ``count`` names from ``serving``."""
        ...


def choose_pods(candidates: Sequence[str], count: int) -> list[str]:
    """The first ``count`` names of ``candidates`` (all of them when fewer); [] for a count <= 0.

    Callers pass free pods in fleet order to wake, serving pods in reverse
    fleet order to retire.
    """
    if count <= 0:
        return []
    return list(candidates[:count])


class FleetOrder:
    """Wake the first free slots in fleet order; retire the last serving ones."""

    async def wake(self, free: Sequence[Slot], busy: Sequence[Slot], count: int) -> list[str]:
        return choose_pods([slot.name for slot in free], count)

    async def retire(self, serving: Sequence[Slot], count: int) -> list[str]:
        return choose_pods([slot.name for slot in serving][::-1], count)
