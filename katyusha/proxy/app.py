"""The data port of ``katyusha serve``: raw ASGI, a driver of the service balancers and nothing more.

Per request: route it to a service (``Host``, then path prefix; 404 when
none), offer it to the service's L1 queue and wait while its ticket waits
(noticing a client that leaves), dispatch it, forward it, and hand the
response head, a failure and the end to the core's per-request handle. Every
decision (admission, expiry, the pod, retry or not, counts) is the core's
(:mod:`katyusha.core.service`); here is I/O: sockets, futures, headers.
Every request gets an answer; every answer katyusha writes itself says
whether the request may have run on a pod (``Katyusha-Maybe-Executed``).
"""

from __future__ import annotations

import asyncio
import logging
import os
from itertools import count

from katyusha.core import protocol
from katyusha.core.errors import KatyushaError
from katyusha.core.feedback import nonna_error, parse_feedback
from katyusha.core.forwarding import DROPPED_PREFIX as _DROPPED
from katyusha.core.forwarding import REWRITTEN as FORWARDING_HEADERS
from katyusha.core.forwarding import Forwarding
from katyusha.core.protocol import NONNA_PREFIX, REQUEST_ID
from katyusha.core.queue import parse_priority
from katyusha.core.routing import Router
from katyusha.core.service import Dispatch
from katyusha.http import PoolSet, ReplayableReceive, UpstreamError, forward
from katyusha.http.connection import Stale
from katyusha.http.errors import ConnectFailed, ResponseAborted
from katyusha.http.exchange import Exchange
from katyusha.http.forward import REQUEST_HOP_BY_HOP, relay_response, response_headers
from katyusha.proxy.asgi import lifespan, respond_json
from katyusha.proxy.config import ProxyConfig
from katyusha.proxy.hedging import HedgedForward
from katyusha.proxy.metrics import ProxyStats
from katyusha.proxy.service import LiveService, wake

log = logging.getLogger("katyusha")

IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})
_REQUEST_ID = REQUEST_ID.encode()
_NONNA = NONNA_PREFIX.encode()
_SERVER_TIMING = b"server-timing"
_HOST = b"host"
_NO_POD = ""
MAYBE_EXECUTED = b"katyusha-maybe-executed"
_UNREACHABLE = protocol.UPSTREAM_UNREACHABLE
_APP_FAILED = protocol.UPSTREAM_FAILED
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


def _body_length(headers) -> int | None:
    """The request body's length from its headers: 0 for none, None when unknown (chunked)."""
    for name, value in headers:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
        if name == b"transfer-encoding":
            return None
    return 0


def _has_body(headers) -> bool:
    for name, value in headers:
        if name == b"content-length":
            return value.strip() != b"0"
        if name == b"transfer-encoding":
            return True
    return False


class _Head:
    """The ``on_response_head`` of one request's forwards: feeds the core, rewrites the headers."""

    __slots__ = ("handle", "request_id", "timing", "stats", "keep_nonna", "uses_feedback", "loop")

    def __init__(self, app: DataApp, stats: ProxyStats, request_id: bytes, timing: bytes):
        self.handle: Dispatch | None = None
        self.request_id = request_id
        self.timing = timing
        self.stats = stats
        self.keep_nonna = app.keep_nonna
        self.uses_feedback = app.uses_feedback
        self.loop = app.loop

    def __call__(self, status: int, headers: list, raw: bool = False) -> list:
        """The headers to send downstream. ``raw``: ``headers`` still hold the hop-by-hop ones
        (the fast path drops them here, in the same pass)."""
        handle = self.handle
        pod_error = None
        if status >= 500:
            pod_error = nonna_error(headers)
            if pod_error == _UNREACHABLE:
                # The pod's nonna never reached its app: a failed connect to this
                # pod (it leaves the ready set; any method is retried elsewhere).
                raise ConnectFailed("nonna cannot reach the pod's app (Nonna-Error: "
                                    "upstream-unreachable)", origin=handle.entry.url, retryable=True,
                                    sent_nothing=True)
            if pod_error == _APP_FAILED:
                # The app's connection broke before its answer: it may have run the
                # request, so only an idempotent one is sent elsewhere.
                raise UpstreamError("the pod's app closed its connection before answering (Nonna-Error: "
                                "upstream-failed)", origin=handle.entry.url, retryable=True)
        feedback = parse_feedback(headers) if self.uses_feedback else None
        upstream = handle.on_head(self.loop.time(), feedback, status, pod_error)
        self.stats.upstream(handle.entry.name, upstream)
        if raw:
            headers = response_headers(headers)
        timing = self.timing
        if self.keep_nonna:
            timing += _UPSTREAM_TIMING % (upstream * 1000.0, _woken_ms(handle))
        return _downstream(headers, self.keep_nonna, self.request_id, timing)


