"""The run: input pages -> requests through katyusha -> batched, idempotent output.

Three parts share one event loop:

* the reader pages through the input and drops records that the output or
  the dead letter already holds (a restarted run skips finished rows);
* each unit (one record, or ``records-per-request`` of them) is one request,
  sent when the window allows, tried again with backoff on 429/502/503/504
  and connection errors, otherwise sent to the dead letter;
* the writer upserts results in batches.

Memory stays bounded: a few units ahead of the window, four batches behind it.
A row is finished only once its batch is written, so killing the driver at
any moment loses nothing: unwritten rows are simply done again next run.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import random
from collections.abc import Sequence
from typing import Any

from katyusha.batch.config import BatchConfig
from katyusha.batch.metrics import Metrics
from katyusha.batch.retry import Verdict, backoff, classify
from katyusha.batch.sender import Answer, Sender
from katyusha.batch.stores import Record, Sink, Source
from katyusha.batch.summary import Tally
from katyusha.batch.template import Body, jsonable
from katyusha.batch.window import Window
from katyusha.batch.writer import BatchWriter

_NOT_JSON = object()


class Pipeline:
    def __init__(self, config: BatchConfig, source: Source, output: Sink, dead: Sink, body: Body,
                 metrics: Metrics, *, rng: random.Random | None = None, progress=None):
        self.config = config
        self.source = source
        self.body = body
        self.metrics = metrics
        self.rng = rng or random.Random()
        self.progress = progress
        self.tally = Tally()
        self.window = Window(config.max_in_flight)
        self._turn = asyncio.Condition()
        out = config.output
        self.writer = BatchWriter(output, dead, out.batch_count, out.batch_period, self._written)
        self._finished_in = (output, dead)
        self._array = config.request.records_per_request > 1

    # -- the run ---------------------------------------------------------------------

    async def run(self, stop: asyncio.Event, sender: Sender) -> Tally:
        """Process every unfinished record, or until ``stop`` is set; raises StoreError."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        self.metrics.window.set(self.window.limit)
        writer = asyncio.create_task(self.writer.run())
        work = asyncio.create_task(self._work(sender))
        stopper = asyncio.create_task(stop.wait())
        try:
            done, _ = await asyncio.wait({writer, work, stopper}, return_when=asyncio.FIRST_COMPLETED)
            if writer in done:
                writer.result()  # a write failed: raise it
            if work in done:
                work.result()  # reading the input failed: raise it
            else:
                self.tally.stopped = "interrupted"
                work.cancel()
                await asyncio.gather(work, return_exceptions=True)
            await self.writer.close()
            await writer
        finally:
            for task in (writer, work, stopper):
                task.cancel()
            await asyncio.gather(writer, work, stopper, return_exceptions=True)
            self.tally.wall_s = loop.time() - started
            self.tally.window_smallest = self.window.smallest
            self.tally.window_cuts = self.window.cuts
        return self.tally

    async def _work(self, sender: Sender) -> None:
        ahead = 2 * self.config.max_in_flight  # units read but not finished
        room = asyncio.Semaphore(ahead)
        units: asyncio.Queue[list[Record] | None] = asyncio.Queue()
        reader = asyncio.create_task(self._read(units, room))
        running: set[asyncio.Task] = set()
        try:
            while (unit := await units.get()) is not None:
                task = asyncio.create_task(self._process(unit, sender))
                running.add(task)
                task.add_done_callback(lambda t: (running.discard(t), room.release()))
            await reader  # raises the input's StoreError
            while running:
                await asyncio.gather(*running)
        finally:
            for task in (reader, *running):
                task.cancel()
            await asyncio.gather(reader, *running, return_exceptions=True)

    async def _read(self, units: asyncio.Queue, room: asyncio.Semaphore) -> None:
        try:
            await self._read_pages(units, room)
        finally:
            units.put_nowait(None)  # unbounded queue: never blocks; room bounds it

    async def _read_pages(self, units: asyncio.Queue, room: asyncio.Semaphore) -> None:
        key = self.config.input.id
        size = self.config.request.records_per_request
        unit: list[Record] = []
        async for page in self.source.pages():
            ids = [record[key] for record in page]
            finished: set[Any] = set()
            for sink in self._finished_in:
                finished |= await sink.finished(ids)
            self.metrics.input_received.inc(len(page))
            self.tally.read += len(page)
            skipped = sum(1 for i in ids if i in finished)
            if skipped:
                self.metrics.input_skipped.inc(skipped)
                self.tally.skipped += skipped
                self._advance(skipped)
            for record in page:
                if record[key] in finished:
                    continue
                unit.append(record)
                if len(unit) == size:
                    await room.acquire()
                    units.put_nowait(unit)
                    unit = []
        if unit:
            await room.acquire()
            units.put_nowait(unit)

    # -- one unit ---------------------------------------------------------------------

    def _request_body(self, unit: list[Record]) -> bytes:
        if self._array:
            return json.dumps([self.body.render(r) for r in unit]).encode()
        return json.dumps(self.body.render(unit[0])).encode()

    async def _process(self, unit: list[Record], sender: Sender) -> None:
        body = self._request_body(unit)
        retry = self.config.retry
        attempt = 0
        while True:
            async with self._turn:
                await self._turn.wait_for(self.window.can_send)
                epoch = self.window.sent()
            self.metrics.in_flight.inc()
            try:
                answer = await sender.send(body)
            finally:
                self.metrics.in_flight.dec()
            verdict = classify(answer.status, retry.retry_on)
            await self._settle(epoch, verdict, answer)
            attempt += 1
            if verdict is Verdict.OK:
                await self._deliver(unit, answer, attempt)
                return
            if verdict is Verdict.DEAD or attempt > retry.max_retries:
                reason = _reason(answer)
                if verdict is not Verdict.DEAD:
                    reason = f"gave up after {attempt} attempts: {reason}"
                await self._dead(unit, answer.status, reason, attempt)
                return
            self.tally.retries += 1
            self.metrics.retries.labels(str(answer.status or "error")).inc()
            await asyncio.sleep(backoff(retry, attempt, self.rng, answer.retry_after))

    async def _settle(self, epoch: int, verdict: Verdict, answer: Answer) -> None:
        async with self._turn:
            if verdict is Verdict.OK:
                self.window.succeeded(epoch)
            elif verdict is Verdict.OVERLOADED:
                self.window.overloaded(epoch)
                self.tally.overloaded += 1
            else:
                self.window.failed(epoch)
            self._turn.notify_all()
        status = str(answer.status) if answer.status is not None else "error"
        self.metrics.window.set(self.window.limit)
        self.metrics.requests.labels(status).inc()
        self.metrics.latency.observe(answer.seconds)
        self.tally.requests += 1
        self.tally.statuses[status] += 1
        self.tally.latency(answer.seconds)

    async def _deliver(self, unit: list[Record], answer: Answer, attempts: int) -> None:
        """Output rows from a 2xx answer; records it cannot fill go to the dead letter."""
        try:
            document: Any = json.loads(answer.body)
        except ValueError:
            document = _NOT_JSON
        if self._array:
            if not isinstance(document, list) or len(document) != len(unit):
                await self._dead(unit, answer.status, f"the response is not a JSON array of "
                                 f"{len(unit)} results: {_snippet(answer.body)}", attempts)
                return
            items = document
        else:
            items = [answer.body.decode("utf-8", "replace") if document is _NOT_JSON else document]
        meta = {"status": answer.status, "attempts": attempts, "latency_ms": round(answer.seconds * 1e3, 3)}
        out = self.config.output
        for record, item in zip(unit, items, strict=True):
            row = {out.id: record[self.config.input.id]}
            try:
                for name, column in out.columns:
                    if column.source == "response" and column.path and document is _NOT_JSON:
                        raise LookupError(f"the response is not JSON: {_snippet(answer.body)}")
                    row[name] = column.value(record, item, meta)
            except LookupError as exc:
                await self._dead([record], answer.status, str(exc.args[0]), attempts)
                continue
            await self.writer.put(True, row)

    async def _dead(self, unit: list[Record], status: int | None, reason: str, attempts: int) -> None:
        now = datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds")
        for record in unit:
            await self.writer.put(False, {
                self.config.output.id: record[self.config.input.id], "status": status,
                "reason": reason, "attempts": attempts, "failed_at": now,
                "record": json.dumps(jsonable(record)),
            })

    # -- bookkeeping ---------------------------------------------------------------------

    def _written(self, ok: Sequence[Record], dead: Sequence[Record]) -> None:
        self.metrics.output_sent.inc(len(ok))
        if ok:
            self.metrics.output_batch_sent.inc()
        self.metrics.dead_letters.inc(len(dead))
        self.tally.written += len(ok)
        self.tally.dead_letters += len(dead)
        self._advance(len(ok) + len(dead))

    def _advance(self, rows: int) -> None:
        if self.progress is not None:
            self.progress.update(rows)


def _snippet(body: bytes, limit: int = 200) -> str:
    text = body.decode("utf-8", "replace").strip()
    return text if len(text) <= limit else text[:limit] + "..."


def _reason(answer: Answer) -> str:
    if answer.status is None:
        return answer.error or "no answer"
    return f"HTTP {answer.status}: {_snippet(answer.body)}"
