"""The data port of ``katyusha serve``: raw ASGI, one request at a time through L1, a pick, a forward.

Per request: offer to the L1 queue (wait while it is full of work or no pod
is ready, noticing a client that leaves); pick a ready pod; forward; on the
response head read the pod's piggybacked load into the table, the policy and
the response pool, and rewrite the headers the client sees. A pod that fails
before any response byte is retried on another pod when the method is
idempotent and the body can be sent again. Every request gets an answer.
"""

from __future__ import annotations

import asyncio
import logging
import os
from itertools import count

from katyusha.core.errors import KatyushaError, NoReadyPod
from katyusha.core.feedback import parse_feedback, upstream_unreachable
from katyusha.core.protocol import NONNA_PREFIX, REQUEST_ID
from katyusha.http import PoolSet, ReplayableReceive, UpstreamError, forward
from katyusha.http.errors import ConnectFailed, ResponseAborted
from katyusha.proxy.asgi import lifespan, respond_json
from katyusha.proxy.balancer import Balancer
from katyusha.proxy.config import ProxyConfig
from katyusha.proxy.metrics import ProxyStats

log = logging.getLogger("katyusha")

IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})
_REQUEST_ID = REQUEST_ID.encode()
_NONNA = NONNA_PREFIX.encode()
_SERVER_TIMING = b"server-timing"
_HOST = b"host"
_NO_POD = ""
# Bodies up to this size are kept so a retry can send them again.
_REPLAY_LIMIT = 64 * 1024


class QueuedReceive:
    """Reads a queued request's messages so a client leaving the L1 queue is noticed.

    What it read is handed out again, in order, before the real ``receive``.
    It stops reading (leaving the rest to the forward) once ``limit`` body
    bytes are buffered, since a client that is still uploading is not gone.
    """

    __slots__ = ("_receive", "_buffer", "_size", "_limit", "_has_body", "complete", "disconnected")

    def __init__(self, receive, has_body: bool, limit: int = _REPLAY_LIMIT):
        self._receive = receive
        self._buffer: list[dict] = []
        self._size = 0
        self._limit = limit
        self._has_body = has_body
        self.complete = not has_body
        self.disconnected = False

    async def watch(self) -> None:
        """Returns when the client disconnected, or never until cancelled."""
        while not self.complete and self._size < self._limit:
            message = await self._receive()
            if message["type"] == "http.disconnect":
                self.disconnected = True
                return
            self._buffer.append(message)
            self._size += len(message.get("body", b""))
            self.complete = not message.get("more_body", False)
        if self._size >= self._limit and not self.complete:
            await asyncio.Event().wait()
        while not self.disconnected:
            message = await self._receive()
            if message["type"] == "http.disconnect":
                self.disconnected = True
            else:  # pragma: no cover - servers send nothing after the body but a disconnect
                self._buffer.append(message)

    async def __call__(self) -> dict:
        if self._buffer:
            return self._buffer.pop(0)
        if self.disconnected:
            return {"type": "http.disconnect"}
        return await self._receive()


def _has_body(headers) -> bool:
    for name, value in headers:
        if name == b"content-length":
            return value.strip() != b"0"
        if name == b"transfer-encoding":
            return True
    return False