def _upstream_lines(headers: list) -> tuple[list[bytes], int, bool, bytes | None] | None:
    """A body-less request's headers (as forwarding rewrote them) as the pod's header lines,
    in one pass: (the pieces the lines join from, not joined: ``Pool.start_lines`` joins the
    whole head once; their count, whether Host is among them, the X-Request-Id the client
    gave or None). Hop-by-hop headers and any framing are dropped, as ``request_headers`` and
    ``Pool`` do; None when a Connection header names other headers to drop."""
    parts: list[bytes] = []
    count = 0
    has_host = False
    request_id = None
    for name, value in headers:
        kind = _SPECIAL_REQUEST.get(name)
        if kind is not None:
            if kind == _HOP:
                if name == b"connection" and value not in _PLAIN_CONNECTION:
                    return None
                continue
            if kind == _HOST_KIND:
                has_host = True
            elif value and request_id is None:
                request_id = value
        parts += (name, b": ", value, b"\r\n")
        count += 1
    return parts, count, has_host, request_id


def _client_lines(headers: list, forwarding: Forwarding, client: str | None, scheme: str
                  ) -> tuple[list[bytes], int, bool, bytes | None] | None:
    """:func:`_upstream_lines` of ``forwarding.rewrite(headers, client, scheme)`` in one pass over
    the client's own headers, for a request that brings no forwarding header (the lines
    rewrite would add come whole from :meth:`Forwarding.added_lines`; ``Nonna-*`` headers are
    dropped as rewrite drops them). None for any other request (or a Connection header
    naming others): the caller takes the general way."""
    parts: list[bytes] = []
    count = 0
    has_host = False
    host = None
    request_id = None
    for name, value in headers:
        kind = _SPECIAL_CLIENT.get(name)
        if kind is not None:
            if kind == _HOP:
                if name == b"connection" and value not in _PLAIN_CONNECTION:
                    return None
                continue
            if kind == _FORWARDING:
                return None
            if kind == _HOST_KIND:
                has_host = True
                host = value
            elif value and request_id is None:
                request_id = value
        elif name.startswith(_DROPPED):
            continue
        parts += (name, b": ", value, b"\r\n")
        count += 1
    added, added_count = forwarding.added_lines(client, scheme, host)
    parts.append(added)
    return parts, count + added_count, has_host, request_id


def _downstream(headers: list, keep_nonna: bool, request_id: bytes, timing: bytes) -> list:
    """The client's headers from a pod's (hop-by-hop ones already dropped): ``Nonna-*`` dropped
    unless kept, ``X-Request-Id`` added when the pod sent none, our ``Server-Timing`` added."""
    out = []
    has_id = False
    for item in headers:
        name = item[0]
        if name.startswith(_NONNA) and not keep_nonna:
            continue
        if name == _REQUEST_ID:
            has_id = True
        out.append(item)
    if not has_id:
        out.append((_REQUEST_ID, request_id))
    out.append((_SERVER_TIMING, timing))
    return out


