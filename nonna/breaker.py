"""Layer-2 admission, sans-IO: a concurrency limit with a bounded FIFO of waiters.

A :class:`Breaker` is the single source of truth for how many requests execute
(``in_flight``) and which wait (``waiting``). A slot freed by :meth:`release`
passes straight to the oldest waiter, so ``in_flight`` never dips and rises
again between the two: no window in which a newcomer could overtake the queue,
and no second counter to keep in step.

It imports no event loop and no clock: the asyncio adapter (nonna.admission)
decides how a waiter is woken; this module only decides who gets a slot.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from katyusha.core.errors import ConfigError, QueueFull

WAITING = "waiting"
GRANTED = "granted"
CANCELLED = "cancelled"


class Ticket:
    """A place in the queue; ``state`` is waiting, then granted (holds a slot) or cancelled."""

    __slots__ = ("token", "state", "_id")

    def __init__(self, token: Any, ident: int):
        self.token = token
        self.state = WAITING
        self._id = ident


class Breaker:
    """At most ``capacity`` requests in flight (0: no limit), at most ``depth`` waiting (None: no limit).

    Raises ConfigError for a negative capacity or depth.
    """

    def __init__(self, capacity: int, depth: int | None):
        if capacity < 0:
            raise ConfigError("concurrency", f"must be >= 0, got {capacity}")
        if depth is not None and depth < 0:
            raise ConfigError("queue-depth", f"must be >= 0, got {depth}")
        self.capacity = capacity
        self.depth = depth
        self.in_flight = 0
        self._waiting: OrderedDict[int, Ticket] = OrderedDict()
        self._next_id = 0

    @property
    def waiting(self) -> int:
        """How many requests wait for a slot."""
        return len(self._waiting)

    def _has_free_slot(self) -> bool:
        return self.capacity == 0 or self.in_flight < self.capacity

    def try_acquire(self) -> bool:
        """Take a slot at once if one is free and nobody waits; never queues."""
        if self._waiting or not self._has_free_slot():
            return False
        self.in_flight += 1
        return True

    def enqueue(self, token: Any) -> Ticket:
        """Join the back of the queue; call only after :meth:`try_acquire` returned False.

        ``token`` is whatever the adapter needs to wake the waiter (a future).
        Raises QueueFull when ``depth`` requests already wait.
        """
        if self.depth is not None and len(self._waiting) >= self.depth:
            raise QueueFull(
                f"queue full: {len(self._waiting)} requests waiting (queue depth {self.depth}), "
                f"{self.in_flight} in flight (concurrency {self.capacity})"
            )
        ticket = Ticket(token, self._next_id)
        self._next_id += 1
        self._waiting[ticket._id] = ticket
        return ticket

    def release(self) -> Ticket | None:
        """Give back one slot; return the waiter that now holds it (already granted), or None."""
        if self.in_flight <= 0:
            raise RuntimeError("release() without a slot held")
        if self._waiting:
            _, ticket = self._waiting.popitem(last=False)
            ticket.state = GRANTED
            return ticket
        self.in_flight -= 1
        return None

    def cancel(self, ticket: Ticket) -> bool:
        """Leave the queue. True when the ticket was still waiting (it is gone, nobody else moves).

        False when the slot had already been granted to it: the caller holds a
        slot and must :meth:`release` it so the next waiter gets it.
        """
        if ticket.state == WAITING:
            del self._waiting[ticket._id]
            ticket.state = CANCELLED
            return True
        return ticket.state == CANCELLED
