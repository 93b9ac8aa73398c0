"""Results to the output in batches: a batch is written when it holds ``count`` rows or its
oldest row has waited ``period`` seconds, whichever comes first (Benthos's batching policy)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

from katyusha.batch.stores import Record, Sink

Written = Callable[[Sequence[Record], Sequence[Record]], None]


class BatchWriter:
    """One task writes; ``put`` waits when the output falls behind (the queue holds 4 batches)."""

    def __init__(self, output: Sink, dead: Sink, count: int, period: float, on_written: Written):
        self.output = output
        self.dead = dead
        self.count = count
        self.period = period
        self.on_written = on_written
        self.queue: asyncio.Queue[tuple[bool, Record] | None] = asyncio.Queue(maxsize=4 * count)
        self._ok: list[Record] = []
        self._dead: list[Record] = []

    async def put(self, ok: bool, row: Record) -> None:
        await self.queue.put((ok, row))

    async def run(self) -> None:
        """Write until ``close``; raises the sink's StoreError when a write fails."""
        loop = asyncio.get_running_loop()
        deadline: float | None = None  # loop time by which the oldest held row is written
        while True:
            try:
                # asyncio.timeout, not wait_for: Python 3.11's wait_for can swallow a
                # cancellation that arrives as the item does, and the writer would never stop.
                async with asyncio.timeout_at(deadline):
                    item = await self.queue.get()
            except TimeoutError:
                await self._flush()
                deadline = None
                continue
            if item is None:
                await self._flush()
                return
            ok, row = item
            (self._ok if ok else self._dead).append(row)
            if deadline is None:
                deadline = loop.time() + self.period
            if len(self._ok) + len(self._dead) >= self.count:
                await self._flush()
                deadline = None

    async def _flush(self) -> None:
        ok, dead = self._ok, self._dead
        self._ok, self._dead = [], []
        if ok:
            await self.output.write(ok)
        if dead:
            await self.dead.write(dead)
        if ok or dead:
            self.on_written(ok, dead)

    async def close(self) -> None:
        """Ask ``run`` to write what it holds and return."""
        await self.queue.put(None)