def _downstream_lines(headers: list, keep_nonna: bool, request_id: bytes, timing: bytes
                      ) -> tuple[list[bytes], int, bool, bool] | None:
    """:func:`_downstream` of a pod's raw headers, as header lines in one pass, for
    ``LeanHTTPProtocol.respond_lines``: (the pieces the lines join from, not joined: the
    server joins the whole answer once; their count; whether Content-Length is among them;
    whether the pod sent any ``Nonna-*`` header). None when a Connection header names other
    headers to drop."""
    parts: list[bytes] = []
    has_id = False
    has_length = False
    has_nonna = False
    kinds = _RESPONSE_KINDS
    for name, value in headers:
        kind = kinds[name]
        if kind is None:  # most headers: passed on as they are
            parts += (name, b": ", value, b"\r\n")
        elif kind == _NONNA_KIND:
            has_nonna = True
            if keep_nonna:
                parts += (name, b": ", value, b"\r\n")
        elif kind == _HOP:
            if name == b"connection" and value not in _PLAIN_CONNECTION:
                return None
        else:
            if kind == _LENGTH:
                has_length = True
            else:
                has_id = True
            parts += (name, b": ", value, b"\r\n")
    # Four parts a line; then X-Request-Id when the pod sent none, and Server-Timing.
    count = (len(parts) >> 2) + 1
    if not has_id:
        parts += (_REQUEST_ID_LINE, request_id, b"\r\n")
        count += 1
    parts += (_SERVER_TIMING_LINE, timing, b"\r\n")
    return parts, count, has_length, has_nonna


class FastExchange(Exchange):
    """An exchange of katyusha's HTTP server that can wait for its pod's head on the fast path.

    The server makes each exchange of this class (``DataApp.exchange_class``). When
    :meth:`DataApp.fast` sends the request from the parser's callback, it keeps here
    what the answer needs (``app``, ``live``, ``request_id``, ``given``, ``handle``,
    ``server``) and hands the exchange itself to the pool as the head's callback (see
    ``__call__``): no object of its own a request for the wait.
    """

    app: DataApp
    live: LiveService
    request_id: bytes
    given: bool
    handle: Dispatch
    server: object

    def __call__(self, response, error: BaseException | None, now: float | None) -> None:
        """The pod's head came back on the fast path (or the try failed first, ``error``):
        answer a whole response, hand on the rest. (The connection calls this; ``now`` is the
        loop's time at the read that brought the head: the core's, the latency's and the
        client connection's idle mark.)"""
        app = self.app
        live = self.live
        handle = self.handle
        # Called once: the exchange lets go of its server (no cycle through the server's
        # last exchange).
        server = self.server
        self.server = None
        pending: object = error
        if error is None:
            status = response.status
            pending = response
            if response.complete and 200 <= status < 500:
                try:
                    body = response.take()
                except UpstreamError as exc:
                    response.release()
                    pending = exc
                else:
                    ticket = handle.ticket
                    admitted_at = ticket.admitted_at  # ticket.l1_wait, without the call
                    l1_wait = 0.0 if admitted_at is None else admitted_at - ticket.enqueued_at
                    timing = (b"katyusha-queue;dur=%.3f" % (l1_wait * 1000.0)
                              if l1_wait else _NO_WAIT)
                    latency = now - handle.sent_at
                    if app.keep_nonna:
                        timing += _UPSTREAM_TIMING % (latency * 1000.0, _woken_ms(handle))
                    headers = response.headers
                    ended = False
                    try:
                        # What _Head does for a status under 500: one pass from the pod's
                        # headers to the client's header lines (it tells whether there is
                        # any Nonna-* header to parse feedback from), then the core's one
                        # call for a whole response (the head and the end), then the answer.
                        built = _downstream_lines(headers, app.keep_nonna, self.request_id,
                                                  timing)
                        feedback = (parse_feedback(headers) if app.uses_feedback
                                    and (built is None or built[3]) else None)
                        admitted = live.core.complete(handle, now, feedback, status)
                        ended = True
                        if admitted:
                            wake(admitted)
                        if built is None:  # a Connection header naming others: the general filter
                            server.respond(self, status, _downstream(
                                response_headers(headers), app.keep_nonna, self.request_id,
                                timing), body)
                        else:
                            server.respond_lines(self, status, built[0],
                                                      built[1], built[2], body, now)
                        live.stats.answered(handle.entry.name, status, latency, l1_wait)
                    finally:
                        if not ended:  # the core's call failed, or what came before it
                            live.end(ticket)
                        # app._done(), inline: once per request.
                        app.in_progress -= 1
                        if app.in_progress == 0:
                            app._idle.set()
                    return
        elif isinstance(error, Stale):
            app.pools.get(handle.entry.url).stale_retries += 1
            pending = None  # sent again through Pool.request
        server.spawn(self, _Continue(app, live, handle.ticket, self.request_id,
                                                   self.given, handle, pending))


