"""The driver's one timer at a core object's next deadline, on a real event loop."""

from __future__ import annotations

import asyncio
import time

from katyusha.deadline_timer import DeadlineTimer


class Deadlines:
    """A stand-in core: a sorted list of deadlines; on_due removes those passed."""

    def __init__(self):
        self.pending: list[float] = []
        self.fired: list[tuple[float, float]] = []

    def next_deadline(self) -> float | None:
        return self.pending[0] if self.pending else None

    def due(self, now: float) -> None:
        while self.pending and self.pending[0] <= now:
            self.fired.append((self.pending.pop(0), now))


async def test_fires_after_each_deadline_and_follows_the_next():
    core = Deadlines()
    timer = DeadlineTimer(core.next_deadline, core.due)
    start = time.monotonic()
    core.pending = [start + 0.05, start + 0.10]
    timer.follow()
    # A closer deadline arriving later re-arms the timer earlier.
    core.pending.insert(0, start + 0.02)
    timer.follow()
    await asyncio.sleep(0.2)
    assert [at for at, _ in core.fired] == [start + 0.02, start + 0.05, start + 0.10]
    assert all(now >= at for at, now in core.fired)  # never before its deadline
    assert all(now - at < 0.05 for at, now in core.fired)


async def test_cancel_stops_it():
    core = Deadlines()
    timer = DeadlineTimer(core.next_deadline, core.due)
    core.pending = [time.monotonic() + 0.02]
    timer.follow()
    timer.cancel()
    await asyncio.sleep(0.05)
    assert core.fired == []
