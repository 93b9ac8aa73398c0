"""Hedged forwards for the data port: the I/O of :mod:`katyusha.core.hedge`, apart from the request path.

:class:`HedgedForward` runs a request's try; when it has not answered after
the core's delay, it asks the core for a second try on another pod
(:meth:`~katyusha.core.service.ServiceBalancer.hedge`) and runs both. The
first response head wins: the other try's task is cancelled at once (which
closes its upstream connection: an exchange cancelled mid-way is never
reused) and the core counts it out (:meth:`~katyusha.core.service.Dispatch.abandon`).
Only the winner ever writes to the client. A try that fails while the other
runs is counted as a failure of its pod and the other carries on; when both
fail, the last failure is raised for the caller's retry logic, with
:attr:`HedgedForward.handle` naming its try.

A request with a body (the core lets only small ones of a known length be
hedged, :func:`katyusha.core.hedge.is_hedgeable`) has its body read whole
before the first try; each try then reads it from its own replay, so both
send the same bytes and a retry after both failed sends them again.
"""

from __future__ import annotations

import asyncio
import copy

from katyusha.core.service import Dispatch, ServiceTicket
from katyusha.http import ReplayableReceive, UpstreamError, forward


async def read_body(receive) -> list[dict]:
    """The request's messages up to the end of its body (or the client's disconnect).

    ``receive`` is rewound first when it is a :class:`ReplayableReceive`, so a
    retry reads the same body again.
    """
    if isinstance(receive, ReplayableReceive):
        receive.rewind()
    messages = []
    while True:
        message = await receive()
        messages.append(message)
        if message["type"] != "http.request" or not message.get("more_body", False):
            return messages


def replay(messages: list[dict], receive) -> ReplayableReceive:
    """A receive for one try: ``messages`` in order, then ``receive`` itself (a disconnect)."""
    pending = iter(messages)

    async def next_message() -> dict:
        for message in pending:
            return message
        return await receive()

    return ReplayableReceive(next_message, limit=1 << 30)


class HedgedForward:
    """One request's forwards with a hedge; ``handle`` is the try that answered (or failed last)."""

    __slots__ = ("live", "ticket", "delay", "pools", "timeout", "handle", "has_body", "_won", "_tasks",
                 "_body")

    def __init__(self, live, ticket: ServiceTicket, delay: float, pools, timeout: float | None,
                 has_body: bool = False):
        self.live = live
        self.has_body = has_body
        self._body: list[dict] | None = None
        self.ticket = ticket
        self.delay = delay
        self.pools = pools
        self.timeout = timeout
        self.handle: Dispatch | None = None
        self._won: Dispatch | None = None
        self._tasks: dict[Dispatch, asyncio.Task] = {}

    async def forward(self, handle: Dispatch, head, scope: dict, receive, send):
        """Forward as :func:`katyusha.http.forward` does, hedging once after ``delay``.

        ``head`` is the try's ``on_response_head`` (its ``handle`` attribute is
        set per try). Raises what the answering try raised.
        """
        self.handle = handle
        self._won = None
        self._body = await read_body(receive) if self.has_body else None
        loop = asyncio.get_running_loop()
        first = self._start(handle, head, scope, receive, send)
        try:
            done, _ = await asyncio.wait((first,), timeout=self.delay)
            if done:
                return first.result()
            live = self.live
            second = live.core.hedge(self.ticket, loop.time())
            if second is None:
                return await first
            second_head = copy.copy(head)
            self._start(second, second_head, scope, receive, send)
            return await self._race()
        finally:
            for task in self._tasks.values():
                task.cancel()
            if self._tasks:
                await asyncio.gather(*self._tasks.values(), return_exceptions=True)
            self._tasks.clear()

    def _start(self, handle: Dispatch, head, scope, receive, send) -> asyncio.Task:
        head.handle = handle

        def on_head(status: int, headers: list) -> list:
            out = head(status, headers)  # raises UpstreamError to refuse the response
            self._claim(handle)
            return out

        if self._body is not None:
            receive = replay(self._body, receive)
        task = asyncio.get_running_loop().create_task(
            forward(scope, receive, send, self.pools.get(handle.entry.url),
                    on_response_head=on_head, timeout=self.timeout))
        self._tasks[handle] = task
        return task

    def _claim(self, handle: Dispatch) -> None:
        """``handle``'s head came first: cancel the other try and count it out."""
        if self._won is not None:  # pragma: no cover - the loser is cancelled before its head
            raise UpstreamError("the hedged pair already answered", origin=handle.entry.url)
        self._won = handle
        self.handle = handle
        now = asyncio.get_running_loop().time()
        for other, task in self._tasks.items():
            if other is not handle:
                task.cancel()
                other.abandon(now)

    async def _race(self):
        """Wait for the pair: the winner's result, or the last failure when both failed."""
        by_task = {task: handle for handle, task in self._tasks.items()}
        pending = set(by_task)
        loop = asyncio.get_running_loop()
        while pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                handle = by_task[task]
                if task.cancelled() or (self._won is not None and handle is not self._won):
                    continue
                error = task.exception()
                if error is None or handle is self._won:
                    self.handle = handle
                    return task.result()
                if not pending or not isinstance(error, UpstreamError):
                    self.handle = handle
                    raise error
                # This try failed while the other runs: its pod's failure, no retry.
                self.live.stats.failure(handle.entry.name, type(error).__name__)
                handle.on_failure(loop.time(), False, sent_nothing=error.sent_nothing)
        raise UpstreamError("both tries of a hedged request were cancelled",  # pragma: no cover
                            origin=self.handle.entry.url)