class DataApp:
    """The raw ASGI app of the data port."""

    def __init__(self, config: ProxyConfig, balancer: Balancer, stats: ProxyStats, pools: PoolSet,
                 *, on_startup=None, on_shutdown=None):
        self.config = config
        self.balancer = balancer
        self.stats = stats
        self.pools = pools
        self.on_startup = on_startup
        self.on_shutdown = on_shutdown
        self.uses_feedback = config.uses_feedback
        self.keep_nonna = config.keep_nonna_headers
        self.upstream_timeout = config.upstream_timeout
        self._ids = count(1)
        self._id_prefix = os.urandom(6).hex()
        self.in_progress = 0
        self._idle = asyncio.Event()

    async def wait_idle(self, timeout: float) -> bool:
        """Wait until no request is being handled; False on timeout."""
        try:
            async with asyncio.timeout(timeout):
                while self.in_progress:
                    self._idle.clear()
                    await self._idle.wait()
        except TimeoutError:
            return False
        return True

    def _request_id(self, headers) -> tuple[bytes, bool]:
        for name, value in headers:
            if name == _REQUEST_ID and value:
                return value, True
        return f"{self._id_prefix}-{next(self._ids):x}".encode(), False

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "lifespan":
                await lifespan(receive, send, self.on_startup, self.on_shutdown)
            return
        balancer = self.balancer
        loop = balancer.loop
        arrived = loop.time()
        headers = scope["headers"]
        request_id, given = self._request_id(headers)
        self.in_progress += 1
        try:
            ticket = balancer.offer(arrived)
        except KatyushaError as exc:
            try:
                await self._error(send, exc.status_hint, str(exc), request_id)
            finally:
                self._done()
            return
        try:
            if not ticket.admitted:
                queued = QueuedReceive(receive, _has_body(headers))
                receive = queued
                watch = loop.create_task(queued.watch())
                waiter = loop.create_task(balancer.wait(ticket))
                try:
                    done, _ = await asyncio.wait(
                        (watch, waiter), return_when=asyncio.FIRST_COMPLETED
                    )
                finally:
                    watch.cancel()
                    # Settled before anyone else reads from the client.
                    await asyncio.gather(watch, return_exceptions=True)
                    if not waiter.done():
                        # The client left while queued (or we are cancelled):
                        # its place goes to the next request.
                        waiter.cancel()
                        await asyncio.gather(waiter, return_exceptions=True)
                if waiter not in done or waiter.cancelled():
                    self.stats.response(499, _NO_POD)
                    return
                error = waiter.exception()
                if error is not None:
                    status = getattr(error, "status_hint", 503)
                    await self._error(send, status, str(error), request_id)
                    return
            l1_wait = loop.time() - arrived
            self.stats.l1_wait.observe(l1_wait)
            await self._dispatch(scope, receive, send, ticket, l1_wait, request_id, given)
        finally:
            balancer.release(ticket)
            self._done()

    def _done(self) -> None:
        self.in_progress -= 1
        if self.in_progress == 0:
            self._idle.set()

    async def _dispatch(self, scope, receive, send, ticket, l1_wait, request_id, given) -> None:
        balancer = self.balancer
        table = balancer.table
        loop = balancer.loop
        stats = self.stats
        extra = self._upstream_headers(scope, request_id, given)
        method = scope["method"]
        tries = 1 + self.config.retries if method in IDEMPOTENT else 1
        if tries > 1 and _has_body(scope["headers"]):
            receive = ReplayableReceive(receive, _REPLAY_LIMIT)
        tried = []
        timing = b"katyusha-queue;dur=%.3f" % (l1_wait * 1000.0)
        for attempt in range(tries):
            now = loop.time()
            entry = balancer.pick(now, tried)
            if entry is None:
                entry = await self._wait_for_pod(ticket)
                if entry is None:
                    await self._error(send, 503, str(NoReadyPod(
                        f"no pod was ready within {self.config.request_timeout:g}s")), request_id)
                    return
                now = loop.time()
            table.on_dispatch(entry, now)
            balancer.dispatched(entry)
            sent_at = now
            outcome = {}

            def on_head(status, out_headers, entry=entry, sent_at=sent_at, outcome=outcome):
                return self._on_head(entry, sent_at, status, out_headers, request_id, given,
                                     timing, l1_wait, outcome)

            try:
                result = await forward(
                    scope, receive, send, self.pools.get(entry.url),
                    extra_request_headers=extra, on_response_head=on_head,
                    timeout=self.upstream_timeout,
                )
            except UpstreamError as exc:
                self._failed(entry, outcome, loop.time(), exc)
                if exc.retryable and attempt + 1 < tries and len(table.ready()) > 0:
                    stats.retries += 1
                    tried.append(entry)
                    continue
                await self._error(send, exc.status_hint, f"pod {entry.name}: {exc}", request_id,
                                  entry.name)
                return
            except ResponseAborted:
                self._finished(entry, outcome, loop.time())
                stats.failure(entry.name, "aborted")
                raise
            except BaseException:
                self._finished(entry, outcome, loop.time())
                raise
            self._finished(entry, outcome, loop.time())
            stats.response(result.status, entry.name)
            return

    async def _wait_for_pod(self, ticket):
        """Admitted, but every pod left since: wait for a ready pod until the ticket's deadline."""
        balancer = self.balancer
        loop = balancer.loop
        while loop.time() < ticket.deadline:
            entry = balancer.pick(loop.time())
            if entry is not None:
                return entry
            if balancer.on_demand is not None:
                balancer.on_demand()
            await asyncio.sleep(min(0.05, max(0.0, ticket.deadline - loop.time())))
        return None

    def _upstream_headers(self, scope, request_id: bytes, given: bool) -> list:
        extra = []
        if not given:
            extra.append((_REQUEST_ID, request_id))
        client = scope.get("client")
        if client:
            extra.append((b"x-forwarded-for", client[0].encode()))
        extra.append((b"x-forwarded-proto", scope.get("scheme", "http").encode()))
        for name, value in scope["headers"]:
            if name == _HOST:
                extra.append((b"x-forwarded-host", value))
                break
        return extra

    def _on_head(self, entry, sent_at, status, headers, request_id, given, timing, l1_wait, outcome):
        if status >= 502 and upstream_unreachable(headers):
            # The pod's nonna never reached its app: a failed connect to this
            # pod (counted on it, retried elsewhere), not an answer to relay.
            raise ConnectFailed("nonna cannot reach the pod's app (Nonna-Error: "
                                "upstream-unreachable)", origin=entry.url, retryable=True)
        now = self.balancer.loop.time()
        latency = now - sent_at
        outcome["head"] = True
        feedback = parse_feedback(headers) if self.uses_feedback else None
        self.balancer.table.on_response(entry, now, latency, feedback)
        self.balancer.policy.observe(entry, now, latency, feedback)
        self.stats.upstream_latency.observe(latency)
        pool = self.balancer.pool
        if pool is not None:
            pool.record(
                entry.name, entry.node, now,
                l1_wait_ms=l1_wait * 1000.0,
                l2_wait_ms=feedback.queue_ms if feedback else None,
                app_ms=feedback.app_ms if feedback else None,
                latency_ms=latency * 1000.0,
                status=status,
            )
        out = []
        has_id = False
        for item in headers:
            name = item[0]
            if name.startswith(_NONNA) and not self.keep_nonna:
                continue
            if name == _REQUEST_ID:
                has_id = True
            out.append(item)
        if not has_id:
            out.append((_REQUEST_ID, request_id))
        out.append((_SERVER_TIMING, timing))
        return out

    def _failed(self, entry, outcome, now, exc) -> None:
        if not outcome.get("head"):
            self.balancer.table.on_failure(entry, now)
        self.stats.failure(entry.name, type(exc).__name__)
        self.balancer.undispatched(entry)

    def _finished(self, entry, outcome, now) -> None:
        if not outcome.get("head"):
            self.balancer.table.on_failure(entry, now)
        self.balancer.undispatched(entry)

    async def _error(self, send, status: int, message: str, request_id: bytes, pod: str = _NO_POD):
        self.stats.response(status, pod)
        try:
            await respond_json(
                send, status, {"error": message, "status": status},
                [(_REQUEST_ID, request_id)],
            )
        except OSError:  # pragma: no cover - the client is gone
            pass