class DataApp:
    """The raw ASGI app of the data port, in front of one or more services."""

    # What katyusha's HTTP server makes for each request (the fast path waits on it).
    exchange_class = FastExchange

    def __init__(self, config: ProxyConfig, services: list[LiveService], pools: PoolSet,
                 *, on_startup=None, on_shutdown=None):
        self.config = config
        self.services = services
        self.router: Router[LiveService] = Router(
            [(live, live.hosts, live.path_prefix) for live in services])
        self.pools = pools
        self.on_startup = on_startup
        self.on_shutdown = on_shutdown
        self.uses_feedback = config.uses_feedback
        self.keep_nonna = config.keep_nonna_headers
        self.upstream_timeout = config.upstream_timeout
        header = config.priority_header
        self.priority_header = header.encode() if header else None
        self.priority_classes = config.priority_classes
        self.forwarding = Forwarding(config.trusted_proxies)
        # Requests that matched no service.
        self.unrouted = ProxyStats()
        self._ids = count(1)
        self._id_prefix = os.urandom(6).hex().encode()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.in_progress = 0
        self._idle = asyncio.Event()

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        return self._loop

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
        return self._new_request_id(), False

    def _new_request_id(self) -> bytes:
        return b"%b-%x" % (self._id_prefix, next(self._ids))

    def _priority(self, headers) -> int:
        """The priority class the request asks for (0 when it names none). Raises BadInput (400)."""
        wanted = self.priority_header
        for name, value in headers:
            if name == wanted:
                return parse_priority(value, wanted.decode(), self.priority_classes)
        return 0

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "lifespan":
                await lifespan(receive, send, self.on_startup, self.on_shutdown)
            elif scope["type"] == "websocket":
                await _refuse_websocket(scope, receive, send)
            return
        headers = scope["headers"]
        router = self.router
        live = router.only or router.match(_header(headers, _HOST), scope["path"])
        request_id, given = self._request_id(headers)
        self.in_progress += 1
        if live is None:
            try:
                await self._no_service(scope, send, request_id)
            finally:
                self._done()
            return
        try:
            priority = self._priority(headers) if self.priority_header is not None else 0
            ticket = live.offer(self.loop.time(), priority, scope["method"] in IDEMPOTENT)
        except KatyushaError as exc:
            try:
                await self._error(live.stats, send, exc.status_hint, str(exc), request_id)
            finally:
                self._done()
            return
        try:
            await self._serve(live, scope, receive, send, ticket, request_id, given)
        finally:
            live.end(ticket)
            self._done()

    def _done(self) -> None:
        self.in_progress -= 1
        if self.in_progress == 0:
            self._idle.set()

    # -- the fast path: a body-less request without a task until the pod answers --

    def fast(self, exchange, server, now: float | None = None) -> bool:
        """Take a body-less request from katyusha's HTTP server without a task (see LeanHTTPProtocol.spawn).

        The same steps as :meth:`__call__`: when the ticket is admitted at
        once, a pod is picked and an idle connection to it is at hand, the
        request goes out from here and the exchange (:class:`FastExchange`) answers from the
        connection's callback; anything else (waiting, a new connection, an
        error, a streamed or failed response) goes on in a task, in the same
        code as the ASGI path. False leaves the request to ``__call__``.
        ``now``: the loop's time, when the server has just read it.
        """
        if self.priority_header is not None:
            return False
        scope = exchange.scope
        headers = scope["headers"]
        router = self.router
        live = router.only or router.match(_header(headers, _HOST), scope["path"])
        if live is None or live.core.hedge_delay(scope["method"], False) is not None:
            return False  # a request that may be hedged needs its task for the hedge's timer
        if now is None:
            now = (self._loop or self.loop).time()
        try:
            # The offer and, when admitted at once, the dispatch: one core call.
            ticket = live.core.offer_dispatch(now, idempotent=scope["method"] in IDEMPOTENT)
        except KatyushaError:
            return False  # the ASGI path offers again and answers the refusal
        self.in_progress += 1
        handle = ticket.dispatch
        if handle is None:
            live.waits(ticket)
        # One pass from the client's headers to the pod's header lines (forwarding's
        # added), which also finds the request's id; when the client brought forwarding
        # headers, the same from forwarding's rewrite (None: a Connection header names others).
        client = scope["client"]
        address = client[0] if client else None
        built = _client_lines(headers, self.forwarding, address, scope["scheme"])
        if built is None:
            built = _upstream_lines(self.forwarding.rewrite(headers, address, scope["scheme"]))
        if built is None:
            request_id, given = self._request_id(headers)
        elif built[3] is None:
            request_id, given = b"%b-%x" % (self._id_prefix, next(self._ids)), False
        else:
            request_id, given = built[3], True
        if handle is None or built is None:
            server.spawn(exchange, _Continue(self, live, ticket, request_id, given, handle, None))
            return True
        lines, count, has_host, _ = built
        if not given:
            lines += (_REQUEST_ID_LINE, request_id, b"\r\n")
            count += 1
        try:
            target = scope["raw_path"]
            query = scope["query_string"]
            if query:
                target = target + b"?" + query
            method = _METHODS.get(scope["method"]) or scope["method"].encode()
            # What the answer needs, on the exchange (a FastExchange: see exchange_class).
            exchange.app = self
            exchange.live = live
            exchange.request_id = request_id
            exchange.given = given
            exchange.handle = handle
            exchange.server = server
            # The connection calls the exchange back at the end of the read that brings
            # the pod's head: no future, no loop callback in between.
            sent = self.pools.get(handle.entry.url).start_lines(
                method, target, lines, count, has_host, timeout=self.upstream_timeout,
                on_head=exchange, now=now)
        except Exception:  # BadInput and the like: the ASGI path answers them
            sent = None
        if sent is None:
            exchange.server = None
            server.spawn(exchange, _Continue(self, live, ticket, request_id, given, handle, None))
        return True

    async def _serve(self, live: LiveService, scope, receive, send, ticket, request_id, given,
                     handle: Dispatch | None = None, pending: object = None) -> None:
        """Serve an offered request: wait for admission and a pod, forward, retry, answer.

        ``handle``: the try already dispatched (the fast path's); ``pending``:
        what that try already got, a Response or an UpstreamError.
        """
        loop = self.loop
        stats = live.stats
        # Admitted, then a pod: the ticket waits (again, when the last pod
        # left since its admission) until a core call wakes or expires it.
        if handle is None and ticket.admitted:
            handle = live.dispatch(ticket, loop.time())
        while handle is None:
            if not isinstance(receive, QueuedReceive):
                receive = QueuedReceive(receive, _has_body(scope["headers"]))
            if not await self._admitted(live, ticket, receive, send, request_id):
                return
            handle = live.dispatch(ticket, loop.time())
        l1_wait = ticket.l1_wait
        stats.l1_wait.observe(l1_wait)
        head = _Head(self, stats, request_id, b"katyusha-queue;dur=%.3f" % (l1_wait * 1000.0))
        upstream_scope = self._upstream_scope(scope, request_id, given)
        has_body = _has_body(scope["headers"])
        if ticket.tries_left and has_body:
            receive = ReplayableReceive(receive, _REPLAY_LIMIT)
        # Hedged requests (katyusha.core.hedge): the pair runs in katyusha.proxy.hedging.
        delay = live.core.hedge_delay(scope["method"], _body_length(scope["headers"]) if has_body else 0)
        hedged = None if delay is None else HedgedForward(live, ticket, delay, self.pools,
                                                          self.upstream_timeout, has_body)
        while True:
            head.handle = handle
            entry = handle.entry
            try:
                if pending is not None:
                    got, pending = pending, None
                    if isinstance(got, BaseException):
                        raise got
                    result = await relay_response(got, receive, send, on_response_head=head)
                elif hedged is None:
                    result = await forward(
                        upstream_scope, receive, send, self.pools.get(entry.url),
                        on_response_head=head, timeout=self.upstream_timeout,
                    )
                else:
                    try:
                        result = await hedged.forward(handle, head, upstream_scope, receive, send)
                    finally:
                        handle = hedged.handle
                        entry = handle.entry
            except UpstreamError as exc:
                stats.failure(entry.name, type(exc).__name__)
                again = handle.on_failure(loop.time(), exc.retryable, sent_nothing=exc.sent_nothing)
                live.health_changed()
                if again:
                    stats.retries += 1
                    handle = await self._redispatch(live, ticket, send, request_id)
                    if handle is not None:
                        continue
                    return
                await self._error(stats, send, exc.status_hint, f"pod {entry.name}: {exc}",
                                  request_id, entry.name, maybe_executed=ticket.maybe_executed)
                return
            except ResponseAborted:
                stats.failure(entry.name, "aborted")
                raise
            if result.status >= 500:
                live.health_changed()
            stats.response(result.status, entry.name)
            return

    async def _redispatch(self, live: LiveService, ticket, send, request_id: bytes) -> Dispatch | None:
        """The next try's handle; waits first while no pod is ready (the core requeued the ticket).

        None when the ticket expired meanwhile (answered here). The client is not
        watched in this wait (part of its body is held for the replay); the
        request's deadline bounds it.
        """
        while (handle := live.dispatch(ticket, self.loop.time())) is None:
            try:
                await ticket.payload
            except KatyushaError as exc:
                await self._error(live.stats, send, exc.status_hint, str(exc), request_id,
                                  maybe_executed=ticket.maybe_executed)
                return None
        return handle

    async def _admitted(self, live: LiveService, ticket, queued: QueuedReceive, send,
                        request_id: bytes) -> bool:
        """Wait until the ticket is admitted; False (answered) when it expired or the client left."""
        future = ticket.payload
        watch = self.loop.create_task(queued.watch())
        try:
            await asyncio.wait((watch, future), return_when=asyncio.FIRST_COMPLETED)
        finally:
            watch.cancel()
            # Settled before anyone else reads from the client.
            await asyncio.gather(watch, return_exceptions=True)
        if not future.done():
            # The client left while queued: live.end() gives the place back.
            live.stats.response(499, _NO_POD)
            return False
        error = future.exception()
        if error is not None:
            await self._error(live.stats, send, getattr(error, "status_hint", 503), str(error),
                              request_id)
            return False
        return True

    def _upstream_scope(self, scope, request_id: bytes, given: bool) -> dict:
        """The scope forwarded to pods: its headers rewritten (forwarding and trust, katyusha.core.forwarding)."""
        return {**scope, "headers": self._upstream_headers(scope, request_id, given)}

    def _upstream_headers(self, scope, request_id: bytes, given: bool) -> list:
        client = scope.get("client")
        headers = self.forwarding.rewrite(scope["headers"], client[0] if client else None,
                                          scope.get("scheme", "http"))
        if not given:
            headers.append((_REQUEST_ID, request_id))
        return headers

    async def _no_service(self, scope, send, request_id: bytes) -> None:
        host = (_header(scope["headers"], _HOST) or b"").decode("latin-1")
        path = scope["path"]
        self.unrouted.response(404, _NO_POD)
        try:
            await respond_json(send, 404, {
                "error": f"no service answers host {host!r} and path {path!r}",
                "status": 404, "host": host, "path": path, "maybe_executed": False,
            }, [(_REQUEST_ID, request_id), (MAYBE_EXECUTED, b"false")])
        except OSError:  # pragma: no cover - the client is gone
            pass

    async def _error(self, stats: ProxyStats, send, status: int, message: str, request_id: bytes,
                     pod: str = _NO_POD, *, maybe_executed: bool = False):
        """katyusha's own answer; ``maybe_executed``: a failed try may have run the request on a pod."""
        stats.response(status, pod)
        if maybe_executed:
            message += "; the request may have been executed: a try failed after it reached a pod"
        try:
            await respond_json(
                send, status, {"error": message, "status": status, "maybe_executed": maybe_executed},
                [(_REQUEST_ID, request_id), (MAYBE_EXECUTED, b"true" if maybe_executed else b"false")],
            )
        except OSError:  # pragma: no cover - the client is gone
            pass


