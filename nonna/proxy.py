"""nonna's data port: admit each request through the L2 queue, forward it, piggyback the load.

Every response that leaves this port, the application's and nonna's own
errors alike, carries the piggyback headers of docs/protocol.md. They are
computed when the response head is sent:

- ``Nonna-Queue-Length``: requests waiting in the L2 queue at that moment;
- ``Nonna-In-Flight``: requests holding an execution slot at that moment,
  not counting the request being answered (the load the next request finds);
- ``Server-Timing``: ``nonna-queue`` (time this request waited for a slot) and
  ``app`` (time from forwarding it to the application's response head), in
  milliseconds, appended to the application's own Server-Timing.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque

from katyusha.core import protocol
from katyusha.core.errors import DeadlineExceeded, KatyushaError, QueueFull
from katyusha.http import Pool, UpstreamError, forward
from katyusha.http.errors import ConnectFailed, ResponseAborted
from nonna.admission import Admission
from nonna.breaker import Breaker
from nonna.config import NonnaConfig
from nonna.health import HealthCheck
from nonna.metrics import Metrics
from nonna.stats import LatencyEstimate, LoadAverager

log = logging.getLogger("nonna")

_QUEUE_LENGTH = protocol.QUEUE_LENGTH.encode()
_IN_FLIGHT = protocol.IN_FLIGHT.encode()
_SERVER_TIMING = protocol.SERVER_TIMING.encode()
# The application never got the request: a balancer may send it to another pod.
_UNREACHABLE = [(protocol.ERROR.encode(), protocol.UPSTREAM_UNREACHABLE.encode())]
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
        self.breaker = Breaker(config.concurrency, config.effective_queue_depth)
        self.averager = LoadAverager(time.monotonic())
        self.latency = LatencyEstimate()
        self.admission = Admission(self.breaker, self._on_change)
        self.metrics = Metrics(self.breaker)
        self.pool = Pool(config.upstream, max_idle=max(64, config.concurrency))
        self.health = HealthCheck(config.upstream, config.upstream_health)
        self.draining = False
        self._ticker: asyncio.Task | None = None
        self._static = [
            (protocol.CONCURRENCY.encode(), str(config.concurrency).encode()),
            (protocol.POD.encode(), config.pod.encode()),
            (protocol.NODE.encode(), config.node.encode()),
        ]

    # -- load bookkeeping ------------------------------------------------------

    def _on_change(self) -> None:
        self.averager.update(time.monotonic(), self.breaker.waiting, self.breaker.in_flight)

    def load_headers(self, holding: bool) -> list[tuple[bytes, bytes]]:
        """The piggyback headers as of now; ``holding``: the request answered holds a slot."""
        in_flight = self.breaker.in_flight - (1 if holding else 0)
        return [
            (_QUEUE_LENGTH, str(self.breaker.waiting).encode()),
            (_IN_FLIGHT, str(in_flight).encode()),
            *self._static,
        ]

    @staticmethod
    def _timing(queue_s: float, app_s: float) -> bytes:
        return b"%b;dur=%.3f, %b;dur=%.3f" % (
            protocol.TIMING_NONNA_QUEUE.encode(), queue_s * 1000.0,
            protocol.TIMING_APP.encode(), app_s * 1000.0,
        )

    async def _tick(self) -> None:
        period = self.config.stats_period
        while True:
            await asyncio.sleep(period)
            self.averager.report(time.monotonic())

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
                await self.pool.close()
                await self.health.close()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _handle(self, scope, receive, send) -> None:
        start = time.monotonic()
        self.averager.arrived(start)
        timeout = self.config.timeout
        client = ClientReceive(receive, scope["headers"])
        admission = self.admission
        try:
            if not self.breaker.try_acquire():
                if not await self._wait_for_slot(client, timeout):
                    self.metrics.observe(_CLIENT_GONE, time.monotonic() - start, None)
                    return
            else:
                self._on_change()
        except (QueueFull, DeadlineExceeded) as exc:
            queue_s = time.monotonic() - start
            await self._answer_error(send, exc.status_hint, str(exc), queue_s, 0.0)
            return

        admitted = time.monotonic()
        queue_s = admitted - start
        remaining = timeout - queue_s
        timing = {}

        def on_head(status: int, headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
            app_s = timing["app"] = time.monotonic() - admitted
            self.latency.observe(app_s * 1000.0)
            ours = self._timing(queue_s, app_s)
            out = []
            upstream_timing = []
            for item in headers:
                if item[0] == _SERVER_TIMING:
                    upstream_timing.append(item[1])
                else:
                    out.append(item)
            upstream_timing.append(ours)
            out.append((_SERVER_TIMING, b", ".join(upstream_timing)))
            out.extend(self.load_headers(True))
            return out

        released = False
        try:
            if remaining <= 0:
                raise DeadlineExceeded(f"request spent its {timeout:g}s timeout in the queue")
            result = await forward(scope, client, send, self.pool, on_response_head=on_head,
                                   timeout=remaining)
            status = result.status
        except KatyushaError as exc:  # UpstreamError, DeadlineExceeded, BadInput
            app_s = time.monotonic() - admitted
            admission.release()
            released = True
            await self._answer_error(send, exc.status_hint, self._upstream_message(exc),
                                     queue_s, app_s,
                                     _UNREACHABLE if isinstance(exc, ConnectFailed) else ())
            return
        except ResponseAborted as exc:
            status = exc.result.status
            self.metrics.observe(status, queue_s, timing.get("app"))
            raise
        finally:
            if not released:
                admission.release()
        self.metrics.observe(status, queue_s, timing.get("app"))

    async def _wait_for_slot(self, client: ClientReceive, timeout: float) -> bool:
        """Queue for a slot while watching the client; False when the client left first.

        Raises QueueFull and DeadlineExceeded from the admission.
        """
        waiter = asyncio.ensure_future(self.admission.acquire(timeout))
        if waiter.done():  # pragma: no cover - ensure_future never runs the coroutine inline
            waiter.result()
            return True
        watcher = asyncio.ensure_future(client.watch())
        try:
            await asyncio.wait((waiter, watcher), return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            waiter.cancel()
            watcher.cancel()
            raise
        if waiter.done():
            watcher.cancel()
            waiter.result()
            return True
        waiter.cancel()
        try:
            await waiter
        except (asyncio.CancelledError, QueueFull, DeadlineExceeded):
            return False
        # The slot was granted just as the client left: hand it on.
        self.admission.release()
        return False

    def _upstream_message(self, exc: KatyushaError) -> str:
        if not isinstance(exc, UpstreamError):
            return str(exc)
        message = f"upstream {exc}" if exc.origin else f"upstream {self.config.upstream}: {exc}"
        if exc.status_hint == 504:
            message += " (within the request timeout)"
        return message

    async def _answer_error(self, send, status: int, message: str, queue_s: float, app_s: float,
                            extra: list[tuple[bytes, bytes]] | tuple = ()) -> None:
        """Send nonna's own error response, with the piggyback headers and ``extra``; the slot is not held."""
        body = f"nonna {self.config.pod}: {message}\n".encode()
        headers = [
            (b"content-type", b"text/plain; charset=utf-8"),
            (b"content-length", str(len(body)).encode()),
            (_SERVER_TIMING, self._timing(queue_s, app_s)),
            *self.load_headers(False),
            *extra,
        ]
        self.metrics.observe(status, queue_s, app_s if app_s > 0 else None)
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
