"""A lean HTTP/1.1 server protocol for ASGI apps, hosted by ``uvicorn.Server``.

uvicorn keeps what it does well (sockets, TLS, lifespan, graceful shutdown:
it tracks ``server_state.connections`` and ``.tasks`` and calls ``shutdown()``
on each connection); this class replaces the per-request work, which is
where a proxy spends its time, and enforces the data port's limits
(:class:`~katyusha.http.limits.EdgeLimits`):

* the response head is held until the first body message and goes out in the
  same ``write`` as the body: one syscall and one TCP segment for a small
  response instead of two;
* one lazily re-armed timer per connection enforces the keep-alive, header
  and body timeouts (a slowloris is closed at ``header_timeout`` from its
  first byte, whatever it trickles); no per-request ``asyncio.Event``;
* the request head is bounded (``MAX_HEAD_BYTES`` and ``max_headers``: 431),
  the body too (``max_body_bytes``: 413, before reading when Content-Length
  says so), and so are connections (``max_connections``: a canned 503);
* an error in what a client pipelined after a request is answered only after
  that request's response was written (then 400 and close);
* an upgrade request (``Connection: Upgrade``) reaches the app with the
  ``katyusha.tunnel`` scope extension; the app may answer it by sending
  ``{"type": "katyusha.tunnel", "status": 101, "headers": [...], "peer":
  TunnelPeer}``, which writes the 101 head and relays bytes both ways
  (:mod:`katyusha.http.tunnel`) until either side closes; that ``send``
  returns when the tunnel ended. Any other answer is relayed and the
  connection closed after it;
* with the listening socket (:meth:`LeanHTTPProtocol.with_limits`), a
  connection accepted by the event loop accepts what else waits on that
  socket, up to ``ACCEPT_BURST``: uvloop (libuv since 1.45) accepts one
  connection per loop iteration, so on a busy proxy a burst of new
  connections waited one iteration each (at 256 connections, seconds for
  the last ones; see docs/performance.md);
* with a TLS context (:meth:`LeanHTTPProtocol.with_limits`) the first byte
  of a connection decides: a TLS handshake goes to uvloop's TLS protocol
  wrapping a fresh connection of this class, anything else is plain HTTP on
  the TLS port and gets a 400 saying so.

Request bodies stream: reading pauses while more than ``HIGH_WATER`` bytes
wait for the app. Response writes wait while the socket's buffer is above its
high-water mark, so a slow reader slows its own response and no other.
Pipelined requests are answered in order. HTTP/1.0 clients get keep-alive
only when they ask for it, and never a chunked body.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from collections import deque
from urllib.parse import unquote

from httptools import HttpParserError, HttpParserUpgrade, HttpRequestParser

from katyusha.http.errors import ResponseAborted
from katyusha.http.exchange import (
    MAX_HEAD_BYTES,
    NO_BODY_STATUS,
    STATUS,
    BodyLengthError,
    Exchange,
    Refusal,
    absolute_form,
    frame_body,
    head_too_large,
    response_head,
    status_line,
)
from katyusha.http.limits import EdgeLimits
from katyusha.http.tls import tls_protocol
from katyusha.http.tunnel import TUNNEL_EXTENSION, splice

log = logging.getLogger("katyusha.http")

HIGH_WATER = 64 * 1024
LINGER_SECONDS = 2.0
# On a graceful shutdown, how long a connection with no request yet has to send its head.
FIRST_REQUEST_GRACE = 0.5
_ASGI = {"version": "3.0", "spec_version": "2.3"}
_DISCONNECT = {"type": "http.disconnect"}
# The methods' names as the parser gives them, to their str (one lookup, no decode a request).
_METHOD_NAMES = {name.encode(): name for name in (
    "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT")}
# The request header names on_header looks at (Proxy-Connection: the parser reads it as Connection).
_HEAD_KINDS = frozenset({b"expect", b"content-length", b"transfer-encoding", b"connection",
                         b"proxy-connection"})
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_ALLOW = b"GET, HEAD, POST, PUT, DELETE, PATCH, OPTIONS"
# Connections accepted at once beside the one the event loop accepted, as
# HAProxy's tune.maxaccept (64, divided by twice the number of processes
# sharing the listener): enough to drain a burst in a few loop iterations,
# few enough that workers sharing the socket each take a share.
ACCEPT_BURST = 64

# What the connection's one timer watches (see _on_timer).
_IDLE = 0    # between requests: keepalive_timeout since the last response
_HEAD = 1    # a request head is arriving: header_timeout since its first byte
_BODY = 2    # a request body is arriving: body_timeout since the last progress
_BUSY = 3    # the app has the whole request: no client timeout
_TUNNEL = 4  # upgraded: the tunnel keeps its own idle timer


class LeanHTTPProtocol(asyncio.Protocol):
    """An HTTP/1.1 connection serving ``config.loaded_app``; pass the class as uvicorn's ``http``.

    ``limits`` (a class attribute, see :meth:`with_limits`) holds the data port's limits.
    """

    limits = EdgeLimits()
    # With a context, the connection's first byte says TLS (a handshake record) or not (see _sniff).
    tls: ssl.SSLContext | None = None
    # The listening socket, to accept a burst of connections at once (see _accept_burst).
    listener: socket.socket | None = None
    accept_burst = ACCEPT_BURST
    # Slots: thousands of idle connections each hold one of these.
    __slots__ = (
        "app", "loop", "server_state", "connections", "tasks", "app_state", "root_path",
        "keepalive_timeout", "header_timeout", "body_timeout", "max_body", "max_headers",
        "transport", "parser", "server", "client", "scheme", "read_paused", "write_paused",
        "_drain", "_timer", "_timer_at", "_phase", "_since", "_read_at", "_head_started", "_active",
        "_pipeline", "_closing", "_broken", "_deferred", "_upgrading", "_parsing", "_url",
        "_headers", "_head_bytes", "_raw_head", "_in_head", "_expect", "_length", "_chunked",
        "_connection",
        "_config", "_sniffing", "_fast", "_exchange_class", "_burst", "_stopping", "__weakref__",
    )

    @classmethod
    def with_limits(cls, limits: EdgeLimits, tls: ssl.SSLContext | None = None,
                    listener: socket.socket | None = None, sharing: int = 1
                    ) -> type[LeanHTTPProtocol]:
        """A subclass enforcing ``limits`` (and serving TLS with ``tls``): uvicorn's ``http``.

        With ``tls``, hand uvicorn no SSL context: the protocol starts TLS
        itself, so that a client speaking plain HTTP to the port gets a 400
        saying so rather than a failed handshake. ``listener``: the socket
        uvicorn serves, from which a connection the event loop accepted
        accepts the others waiting (on uvloop; asyncio's loop does it itself);
        ``sharing``: how many processes accept from it (fewer at once each).
        """
        burst = ACCEPT_BURST if sharing <= 1 else max(1, ACCEPT_BURST // (2 * sharing))
        return type(cls.__name__, (cls,), {"limits": limits, "tls": tls, "listener": listener,
                                           "accept_burst": burst, "__slots__": ()})

    def __init__(self, config, server_state, app_state: dict, _loop=None):
        if not config.loaded:
            config.load()
        # Global.
        self._config = config
        self.app = config.loaded_app
        # An app may take body-less requests without a task (see _start and respond).
        self._fast = getattr(self.app, "fast", None)
        # An app with a fast path may make its requests' exchanges of its own Exchange subclass.
        self._exchange_class = getattr(self.app, "exchange_class", Exchange)
        self.loop = _loop or asyncio.get_event_loop()
        self.server_state = server_state
        self.connections = server_state.connections
        self.tasks = server_state.tasks
        self.app_state = app_state
        self.root_path = config.root_path
        limits = self.limits
        self.keepalive_timeout = limits.keepalive_timeout
        self.header_timeout = limits.header_timeout
        self.body_timeout = limits.body_timeout
        self.max_body = limits.max_body_bytes or None
        self.max_headers = limits.max_headers or None
        # Per connection.
        self.transport: asyncio.Transport | None = None
        self.parser = HttpRequestParser(self)
        self.server: tuple | None = None
        self.client: tuple | None = None
        self.scheme = "http"
        self._sniffing = False
        # Whether connection_made accepts the connections waiting beside this one.
        self._burst = self.listener is not None and _accepts_one_at_a_time(self.loop)
        self.read_paused = False
        self.write_paused = False
        self._drain: asyncio.Future | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._phase = _HEAD
        self._since = 0.0
        # The loop's time at the start of the read being parsed (data_received).
        self._read_at = 0.0
        self._head_started = False
        self._active: Exchange | None = None
        self._pipeline: deque[Exchange] = deque()
        self._closing = False
        # Set by a graceful shutdown: the request under way (or the first one) is the last.
        self._stopping = False
        # Set once the byte stream cannot be parsed further: later bytes are dropped.
        self._broken = False
        # An error to answer once the requests before it were answered.
        self._deferred: tuple[int, str] | None = None
        # The upgrade request whose following bytes are kept for its tunnel.
        self._upgrading: Exchange | None = None
        # Per request, while its head is parsed.
        self._parsing: Exchange | None = None
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._head_bytes = 0
        self._raw_head = 0
        self._in_head = False
        self._expect = False
        self._length: bytes | None = None
        self._chunked = False
        # The head named Connection (or Proxy-Connection, which the parser reads alike).
        self._connection = False

    # -- asyncio.Protocol --------------------------------------------------

    def connection_made(self, transport) -> None:
        self.transport = transport
        if self._burst:
            self._accept_burst()
        sockname = transport.get_extra_info("sockname")
        peername = transport.get_extra_info("peername")
        if isinstance(sockname, tuple):
            self.server = (str(sockname[0]), int(sockname[1]))
        if isinstance(peername, tuple):
            self.client = (str(peername[0]), int(peername[1]))
        if transport.get_extra_info("sslcontext") is not None:
            self.scheme = "https"
        elif self.tls is not None:
            self._sniffing = True
        limit = self.limits.max_connections
        if limit and len(self.connections) >= limit:
            log.warning("connection refused: %d client connections open (max-connections)",
                        len(self.connections))
            self._reject(503, f"too many connections (max-connections {limit})")
            return
        self.connections.add(self)
        # A new connection has header_timeout to send its first head.
        self._since = now = self.loop.time()
        self._arm(now + self.header_timeout)

    def data_received(self, data: bytes) -> None:
        if self._closing or self._broken:
            return
        if self._sniffing:
            self._sniffing = False
            if data[:1] == b"\x16":  # a TLS handshake record
                self._start_tls(data)
            else:
                self._fail(400, "this port speaks HTTPS (TLS): use an https:// URL")
            return
        upgrading = self._upgrading
        if upgrading is not None:
            # Bytes after an upgrade request belong to the tunnel, if there will be one.
            upgrading.tunnel_data += data
            if len(upgrading.tunnel_data) > HIGH_WATER:
                self._pause_reading()
            return
        # One clock read a read: the parser's callbacks below take this read's time.
        self._read_at = now = self.loop.time()
        if self._phase is _IDLE:
            self._phase = _HEAD
            self._since = now
        self._head_started = True
        try:
            self.parser.feed_data(data)
        except HttpParserUpgrade as exc:
            self._upgraded(data[exc.args[0]:] if exc.args else b"")
            return
        except HttpParserError as exc:
            refusal = exc.__context__
            if isinstance(refusal, Refusal):
                self._fail(refusal.status, refusal.message)
            else:
                self._fail(400, f"invalid HTTP request: {exc}")
            return
        phase = self._phase
        if phase is _HEAD:
            # The parser gathers a header line whole before calling on_header:
            # count raw bytes too, so one endless line is refused as well.
            # The first read may hold bytes before the head began: allow slack.
            self._raw_head += len(data)
            if self._raw_head > 2 * MAX_HEAD_BYTES:
                self._fail(431, head_too_large())
                return
            self._arm(self._since + self.header_timeout)
        elif phase is _BODY:
            self._arm(self._since + self.body_timeout)

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc) -> None:
        self.connections.discard(self)
        self._closing = True
        for exchange in (self._active, *self._pipeline):
            if exchange is not None and not exchange.complete:
                exchange.disconnected = True
                exchange.wake()
        self._pipeline.clear()
        self._wake_drain()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        self._wake_drain()

    # -- parser callbacks ------------------------------------------------

    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = []
        self._head_bytes = 0
        self._raw_head = 0
        self._in_head = True
        self._expect = False
        self._length = None
        self._chunked = False
        self._connection = False
        if self._phase is not _HEAD:
            self._phase = _HEAD
            self._since = self._read_at

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._head_bytes += len(url)
        if self._head_bytes > MAX_HEAD_BYTES:
            raise Refusal(431, head_too_large())

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_bytes += len(name) + len(value) + 4
        if self._head_bytes > MAX_HEAD_BYTES:
            raise Refusal(431, head_too_large())
        headers = self._headers
        if self.max_headers is not None and len(headers) >= self.max_headers:
            raise Refusal(431, f"more than {self.max_headers} header fields (max-headers)")
        name = name.lower()
        if name in _HEAD_KINDS:  # one set lookup for most names
            if name == b"expect":
                if value.lower() == b"100-continue":
                    self._expect = True
            elif name == b"content-length":
                self._length = value
            elif name == b"transfer-encoding":
                self._chunked = True
            else:
                self._connection = True
        headers.append((name, value))

    def on_headers_complete(self) -> None:
        self._in_head = False
        parser = self.parser
        raw_method = parser.get_method()
        method = _METHOD_NAMES.get(raw_method) or raw_method.decode("ascii")
        if method == "CONNECT":
            raise Refusal(405, "CONNECT is not supported: this is a reverse proxy")
        url = self._url
        headers = self._headers
        asterisk = False
        if url[:1] == b"/":
            # Looked for in the str: `in` of bytes first tries the byte as an int, and raises
            # and clears a TypeError inside (about 140 ns a test, against 15 for a str's).
            # UTF-8 decoding, even replacing, keeps every ASCII byte as it is.
            path = url.decode("utf-8", "replace")
            if "?" in path or "#" in path:
                raw_path, _, query = url.partition(b"?")
                raw_path = raw_path.partition(b"#")[0]
                path = raw_path.decode("utf-8", "replace")
            else:  # most targets: a path alone
                raw_path = url
                query = b""
        elif url == b"*":
            if method != "OPTIONS":
                raise Refusal(400, "the request target * is only for OPTIONS")
            raw_path, query, asterisk, path = b"*", b"", True, "*"
        else:
            raw_path, query, headers = absolute_form(url, headers)
            path = raw_path.decode("utf-8", "replace")
        if "%" in path:
            path = unquote(path)
        keep_alive = parser.should_keep_alive()
        # The parser keeps a request alive without a Connection header only for HTTP/1.1 (it
        # refuses versions but 0.9, 1.0, 1.1 and 2.0): the version's string (a format in the
        # parser, about 300 ns) is asked for only otherwise.
        version = "1.1" if keep_alive and not self._connection else parser.get_http_version()
        # The keys the app's fast path and the answer read; _run adds the rest of the ASGI
        # scope before an app task sees it, which most body-less requests never need.
        scope = {
            "http_version": version,
            "client": self.client,
            "scheme": self.scheme,
            "method": method,
            "path": self.root_path + path if self.root_path else path,
            "raw_path": raw_path,
            "query_string": query,
            "headers": headers,
        }
        # HTTP/1.0 keeps the connection only when it asks to (Connection: keep-alive).
        exchange = self._exchange_class(scope, keep_alive and not self._stopping,
                                        self._expect, method == "HEAD")
        # What most requests leave at the class defaults is set only when it differs.
        if asterisk:
            exchange.asterisk = True
        upgrade = parser.should_upgrade()
        if upgrade:
            exchange.upgrade = True
            exchange.keep_alive = False
            exchange.tunnel_data = bytearray()
            scope["extensions"] = {TUNNEL_EXTENSION: {}}
        length = self._length
        if length is not None and self.max_body is not None:
            try:
                declared = int(length)
            except ValueError:
                declared = 0  # the parser refuses a bad Content-Length itself
            if declared > self.max_body:
                raise Refusal(413, f"request body of {declared} bytes is larger than "
                                    f"{self.max_body} (max-body-bytes)")
        has_body = not upgrade and (self._chunked or (length is not None
                                                      and length.strip() != b"0"))
        if has_body:
            exchange.has_body = True
            self._phase = _BODY
            self._since = self._read_at
        else:
            self._phase = _BUSY
        self._parsing = exchange
        if self._active is None:
            fast = self._fast
            if fast is not None and not has_body and not upgrade and not asterisk:
                # _start(), inline for the app's fast path: once per body-less request.
                self._active = exchange
                if not fast(exchange, self, self._read_at):
                    self.spawn(exchange, self.app)
            else:
                self._start(exchange)
        else:
            # Pipelined: answered after the one in progress; stop reading meanwhile.
            self._pipeline.append(exchange)
            self._pause_reading()

    def on_body(self, body: bytes) -> None:
        exchange = self._parsing
        if exchange is None or exchange.complete:
            return
        exchange.received += len(body)
        if self.max_body is not None and exchange.received > self.max_body:
            raise Refusal(413, f"request body larger than {self.max_body} bytes (max-body-bytes)")
        self._since = self._read_at
        exchange.body += body
        if len(exchange.body) > HIGH_WATER:
            self._pause_reading()
        exchange.wake()

    def on_message_complete(self) -> None:
        if self._active is None and not self._pipeline:
            # Answered before its body ended (OPTIONS *, an early error): idle now.
            self._phase = _IDLE
            self._since = self._read_at
        else:
            self._phase = _BUSY
        exchange = self._parsing
        if exchange is None:
            return
        exchange.more_body = False
        if exchange.waiter is not None:  # most requests: nobody waits for the end of the body
            exchange.wake()

    # -- serving ---------------------------------------------------------

    def _start(self, exchange: Exchange) -> None:
        self._active = exchange
        if exchange.asterisk:
            # OPTIONS * asks about the server itself (RFC 9110 9.3.7): answered here.
            exchange.started = True
            exchange.status = 200
            exchange.headers = [(b"allow", _ALLOW)]
            self.transport.write(response_head(exchange, b"", False, self._must_close()))
            self._finish(exchange)
            return
        fast = self._fast
        if fast is not None and not exchange.has_body and not exchange.upgrade and fast(exchange, self):
            return
        self.spawn(exchange, self.app)

    # -- the app's fast path: a body-less request without a task ----------

    def spawn(self, exchange: Exchange, app) -> None:
        """Run ``app(scope, receive, send)`` for ``exchange`` in a task, as any request is run.

        The app's ``fast(exchange, server, now=None)`` (when it has one) is offered each
        body-less request first (``now``: the loop's time of the read that brought the
        request, when it is offered from that read); it returns False to leave it to the task, or
        True after it took it: it then answers with :meth:`respond` or hands
        it on with this method.
        """
        task = self.loop.create_task(self._run(exchange, app))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def respond(self, exchange: Exchange, status: int, headers: list, body: bytes) -> None:
        """A whole response in one write, as ``send`` of its start and its one body message."""
        if exchange.disconnected or self._closing or exchange.started:
            return
        exchange.started = True
        exchange.status = status
        exchange.headers = headers
        try:
            data = response_head(exchange, body, False, self._must_close())
        except RuntimeError as exc:  # a bad header or length from the pod: as the task path does
            log.error("exception in the ASGI app", exc_info=exc)
            self._close()
            return
        self.transport.write(data)
        self._finish(exchange)

    def respond_lines(self, exchange: Exchange, status: int, lines: bytes | list[bytes], count: int,
                      has_length: bool, body: bytes, now: float | None = None) -> None:
        """A whole response in one write, its header lines already built: ``count`` lines of
        ``name: value\r\n`` (as bytes, or as a list of the pieces they join from), with no
        hop-by-hop header and, when ``has_length``, the body's own Content-Length. This adds
        the status line, the Content-Length when missing and the connection's framing, as
        :meth:`respond` would, and joins the whole answer once. ``now``: the loop's time, when
        the caller has just read it (the connection's idle time starts then)."""
        if exchange.disconnected or self._closing or exchange.started:
            return
        exchange.started = True
        no_body = exchange.head_only or status in NO_BODY_STATUS or status < 200
        parts = [STATUS.get(status) or status_line(status)]
        if lines.__class__ is list:
            parts += lines
        else:
            parts.append(lines)
        # The status line and the blank line, then one a framing line.
        count += 2
        if not has_length and not no_body:
            parts.append(b"content-length: %d\r\n" % len(body))
            count += 1
        if not exchange.keep_alive or self._closing or (self._deferred is not None
                                                        and not self._pipeline):
            exchange.keep_alive = False
            parts.append(b"connection: close\r\n\r\n")
            count += 1
        elif exchange.scope["http_version"] != "1.1":
            parts.append(b"connection: keep-alive\r\n\r\n")
            count += 1
        else:
            parts.append(b"\r\n")
        if no_body or not body:
            data = b"".join(parts)
            head_end = len(data)
        else:
            parts.append(body)
            data = b"".join(parts)
            head_end = len(data) - len(body)
        if data.count(b"\n", 0, head_end) != count:
            # A line break inside a name or value would let the pod split the response.
            log.error("exception in the ASGI app", exc_info=RuntimeError(
                "a response header name or value contains a line break"))
            self._close()
            return
        self.transport.write(data)
        self._finish(exchange, now)

    async def _run(self, exchange: Exchange, app) -> None:
        scope = exchange.scope
        # The rest of the ASGI scope (on_headers_complete built what the fast path reads).
        scope["type"] = "http"
        scope["asgi"] = _ASGI
        scope["server"] = self.server
        scope["root_path"] = self.root_path
        scope["state"] = self.app_state.copy()
        receive = self._receiver(exchange)
        send = self._sender(exchange)
        try:
            await app(scope, receive, send)
        except BaseException as exc:
            if isinstance(exc, ResponseAborted):
                log.warning("%s", exc)
            elif not isinstance(exc, asyncio.CancelledError):
                log.error("exception in the ASGI app", exc_info=exc)
            if not exchange.started and not exchange.disconnected:
                exchange.keep_alive = False
                await send({"type": "http.response.start", "status": 500,
                            "headers": [(b"content-type", b"text/plain; charset=utf-8")]})
                await send({"type": "http.response.body", "body": b"Internal Server Error"})
            elif not exchange.complete:
                self._close()
            if isinstance(exc, asyncio.CancelledError):
                raise
            return
        if not exchange.complete and not exchange.disconnected:
            if not exchange.started:
                log.error("the ASGI app returned without starting a response")
                exchange.keep_alive = False
                await send({"type": "http.response.start", "status": 500, "headers": []})
                await send({"type": "http.response.body", "body": b"Internal Server Error"})
            else:
                log.error("the ASGI app returned without completing its response")
                self._close()

    def _receiver(self, exchange: Exchange):
        async def receive() -> dict:
            if exchange.expect_continue:
                exchange.expect_continue = False
                if not self._closing and not exchange.started:
                    self.transport.write(_CONTINUE)
                    # The client waited for this before sending: the body's clock starts now.
                    self._since = self.loop.time()
            while not exchange.disconnected and not exchange.complete:
                more = exchange.more_body
                if exchange.body or more is False:
                    body = bytes(exchange.body)
                    exchange.body.clear()
                    if more:
                        self._resume_reading()
                    else:
                        # The end was handed out: later calls wait for a disconnect.
                        exchange.more_body = None
                    return {"type": "http.request", "body": body, "more_body": bool(more)}
                if more:
                    self._resume_reading()
                waiter = exchange.waiter = self.loop.create_future()
                await waiter
            return _DISCONNECT

        return receive

    def _sender(self, exchange: Exchange):
        async def send(message: dict) -> None:
            kind = message["type"]
            if exchange.disconnected or self._closing:
                if kind == TUNNEL_EXTENSION:
                    message["peer"].transport.close()
                return
            if not exchange.started:
                if kind == TUNNEL_EXTENSION:
                    await self._tunnel(exchange, message)
                    return
                if kind != "http.response.start":
                    raise RuntimeError(f"expected http.response.start, got {kind!r}")
                exchange.started = True
                exchange.expect_continue = False
                exchange.status = message["status"]
                exchange.headers = message.get("headers") or []
                return
            if exchange.complete:
                raise RuntimeError(f"{kind!r} sent after the response completed")
            if kind != "http.response.body":
                raise RuntimeError(f"expected http.response.body, got {kind!r}")
            body = message.get("body", b"")
            more = message.get("more_body", False)
            try:
                if exchange.status:
                    close = self._closing or (self._deferred is not None and not self._pipeline)
                    data = response_head(exchange, body, more, close)
                else:
                    data = frame_body(exchange, body, more)
            except BodyLengthError:
                # Cut the connection so the client cannot take a wrong body for a whole one.
                self._close()
                raise
            if data:
                self.transport.write(data)
            if not more:
                self._finish(exchange)
            elif self.write_paused:
                await self._wait_drain()

        return send

    def _must_close(self) -> bool:
        """Whether the connection closes after the response being written, whatever it says."""
        return self._closing or (self._deferred is not None and not self._pipeline)

    def _finish(self, exchange: Exchange, now: float | None = None) -> None:
        exchange.complete = True
        if exchange.waiter is not None:
            exchange.wake()
        self.server_state.total_requests += 1
        if not exchange.keep_alive:
            if self._deferred is not None and not self._pipeline and not self._closing:
                self._reject(*self._deferred)
            else:
                self._close()
            return
        if self._closing:
            return
        self._active = None
        if self._pipeline:
            self._start(self._pipeline.popleft())
        elif self._deferred is not None:
            self._reject(*self._deferred)
            return
        elif self._phase is _BUSY:
            self._phase = _IDLE
            self._since = self.loop.time() if now is None else now
        if self.read_paused:
            self._resume_reading()

    async def _tunnel(self, exchange: Exchange, message: dict) -> None:
        """Write the 101 head and relay bytes both ways until the tunnel closes."""
        if not exchange.upgrade or message.get("status") != 101:
            raise RuntimeError("katyusha.tunnel needs an upgrade request and status 101")
        exchange.started = True
        parts = [STATUS[101], b"connection: upgrade\r\n"]
        for name, value in message.get("headers") or ():
            if name != b"connection" and name != b"content-length" and name != b"transfer-encoding":
                parts.append(b"%b: %b\r\n" % (name, value))
        parts.append(b"\r\n")
        head = b"".join(parts)
        if head.count(b"\n") != len(parts):
            message["peer"].transport.close()
            raise RuntimeError("a response header name or value contains a line break")
        pending = bytes(exchange.tunnel_data or b"")
        exchange.tunnel_data = None
        self._upgrading = None
        self._phase = _TUNNEL
        self.transport.write(head)
        transport = self.transport
        self._closing = True  # nothing but the tunnel writes to this connection now
        try:
            await splice(transport, pending, message["peer"],
                         idle_timeout=self.limits.upgrade_idle_timeout,
                         paused=(self.write_paused, self.read_paused))
        finally:
            exchange.complete = True
            self.server_state.total_requests += 1
            self.connections.discard(self)
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None

    def _start_tls(self, first: bytes) -> None:
        """Hand the connection to a TLS protocol wrapping a fresh HTTP one; ``first`` starts the handshake."""
        self.connections.discard(self)
        self._closing = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        inner = self._sibling()
        waiter = self.loop.create_future()
        # A failed handshake closes the connection; nobody awaits the waiter.
        waiter.add_done_callback(lambda done: done.cancelled() or done.exception())
        tls = tls_protocol()(self.loop, inner, self.tls, waiter, server_side=True,
                            ssl_handshake_timeout=self.header_timeout)
        transport = self.transport
        transport.set_protocol(tls)
        tls.connection_made(transport)
        view = memoryview(first)
        while view:
            buffer = tls.get_buffer(len(view))
            size = min(len(buffer), len(view))
            buffer[:size] = view[:size]
            tls.buffer_updated(size)
            view = view[size:]

    def _accept_burst(self) -> None:
        """Accept up to ``accept_burst`` connections waiting on the listener, served as this one is."""
        listener = self.listener
        loop = self.loop
        for _ in range(self.accept_burst):
            try:
                sock, _ = listener.accept()
            except OSError:  # none waiting (EAGAIN), or the listener closed: the loop's accept goes on
                return
            task = loop.create_task(loop.connect_accepted_socket(self._sibling, sock))
            task.add_done_callback(_accepted)

    def _sibling(self) -> LeanHTTPProtocol:
        """A connection of the same server that accepts no burst (accepted by one, or TLS's inner)."""
        protocol = type(self)(self._config, self.server_state, self.app_state, _loop=self.loop)
        protocol._burst = False
        return protocol

    def _upgraded(self, rest: bytes) -> None:
        """The parser stopped after an upgrade request's head: keep what follows for the tunnel."""
        exchange = self._parsing
        if exchange is None or not exchange.upgrade:
            self._fail(400, "invalid HTTP request: unexpected upgrade")
            return
        exchange.more_body = False
        exchange.wake()
        exchange.tunnel_data += rest
        self._upgrading = exchange
        self._phase = _BUSY
        if len(exchange.tunnel_data) > HIGH_WATER:
            self._pause_reading()

    # -- flow control, timers, errors -------------------------------------

    def _pause_reading(self) -> None:
        if not self.read_paused and not self._closing:
            self.read_paused = True
            self.transport.pause_reading()

    def _resume_reading(self) -> None:
        if self.read_paused and not self._closing and not self._broken:
            self.read_paused = False
            self.transport.resume_reading()
            if self._phase is _BODY or self._phase is _HEAD:
                # Time spent paused was ours, not the client's.
                self._since = self.loop.time()

    async def _wait_drain(self) -> None:
        if self._closing:
            return
        waiter = self._drain = self.loop.create_future()
        await waiter

    def _wake_drain(self) -> None:
        waiter = self._drain
        if waiter is not None:
            self._drain = None
            if not waiter.done():
                waiter.set_result(None)

    def _arm(self, due: float) -> None:
        """Make sure the timer fires by ``due``."""
        timer = self._timer
        if timer is None or self._timer_at > due:
            if timer is not None:
                timer.cancel()
            self._timer = self.loop.call_at(due, self._on_timer)
            self._timer_at = due

    def _on_timer(self) -> None:
        self._timer = None
        if self._closing:
            return
        now = self.loop.time()
        phase = self._phase
        if phase is _IDLE:
            due = self._since + self.keepalive_timeout
        elif phase is _HEAD:
            due = self._since + self.header_timeout
        elif phase is _BODY:
            due = self._since + self.body_timeout
        else:
            # Busy: the app's own timeouts apply; look again later.
            due = now + min(self.keepalive_timeout, self.header_timeout)
            self._timer = self.loop.call_at(due, self._on_timer)
            self._timer_at = due
            return
        if self.read_paused and phase is not _IDLE:
            # We stopped reading: the client is not late.
            self._since = now
            due = now + (self.header_timeout if phase is _HEAD else self.body_timeout)
        if due > now:
            self._timer = self.loop.call_at(due, self._on_timer)
            self._timer_at = due
            return
        if phase is _IDLE:
            self._close()
        elif phase is _HEAD:
            if self._head_started:
                self._fail(408, f"request head not received within {self.header_timeout:g}s "
                                "(header-timeout)")
            else:
                self._close()
        else:
            self._fail(408, f"no request body bytes for {self.body_timeout:g}s (body-timeout)")

    def _fail(self, status: int, message: str) -> None:
        """The client's byte stream cannot be served further: answer ``status`` in turn, then close.

        A request whose body was cut is dropped (its app sees a disconnect);
        requests before it are answered first.
        """
        self._broken = True
        self._phase = _BUSY
        parsing = self._parsing
        if parsing is not None and parsing.more_body is True and not parsing.complete:
            parsing.keep_alive = False
            if parsing is self._active:
                if parsing.started:
                    self._close()
                    return
                parsing.disconnected = True
                parsing.wake()
                self._active = None
            else:
                try:
                    self._pipeline.remove(parsing)
                except ValueError:
                    pass
        active = self._active
        if (active is not None and not active.complete) or self._pipeline:
            self._deferred = (status, message)
            if not self.read_paused and not self._closing:
                self.read_paused = True
                self.transport.pause_reading()
            return
        self._reject(status, message)

    def _reject(self, status: int, message: str) -> None:
        body = message.encode("ascii", "replace")
        self.transport.write(
            STATUS[status]
            + b"content-type: text/plain; charset=utf-8\r\ncontent-length: %d\r\n"
            b"connection: close\r\n\r\n%b" % (len(body), body)
        )
        # Closing with unread request bytes would reset the connection and the
        # client could lose the answer: stop sending, drop what still comes, close later.
        self._closing = True
        self._broken = True
        if self.transport.can_write_eof():
            self.transport.write_eof()
        if self.read_paused:
            self.read_paused = False
            self.transport.resume_reading()
        self.loop.call_later(LINGER_SECONDS, self.transport.close)

    def _close(self) -> None:
        if not self._closing:
            self._closing = True
            self.transport.close()

    def shutdown(self) -> None:
        """Called by uvicorn on graceful shutdown: the request under way is the connection's last.

        A kept-alive connection between requests closes now (a client whose request
        crossed the close sends it again, as HTTP clients do on a reused connection).
        A connection accepted just before the listener closed, or one whose head is
        on its way, is still served that request (with ``connection: close``): its
        client has no earlier answer to tell it the connection was good, so it would
        not send again. One that sends nothing within FIRST_REQUEST_GRACE closes.
        """
        if self._phase is _TUNNEL:
            return  # an upgraded connection ends when its tunnel does (or at the shutdown timeout)
        self._stopping = True
        exchange = self._active
        if exchange is not None and not exchange.complete:
            exchange.keep_alive = False
        elif self._phase is _HEAD and not self._closing:
            self.loop.call_later(FIRST_REQUEST_GRACE, self._close_unless_busy)
        else:
            self._close()
        for pending in self._pipeline:
            pending.keep_alive = False

    def _close_unless_busy(self) -> None:
        exchange = self._active
        if exchange is None or exchange.complete:
            self._close()


def _accepts_one_at_a_time(loop) -> bool:
    """Whether ``loop`` accepts one connection per iteration (uvloop); asyncio's accepts a burst."""
    return type(loop).__module__.startswith("uvloop")


def _accepted(task: asyncio.Task) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.warning("an accepted connection could not be set up: %s", task.exception())