class _Continue:
    """The rest of a fast-path request in a task, as an ASGI app: the same code as ``__call__``'s."""

    __slots__ = ("app", "live", "ticket", "request_id", "given", "handle", "pending")

    def __init__(self, app: DataApp, live: LiveService, ticket, request_id: bytes, given: bool,
                 handle: Dispatch | None, pending: object):
        self.app = app
        self.live = live
        self.ticket = ticket
        self.request_id = request_id
        self.given = given
        self.handle = handle
        self.pending = pending

    async def __call__(self, scope, receive, send) -> None:
        app = self.app
        try:
            await app._serve(self.live, scope, receive, send, self.ticket, self.request_id,
                             self.given, self.handle, self.pending)
        finally:
            self.live.end(self.ticket)
            app._done()


_HOP_RESPONSE = frozenset(name.encode() for name in protocol.HOP_BY_HOP)
# The response headers _downstream_lines treats apart, and how.
_HOP, _LENGTH, _ID = 0, 1, 2
_SPECIAL_RESPONSE = {**{name: _HOP for name in _HOP_RESPONSE}, b"content-length": _LENGTH,
                     _REQUEST_ID: _ID}
_REQUEST_ID_LINE = _REQUEST_ID + b": "
_NONNA_KIND = 5
# Names longer than this are classified each time rather than kept.
_KIND_NAME_MAX = 64
_KINDS_MAX = 1024


