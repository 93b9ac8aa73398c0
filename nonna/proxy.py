"""nonna's data port: the driver of the sidecar core (katyusha.core.sidecar).

Each request is offered to the core's L2 queue, waits on a future when the
core queues it, is forwarded, and gets the piggyback headers the core
reports when its response head leaves (docs/protocol.md): the application's
responses and nonna's own errors alike. Every decision (admit, queue, refuse,
time out, what to report) is the core's; this module does the I/O: the
sockets, one future per waiting request, and one timer at the core's next
queue deadline.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque

from katyusha.core import protocol
from katyusha.core.errors import DeadlineExceeded, KatyushaError, QueueFull
from katyusha.core.forwarding import strip_nonna
from katyusha.core.sidecar import Piggyback, Report, Sidecar, Ticket
from katyusha.deadline_timer import DeadlineTimer
from katyusha.http import Pool, UpstreamError, forward, tls
from katyusha.http.errors import ResponseAborted, UpstreamTimeout
from nonna.config import NonnaConfig
from nonna.health import HealthCheck
from nonna.metrics import Metrics

log = logging.getLogger("nonna")

# Why nonna answered itself (Nonna-Error, docs/protocol.md): a balancer in front
# may send a request the app never got to another pod whatever its method.
_ERROR = protocol.ERROR.encode()
_MARK = {name: [(_ERROR, name.encode())] for name in (
    protocol.UPSTREAM_UNREACHABLE, protocol.UPSTREAM_FAILED, protocol.UPSTREAM_TIMEOUT,
    protocol.QUEUE_FULL, protocol.QUEUE_TIMEOUT)}
# Bodies read while a request waits are kept so the disconnect stays visible;
# past this much, waiting stops watching rather than hold more in memory.
_WATCH_LIMIT = 1 << 20
_CLIENT_GONE = 499


class ClientReceive:
    """An ASGI ``receive`` that can watch for a disconnect while the request waits.

    Messages read while watching are replayed first. Once the request body has
    ended (or when there is none), further calls return only at a disconnect,
    so a caller may await ``receive()`` as a pure disconnect signal.
    """

    __slots__ = ("_receive", "_buffer", "_buffered", "_body_done", "disconnected")

    def __init__(self, receive, scope_headers):
        self._receive = receive
        self._buffer: deque[dict] = deque()
        self._buffered = 0
        self._body_done = not _body_expected(scope_headers)
        self.disconnected = False

    async def _next(self) -> dict:
        while True:
            message = await self._receive()
            if message["type"] == "http.disconnect":
                self.disconnected = True
                return message
            if self._body_done:
                continue  # the empty body message of a request without one
            if not message.get("more_body", False):
                self._body_done = True
            return message

    async def __call__(self) -> dict:
        if self._buffer:
            return self._buffer.popleft()
        return await self._next()

    async def watch(self) -> None:
        """Read ahead until the client disconnects (then return) or the buffer limit is reached."""
        while self._buffered <= _WATCH_LIMIT:
            message = await self._next()
            if message["type"] == "http.disconnect":
                return
            self._buffer.append(message)
            self._buffered += len(message.get("body", b""))
        await asyncio.Event().wait()  # stop reading; never report a disconnect


def error_marker(exc: KatyushaError) -> str | None:
    """The ``Nonna-Error`` value of nonna's answer to ``exc`` (None: a plain error, e.g. a bad header).

    ``upstream-unreachable`` only when the app provably never got the
    request; a broken or timed-out exchange may have run it.
    """
    if isinstance(exc, UpstreamTimeout):
        return protocol.UPSTREAM_UNREACHABLE if exc.sent_nothing else protocol.UPSTREAM_TIMEOUT
    if isinstance(exc, UpstreamError):
        return protocol.UPSTREAM_UNREACHABLE if exc.sent_nothing else protocol.UPSTREAM_FAILED
    if isinstance(exc, DeadlineExceeded):
        return protocol.QUEUE_TIMEOUT
    return None


def _body_expected(headers) -> bool:
    for name, value in headers:
        if name == b"content-length":
            return value.strip() != b"0"
        if name == b"transfer-encoding":
            return True
    return False


class Nonna:
    """The state of one nonna process and its data-port ASGI app."""

    def __init__(self, config: NonnaConfig):
        self.config = config
        self.sidecar = Sidecar(concurrency=config.concurrency,
                               queue_depth=config.effective_queue_depth,
                               timeout_s=config.timeout, now=time.monotonic())
        self.piggyback = Piggyback(config.concurrency, config.pod, config.node)
        self.metrics = Metrics(self.sidecar)
        self.pool = Pool(config.upstream, max_idle=max(64, config.concurrency),
                         max_head=config.max_response_head_bytes,
                         tls=tls.upstream_context(config.upstream_ca, config.upstream_tls_verify))
        self.health = HealthCheck(config.upstream, config.upstream_health)
        self._ticker: asyncio.Task | None = None
        self._deadlines = DeadlineTimer(self.sidecar.next_deadline, self._expire)

    # -- the core's wake-ups and deadlines (one timer: self._deadlines) ---------------

    @staticmethod
    def _wake(tickets: list[Ticket]) -> None:
        """Tell the waiters of ``tickets`` (admitted by the core) that they hold a slot."""
        for ticket in tickets:
            future = ticket.payload
            if not future.done():
                future.set_result(True)
        # A waiter that is being cancelled still gets its ticket; its handler
        # cancels the ticket in the core, which hands the slot on.

    def _expire(self, now: float) -> None:
        for ticket in self.sidecar.expire(now):
            future = ticket.payload
            if not future.done():
                future.set_result(False)

    async def _tick(self) -> None:
        period = self.config.stats_period
        while True:
            await asyncio.sleep(period)
            self.sidecar.close_period(time.monotonic())

    # -- ASGI ------------------------------------------------------------------

    async def __call__(self, scope, receive, send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._handle(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)

    async def _lifespan(self, receive, send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self._ticker = asyncio.create_task(self._tick())
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self._ticker is not None:
                    self._ticker.cancel()
                self._deadlines.cancel()
                await self.pool.close()
                await self.health.close()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _handle(self, scope, receive, send) -> None:
        sidecar = self.sidecar
        now = time.monotonic()
        try:
            ticket = sidecar.offer(now)
        except QueueFull as exc:
            await self._answer_error(send, exc.status_hint, str(exc), sidecar.report(None, now),
                                     _MARK[protocol.QUEUE_FULL])
            return
        client = ClientReceive(receive, scope["headers"])
        if not ticket.admitted:
            admitted = await self._wait_for_slot(ticket, client)
            if admitted is None:
                self.metrics.observe(_CLIENT_GONE, time.monotonic() - ticket.enqueued_at, None)
                return
            if not admitted:
                error = sidecar.expired_error()
                await self._answer_error(send, error.status_hint, str(error),
                                         sidecar.report(ticket, time.monotonic()),
                                         _MARK[protocol.QUEUE_TIMEOUT])
                return

        piggyback = self.piggyback
        heads: list[Report] = []

        def on_head(status: int, headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
            report = sidecar.head(ticket, time.monotonic())
            heads.append(report)
            return piggyback.response(report, headers)

        finished = False
        headers = scope["headers"]
        kept = strip_nonna(headers)
        if kept is not headers:
            # A client's Nonna-* headers are not for the app (an echo must not pass for a report).
            scope = dict(scope, headers=kept)
        try:
            budget = sidecar.start(ticket, time.monotonic())
            result = await forward(scope, client, send, self.pool, on_response_head=on_head,
                                   timeout=budget)
            status = result.status
        except KatyushaError as exc:  # UpstreamError, DeadlineExceeded, BadInput
            now = time.monotonic()
            self._wake(sidecar.finish(ticket, now))
            finished = True
            await self._answer_error(send, exc.status_hint, self._upstream_message(exc),
                                     sidecar.report(ticket, now), _MARK.get(error_marker(exc), ()))
            return
        except ResponseAborted as exc:
            self._observe(exc.result.status, ticket, heads)
            raise
        finally:
            if not finished:
                self._wake(sidecar.finish(ticket, time.monotonic()))
        self._observe(status, ticket, heads)

    def _observe(self, status: int, ticket: Ticket, heads: list[Report]) -> None:
        queue_s = ticket.admitted_at - ticket.enqueued_at
        self.metrics.observe(status, queue_s, heads[0].app_s if heads else None)

    async def _wait_for_slot(self, ticket: Ticket, client: ClientReceive) -> bool | None:
        """Wait while watching the client: True once the core admits the ticket, False when it
        expires, None when the client left first (the ticket is then cancelled)."""
        future = asyncio.get_running_loop().create_future()
        ticket.payload = future
        self._deadlines.follow()
        watcher = asyncio.ensure_future(client.watch())
        try:
            await asyncio.wait((future, watcher), return_when=asyncio.FIRST_COMPLETED)
        except BaseException:
            watcher.cancel()
            self._leave(ticket)
            raise
        if future.done():
            watcher.cancel()
            return future.result()
        self._leave(ticket)
        return None

    def _leave(self, ticket: Ticket) -> None:
        # Waiting or already admitted: the core frees its place or slot and
        # names who goes instead.
        self._wake(self.sidecar.cancel(ticket, time.monotonic()))

    def _upstream_message(self, exc: KatyushaError) -> str:
        if not isinstance(exc, UpstreamError):
            return str(exc)
        message = f"upstream {exc}" if exc.origin else f"upstream {self.config.upstream}: {exc}"
        if exc.status_hint == 504:
            message += " (within the request timeout)"
        return message

    async def _answer_error(self, send, status: int, message: str, report: Report,
                            extra: list[tuple[bytes, bytes]] | tuple = ()) -> None:
        """Send nonna's own error response with the piggyback of ``report`` and ``extra``."""
        body = f"nonna {self.config.pod}: {message}\n".encode()
        headers = [
            (b"content-type", b"text/plain; charset=utf-8"),
            (b"content-length", str(len(body)).encode()),
            *self.piggyback.error(report),
            *extra,
        ]
        self.metrics.observe(status, report.queue_s, report.app_s if report.app_s > 0 else None)
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
