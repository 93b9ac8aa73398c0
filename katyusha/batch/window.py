"""The driver's concurrency window: additive increase, multiplicative decrease (AIMD), as TCP.

``max-in-flight`` is the ceiling. Every answer that says the service is
overloaded (429, 503, 504: katyusha's L1 queue full, a request that waited too
long) halves the window, at most once per round trip: the answers to requests
sent before the last cut do not cut again, so one burst of 503s counts once.
Every success widens it by 1/window, about one request per round trip, back up
to the ceiling. No clock and no I/O here; the pipeline awaits ``can_send``.
"""

from __future__ import annotations


class Window:
    """How many requests may be in flight now; ``size`` is a float, at least 1."""

    def __init__(self, ceiling: int, *, factor: float = 0.5):
        if ceiling < 1:
            raise ValueError(f"ceiling must be at least 1, got {ceiling}")
        self.ceiling = ceiling
        self.factor = factor
        self.size = float(ceiling)
        self.in_flight = 0
        self.epoch = 0  # bumped on each cut; a request carries the epoch it was sent in
        self.cuts = 0
        self.smallest = float(ceiling)

    @property
    def limit(self) -> int:
        return max(1, int(self.size))

    def can_send(self) -> bool:
        return self.in_flight < self.limit

    def sent(self) -> int:
        """Count a request as in flight; returns its epoch, to hand back with its outcome."""
        self.in_flight += 1
        return self.epoch

    def succeeded(self, epoch: int) -> None:
        self.in_flight -= 1
        self.size = min(float(self.ceiling), self.size + 1.0 / self.size)

    def overloaded(self, epoch: int) -> None:
        """The service pushed back; cut the window unless a later cut already covered this request."""
        self.in_flight -= 1
        if epoch == self.epoch:
            self.size = max(1.0, self.size * self.factor)
            self.epoch += 1
            self.cuts += 1
            self.smallest = min(self.smallest, self.size)

    def failed(self, epoch: int) -> None:
        """An answer that says nothing about load (a 4xx, a 500): the window stays."""
        self.in_flight -= 1