class _ResponseKinds(dict):
    """What _downstream_lines does with each response header name: a kind of
    ``_SPECIAL_RESPONSE``, ``_NONNA_KIND`` or None (passed on), one dict lookup a header.
    A name not seen before is classified on the miss and kept, up to ``_KINDS_MAX``
    names of at most ``_KIND_NAME_MAX`` bytes (pods send a few names over and over)."""

    __slots__ = ()

    def __missing__(self, name: bytes) -> int | None:
        kind = _NONNA_KIND if name.startswith(_NONNA) else None
        if len(name) <= _KIND_NAME_MAX and len(self) < _KINDS_MAX:
            self[name] = kind
        return kind


_RESPONSE_KINDS = _ResponseKinds(_SPECIAL_RESPONSE)
# The request headers _upstream_lines treats apart: framing goes with hop-by-hop (no body here).
_HOST_KIND = 3
_SPECIAL_REQUEST = {**{name: _HOP for name in REQUEST_HOP_BY_HOP},
                    b"content-length": _HOP, b"transfer-encoding": _HOP,
                    _HOST: _HOST_KIND, _REQUEST_ID: _ID}
# The client's headers _client_lines treats apart: those, and the ones forwarding rewrites.
_FORWARDING = 4
_SPECIAL_CLIENT = {**{name: _FORWARDING for name in FORWARDING_HEADERS}, **_SPECIAL_REQUEST}
_SERVER_TIMING_LINE = _SERVER_TIMING + b": "
_PLAIN_CONNECTION = frozenset({b"keep-alive", b"Keep-Alive", b"close", b"Close"})
_NO_WAIT = b"katyusha-queue;dur=0.000"
# With keep-nonna-headers (debugging): the time from the dispatch to the pod's response head,
# the pod's slot held for it, and from the request's admission to that dispatch (a request let
# in from the L1 queue waits for its task to run: its slot is taken, its pod idle meanwhile).
# benchmarks.sim_vs_live reads the round trip to nonna and that wake from them.
_UPSTREAM_TIMING = b", katyusha-upstream;dur=%.3f, katyusha-wake;dur=%.3f"


