"""The asyncio side of the L2 queue: waiters are futures, woken in FIFO order by the Breaker."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from katyusha.core.errors import DeadlineExceeded
from nonna.breaker import Breaker


class Admission:
    """Awaitable admission over a :class:`Breaker`; ``on_change`` runs whenever the counts move."""

    def __init__(self, breaker: Breaker, on_change: Callable[[], None] | None = None):
        self.breaker = breaker
        self._on_change = on_change or (lambda: None)

    async def acquire(self, timeout: float) -> None:
        """Hold a slot when this returns; the caller must :meth:`release` it exactly once.

        Raises QueueFull at once when the queue is at its depth, and
        DeadlineExceeded after ``timeout`` seconds of waiting. A waiter that
        times out or is cancelled (client gone) leaves the queue without
        costing anyone else their place or their slot.
        """
        breaker = self.breaker
        if breaker.try_acquire():
            self._on_change()
            return
        future = asyncio.get_running_loop().create_future()
        ticket = breaker.enqueue(future)  # QueueFull propagates: nothing was taken
        self._on_change()
        try:
            async with asyncio.timeout(timeout):
                await future
        except BaseException as exc:
            if not breaker.cancel(ticket):
                # The slot arrived while we were leaving: hand it on.
                self.release()
            else:
                self._on_change()
            if isinstance(exc, TimeoutError):
                raise DeadlineExceeded(
                    f"request waited {timeout:.3f}s in the queue without a free slot "
                    f"(concurrency {breaker.capacity})"
                ) from None
            raise

    def release(self) -> None:
        """Give the slot back; the oldest live waiter, if any, is woken with it."""
        ticket = self.breaker.release()
        if ticket is not None and not ticket.token.done():
            ticket.token.set_result(None)
        # A granted ticket whose future is already cancelled still owns the slot:
        # its own acquire() sees cancel() return False and releases it again.
        self._on_change()
