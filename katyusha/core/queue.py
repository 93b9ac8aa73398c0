"""The L1 queue (junbanmachi): admission with a concurrency limit, in arrival order per priority.

A request is offered and gets a :class:`Ticket`. When a slot is free, nobody
waits ahead of it and the queue is not held, the ticket is admitted at once;
otherwise it waits. Every admitted ticket holds one slot until it is released
(or cancelled); each release admits the next waiting tickets, highest
priority class first and first-in first-out within a class.

One counter of active slots decides admission, and a ticket's ``state`` moves
only forward (waiting -> admitted -> done, or waiting -> cancelled/expired), so
a slot can never be freed twice nor a ticket admitted twice.

While *held* (no pod is ready, e.g. scaling from zero) nothing is admitted;
requests keep waiting until ``unhold`` or their deadline. Holding works in
unlimited mode too: there is nowhere to send a request while no pod is ready.
An admitted ticket that finds no pod after all (the last one left) goes back
to waiting at the front of its class with :meth:`L1Queue.requeue`, keeping its
deadline, instead of polling for a pod.

The queue does no I/O and keeps no timers: the caller asks for
:meth:`L1Queue.next_deadline` and calls :meth:`L1Queue.expire` when it passes.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from typing import Any

from katyusha.core.errors import BadInput, ConfigError, QueueFull

WAITING = "waiting"
ADMITTED = "admitted"
DONE = "done"
CANCELLED = "cancelled"
EXPIRED = "expired"


class Ticket:
    """One request's place in the L1 queue. ``payload`` is the caller's, untouched.

    A caller that needs more per-request state subclasses it (with
    ``__slots__``) and passes the class as ``L1Queue(ticket_class=...)``.
    """

    __slots__ = ("payload", "enqueued_at", "deadline", "priority", "state", "admitted_at", "_heap_seq")

    def __init__(self, payload: Any, enqueued_at: float, deadline: float, priority: int):
        self.payload = payload
        self.enqueued_at = enqueued_at
        self.deadline = deadline
        self.priority = priority
        self.state = WAITING
        self.admitted_at: float | None = None
        self._heap_seq = -1

    @property
    def admitted(self) -> bool:
        """True while the ticket holds a slot (admitted and not yet released)."""
        return self.state is ADMITTED

    @property
    def waiting(self) -> bool:
        return self.state is WAITING

    def __repr__(self) -> str:
        return f"Ticket(state={self.state}, priority={self.priority}, deadline={self.deadline})"


class L1Queue:
    """Concurrency-limited admission queue; see the module docstring for the rules."""

    # Slots: nonna's L2 queue is one of these per pod, read on every request (see Sidecar).
    __slots__ = ("limit", "max_length", "default_timeout_s", "priority_classes", "ticket_class", "waiting",
                 "active", "held", "admitted_total", "rejected_total", "expired_total", "cancelled_total",
                 "_classes", "_deadlines", "_seq", "_fifo_dead", "_heap_dead")

    def __init__(
        self,
        *,
        limit: int | None,
        max_length: int = 10_000,
        default_timeout_s: float = 30.0,
        priority_classes: int = 1,
        ticket_class: type[Ticket] = Ticket,
    ):
        """``limit`` None means unlimited. Raises ConfigError (naming the argument) for bad values.

        ``ticket_class`` is what :meth:`offer` builds: :class:`Ticket` or a subclass.
        """
        _check_limit(limit)
        if not _is_int(max_length) or max_length < 0:
            raise ConfigError("max_length", f"must be an integer >= 0, got {max_length!r}")
        if not _is_positive_seconds(default_timeout_s):
            raise ConfigError(
                "default_timeout_s", f"must be a positive number of seconds, got {default_timeout_s!r}"
            )
        if not _is_int(priority_classes) or not 1 <= priority_classes <= 64:
            raise ConfigError(
                "priority_classes", f"must be an integer from 1 to 64, got {priority_classes!r}"
            )
        self.limit = limit
        self.max_length = max_length
        self.default_timeout_s = float(default_timeout_s)
        self.priority_classes = priority_classes
        self.ticket_class = ticket_class
        self.waiting = 0
        self.active = 0
        self.held = False
        self.admitted_total = 0
        self.rejected_total = 0
        self.expired_total = 0
        self.cancelled_total = 0
        # One FIFO per class; cancelled or expired tickets stay until they reach
        # the front (lazy removal keeps cancel O(1)); _compact bounds the garbage.
        self._classes: list[deque[Ticket]] = [deque() for _ in range(priority_classes)]
        # (deadline, seq, ticket); an entry is live while its ticket waits and
        # carries that seq (a requeued ticket gets a new entry, its old one dies).
        self._deadlines: list[tuple[float, int, Ticket]] = []
        self._seq = 0
        self._fifo_dead = 0
        self._heap_dead = 0

    # -- admission ---------------------------------------------------------

    def offer(
        self, payload: Any, now: float, *, timeout_s: float | None = None, priority: int = 0
    ) -> Ticket:
        """Admit a request at once or queue it; returns its ticket (see ``ticket.admitted``).

        ``priority`` is 0 (lowest) to ``priority_classes - 1``. Raises BadInput
        for a priority out of range or a timeout that is not a positive number,
        and QueueFull when ``max_length`` tickets already wait.
        """
        if timeout_s is None:
            timeout_s = self.default_timeout_s
        elif not _is_positive_seconds(timeout_s):
            raise BadInput(f"timeout must be a positive number of seconds, got {timeout_s!r}")
        if priority.__class__ is not int or not 0 <= priority < self.priority_classes:
            raise BadInput(
                f"priority must be an integer from 0 to {self.priority_classes - 1}, got {priority!r}"
            )
        ticket = self.ticket_class(payload, now, now + timeout_s, priority)
        if not self.held and self.waiting == 0 and (self.limit is None or self.active < self.limit):
            ticket.state = ADMITTED
            ticket.admitted_at = now
            self.active += 1
            self.admitted_total += 1
            return ticket
        if self.waiting >= self.max_length:
            self.rejected_total += 1
            raise QueueFull(f"L1 queue full: {self.waiting} requests waiting (max {self.max_length})")
        self._classes[priority].append(ticket)
        self._push_deadline(ticket)
        self.waiting += 1
        return ticket

    def requeue(self, ticket: Ticket, now: float) -> None:
        """An admitted ticket could not be served after all: free its slot, wait again at the front.

        The ticket keeps its deadline and goes ahead of every ticket of its
        class, since it was admitted before them. Nothing is admitted here:
        the caller requeues because there is nowhere to send the request
        (the queue is then held). It is never refused for ``max_length``,
        which bounds new arrivals only, so the waiting count may stand above
        it for a while. Requeueing a ticket that holds no slot changes nothing.
        """
        if ticket.state is not ADMITTED:
            return
        ticket.state = WAITING
        ticket.admitted_at = None
        self.active -= 1
        self.waiting += 1
        self.admitted_total -= 1
        self._classes[ticket.priority].appendleft(ticket)
        self._push_deadline(ticket)

    def _push_deadline(self, ticket: Ticket) -> None:
        seq = self._seq
        self._seq = seq + 1
        ticket._heap_seq = seq
        heapq.heappush(self._deadlines, (ticket.deadline, seq, ticket))

    def release(self, ticket: Ticket, now: float) -> list[Ticket]:
        """An admitted ticket finished: free its slot; returns the tickets admitted in its place.

        Releasing a ticket that holds no slot (already released, cancelled,
        still waiting) changes nothing and returns [].
        """
        if ticket.state is not ADMITTED:
            return []
        ticket.state = DONE
        self.active -= 1
        # _admit's own first check, without the call in the common case (nothing waits).
        return self.admit(now) if self.waiting and not self.held else []

    def cancel(self, ticket: Ticket, now: float | None = None) -> list[Ticket]:
        """The client left or the request was abandoned: drop the ticket wherever it is.

        A waiting ticket leaves the queue; an admitted one frees its slot and
        the tickets admitted in its place are returned. Cancelling twice, or
        after release or expiry, changes nothing.
        """
        state = ticket.state
        if state is WAITING:
            ticket.state = CANCELLED
            self.waiting -= 1
            self.cancelled_total += 1
            self._fifo_dead += 1
            self._heap_dead += 1
            self._maybe_compact()
            return []
        if state is ADMITTED:
            ticket.state = CANCELLED
            self.active -= 1
            self.cancelled_total += 1
            return self.admit(ticket.enqueued_at if now is None else now)
        return []

    def expire(self, now: float) -> list[Ticket]:
        """Remove and return the waiting tickets whose deadline is at or before ``now``."""
        expired = []
        heap = self._deadlines
        while heap and heap[0][0] <= now:
            _, seq, ticket = heapq.heappop(heap)
            if ticket.state is WAITING and ticket._heap_seq == seq:
                ticket.state = EXPIRED
                self.waiting -= 1
                self.expired_total += 1
                self._fifo_dead += 1
                expired.append(ticket)
            else:
                self._heap_dead -= 1
        if expired:
            self._maybe_compact()
        return expired

    def next_deadline(self) -> float | None:
        """The earliest deadline among waiting tickets, or None when nothing waits."""
        heap = self._deadlines
        while heap and not _live(heap[0]):
            heapq.heappop(heap)
            self._heap_dead -= 1
        return heap[0][0] if heap else None

    def hold(self) -> None:
        """Stop admitting (no pod is ready); waiting tickets keep waiting. Idempotent."""
        self.held = True

    def unhold(self, now: float) -> list[Ticket]:
        """Admit again; returns the waiting tickets that may go now. Idempotent."""
        self.held = False
        return self.admit(now)

    def set_limit(self, limit: int | None, now: float) -> list[Ticket]:
        """Change the concurrency limit at run time; returns tickets a larger limit admits.

        Lowering it never evicts: active tickets finish, and admission resumes
        once ``active`` is below the new limit. Raises ConfigError for bad values.
        """
        _check_limit(limit)
        self.limit = limit
        return self.admit(now)

    def admit(self, now: float) -> list[Ticket]:
        """Admit the waiting tickets that may go now (not held, a slot free), highest class first;
        returns them. (:meth:`release`'s last step; a caller that gives a slot back itself, as
        the service balancer's end of a whole response does, calls it after.)"""
        if self.held or self.waiting == 0:
            return []
        admitted = []
        limit = self.limit
        for fifo in reversed(self._classes):
            while fifo and (limit is None or self.active < limit):
                ticket = fifo.popleft()
                if ticket.state is not WAITING:
                    self._fifo_dead -= 1
                    continue
                # Its heap entry stays until popped or compacted.
                self._heap_dead += 1
                ticket.state = ADMITTED
                ticket.admitted_at = now
                self.active += 1
                self.waiting -= 1
                self.admitted_total += 1
                admitted.append(ticket)
            if limit is not None and self.active >= limit:
                break
        if admitted:
            self._maybe_compact()
        return admitted

    # -- internals ---------------------------------------------------------

    def _maybe_compact(self) -> None:
        # Lazy removal leaves dead tickets in the FIFOs and the heap; rebuild
        # once they outnumber the live ones so memory stays bounded by max_length.
        slack = self.waiting + 64
        if self._fifo_dead > slack:
            for index, fifo in enumerate(self._classes):
                self._classes[index] = deque(t for t in fifo if t.state is WAITING)
            self._fifo_dead = 0
        if self._heap_dead > slack:
            self._deadlines = [item for item in self._deadlines if _live(item)]
            heapq.heapify(self._deadlines)
            self._heap_dead = 0


def parse_priority(value: bytes, header: str, classes: int) -> int:
    """The priority class a request header asks for: an integer from 0 to ``classes - 1``.

    Raises BadInput (400) naming ``header`` for anything else.
    """
    text = value.strip()
    if text.isdigit() and len(text) <= 2:
        priority = int(text)
        if priority < classes:
            return priority
    raise BadInput(
        f"{header}: must be an integer from 0 to {classes - 1}, got {value.decode('latin-1')!r}"
    )


def _live(item: tuple[float, int, Ticket]) -> bool:
    ticket = item[2]
    return ticket.state is WAITING and ticket._heap_seq == item[1]


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_positive_seconds(value: object) -> bool:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and not math.isnan(value)
        and value > 0
    )


def _check_limit(limit: object) -> None:
    if limit is not None and (not _is_int(limit) or limit < 1):
        raise ConfigError(
            "limit", f"must be an integer >= 1, or None for unlimited, got {limit!r}"
        )