def _woken_ms(handle: Dispatch) -> float:
    """Milliseconds from the ticket's (last) admission to this try's dispatch."""
    admitted_at = handle.ticket.admitted_at
    return 0.0 if admitted_at is None else max(0.0, (handle.sent_at - admitted_at) * 1000.0)
_METHODS = {m: m.encode() for m in ("GET", "POST", "PUT", "DELETE", "HEAD", "PATCH", "OPTIONS")}


async def _refuse_websocket(scope, receive, send) -> None:
    """A WebSocket under ``http-server: uvicorn``: 501 saying which server relays them.

    katyusha relays upgrades as bytes (katyusha.http.tunnel) on its own HTTP
    server only; uvicorn's would make us speak WebSocket frames on both sides.
    """
    await receive()  # websocket.connect
    if "websocket.http.response" in scope.get("extensions", {}):
        body = (b'{"error":"WebSocket upgrades are relayed with http-server: lean '
                b'(the default), not uvicorn","status":501}')
        await send({"type": "websocket.http.response.start", "status": 501,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "websocket.http.response.body", "body": body})
    else:
        await send({"type": "websocket.close", "code": 1011})


def _header(headers, wanted: bytes) -> bytes | None:
    for name, value in headers:
        if name == wanted:
            return value
    return None

