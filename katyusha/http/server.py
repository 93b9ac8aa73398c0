"""A lean HTTP/1.1 server protocol for ASGI apps, hosted by ``uvicorn.Server``.

uvicorn keeps what it does well (sockets, lifespan, signals, graceful
shutdown: it tracks ``server_state.connections`` and ``.tasks`` and calls
``shutdown()`` on each connection); this class replaces only the per-request
work, which is where a proxy spends its time:

* the response head is held until the first body message and goes out in the
  same ``write`` as the body: one syscall and one TCP segment for a small
  response instead of two;
* no per-request ``asyncio.Event``, keep-alive ``TimerHandle`` or header regex:
  one lazily re-armed timer per connection, a future only when ``receive``
  must really wait, and a line-count check against header injection;
* the request head (URL and headers) is bounded: past ``MAX_HEAD_BYTES`` the
  client gets a 431 instead of the server buffering without end.

Request bodies stream: reading pauses while more than ``HIGH_WATER`` bytes
wait for the app. Response writes wait while the socket's buffer is above its
high-water mark, so a slow reader slows its own response and no other.
Pipelined requests are answered in order.
"""

from __future__ import annotations

import asyncio
import http
import logging
from collections import deque
from urllib.parse import unquote

from httptools import HttpParserError, HttpParserUpgrade, HttpRequestParser, parse_url

from katyusha.http.errors import ResponseAborted

log = logging.getLogger("katyusha.http")

MAX_HEAD_BYTES = 64 * 1024
HIGH_WATER = 64 * 1024
LINGER_SECONDS = 2.0
_ASGI = {"version": "3.0", "spec_version": "2.3"}
_DISCONNECT = {"type": "http.disconnect"}
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_CHUNK_END = b"0\r\n\r\n"
_NO_BODY_STATUS = frozenset({204, 304})


def _status_line(code: int) -> bytes:
    try:
        phrase = http.HTTPStatus(code).phrase
    except ValueError:
        phrase = ""
    return f"HTTP/1.1 {code} {phrase}\r\n".encode("ascii")


_STATUS = {code: _status_line(code) for code in range(100, 600)}


class _HeadTooLarge(Exception):
    pass


class _Exchange:
    """One request and its response on a connection."""

    __slots__ = (
        "scope", "body", "more_body", "waiter", "expect_continue", "keep_alive", "head_only",
        "started", "complete", "disconnected", "status", "headers", "chunked", "remaining",
    )

    def __init__(self, scope: dict, keep_alive: bool, expect_continue: bool, head_only: bool):
        self.scope = scope
        self.body = bytearray()
        self.more_body = True
        self.waiter: asyncio.Future | None = None
        self.expect_continue = expect_continue
        self.keep_alive = keep_alive
        self.head_only = head_only
        self.started = False
        self.complete = False
        self.disconnected = False
        self.status = 0
        self.headers: list = []
        self.chunked = False
        self.remaining: int | None = None

    def wake(self) -> None:
        waiter = self.waiter
        if waiter is not None:
            self.waiter = None
            if not waiter.done():
                waiter.set_result(None)


class LeanHTTPProtocol(asyncio.Protocol):
    """An HTTP/1.1 connection serving ``config.loaded_app``; pass the class as uvicorn's ``http``."""

    def __init__(self, config, server_state, app_state: dict, _loop=None):
        if not config.loaded:
            config.load()
        # Global.
        self.app = config.loaded_app
        self.loop = _loop or asyncio.get_event_loop()
        self.server_state = server_state
        self.connections = server_state.connections
        self.tasks = server_state.tasks
        self.app_state = app_state
        self.root_path = config.root_path
        self.keep_alive_timeout = float(config.timeout_keep_alive)
        # Per connection.
        self.transport: asyncio.Transport | None = None
        self.parser = HttpRequestParser(self)
        self.server: tuple | None = None
        self.client: tuple | None = None
        self.read_paused = False
        self.write_paused = False
        self._drain: asyncio.Future | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._idle_since = 0.0
        self._active: _Exchange | None = None
        self._pipeline: deque[_Exchange] = deque()
        self._closing = False
        # Per request, while its head is parsed.
        self._parsing: _Exchange | None = None
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._head_bytes = 0
        self._raw_head = 0
        self._in_head = False
        self._expect = False

    # -- asyncio.Protocol --------------------------------------------------

    def connection_made(self, transport) -> None:
        self.connections.add(self)
        self.transport = transport
        sockname = transport.get_extra_info("sockname")
        peername = transport.get_extra_info("peername")
        if isinstance(sockname, tuple):
            self.server = (str(sockname[0]), int(sockname[1]))
        if isinstance(peername, tuple):
            self.client = (str(peername[0]), int(peername[1]))
        self._idle_since = self.loop.time()
        self._timer = self.loop.call_at(self._idle_since + self.keep_alive_timeout, self._on_timer)

    def data_received(self, data: bytes) -> None:
        if self._closing:
            return
        if self._active is None:
            self._idle_since = self.loop.time()
        try:
            self.parser.feed_data(data)
        except HttpParserUpgrade:
            # Upgrades are not offered: the request was served as plain HTTP.
            return
        except HttpParserError as exc:
            if isinstance(exc.__context__, _HeadTooLarge):
                self._reject_head_too_large()
            else:
                self._reject(400, f"invalid HTTP request: {exc}")
            return
        if self._in_head:
            # The parser gathers a header line whole before calling on_header:
            # count raw bytes too, so one endless line is refused as well.
            # The first read may hold bytes before the head began: allow slack.
            self._raw_head += len(data)
            if self._raw_head > 2 * MAX_HEAD_BYTES:
                self._reject_head_too_large()

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

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._head_bytes += len(url)
        if self._head_bytes > MAX_HEAD_BYTES:
            raise _HeadTooLarge()

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_bytes += len(name) + len(value) + 4
        if self._head_bytes > MAX_HEAD_BYTES:
            raise _HeadTooLarge()
        name = name.lower()
        if name == b"expect" and value.lower() == b"100-continue":
            self._expect = True
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        self._in_head = False
        parser = self.parser
        method = parser.get_method().decode("ascii")
        url = self._url
        if url[:1] == b"/":
            raw_path, _, query = url.partition(b"?")
            raw_path = raw_path.partition(b"#")[0]
        else:
            parsed = parse_url(url)
            raw_path, query = parsed.path or b"/", parsed.query or b""
        path = raw_path.decode("utf-8", "replace")
        if "%" in path:
            path = unquote(path)
        version = parser.get_http_version()
        scope = {
            "type": "http",
            "asgi": _ASGI,
            "http_version": version,
            "server": self.server,
            "client": self.client,
            "scheme": "http",
            "method": method,
            "root_path": self.root_path,
            "path": self.root_path + path if self.root_path else path,
            "raw_path": raw_path,
            "query_string": query,
            "headers": self._headers,
            "state": self.app_state.copy(),
        }
        keep_alive = version != "1.0" and parser.should_keep_alive()
        exchange = _Exchange(scope, keep_alive, self._expect, method == "HEAD")
        self._parsing = exchange
        if self._active is None:
            self._start(exchange)
        else:
            # Pipelined: answered after the one in progress; stop reading meanwhile.
            self._pipeline.append(exchange)
            self._pause_reading()

    def on_body(self, body: bytes) -> None:
        exchange = self._parsing
        if exchange is None or exchange.complete:
            return
        exchange.body += body
        if len(exchange.body) > HIGH_WATER:
            self._pause_reading()
        exchange.wake()

    def on_message_complete(self) -> None:
        exchange = self._parsing
        if exchange is None:
            return
        exchange.more_body = False
        exchange.wake()

    # -- serving ---------------------------------------------------------

    def _start(self, exchange: _Exchange) -> None:
        self._active = exchange
        task = self.loop.create_task(self._run(exchange))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _run(self, exchange: _Exchange) -> None:
        receive = self._receiver(exchange)
        send = self._sender(exchange)
        try:
            await self.app(exchange.scope, receive, send)
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

    def _receiver(self, exchange: _Exchange):
        async def receive() -> dict:
            if exchange.expect_continue:
                exchange.expect_continue = False
                if not self._closing and not exchange.started:
                    self.transport.write(_CONTINUE)
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

    def _sender(self, exchange: _Exchange):
        async def send(message: dict) -> None:
            if exchange.disconnected or self._closing:
                return
            kind = message["type"]
            if not exchange.started:
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
            if exchange.status:
                data = self._head(exchange, body, more)
            else:
                data = self._frame(exchange, body, more)
            if data:
                self.transport.write(data)
            if not more:
                self._finish(exchange)
            elif self.write_paused:
                await self._wait_drain()

        return send

    def _head(self, exchange: _Exchange, body: bytes, more: bool) -> bytes:
        """The response head, framed for what the app declared, and the first body bytes."""
        status = exchange.status
        exchange.status = 0
        parts = [_STATUS.get(status) or _status_line(status)]
        length = None
        chunked = False
        for name, value in exchange.headers:
            if name == b"content-length":
                length = value
            elif name == b"transfer-encoding":
                chunked = True
                continue
            elif name == b"connection" and b"close" in value.lower():
                exchange.keep_alive = False
                continue
            parts.append(b"%b: %b\r\n" % (name, value))
        no_body = exchange.head_only or status in _NO_BODY_STATUS or status < 200
        if length is not None:
            try:
                exchange.remaining = int(length)
            except ValueError:
                raise RuntimeError(f"bad content-length {length[:40]!r} in the response") from None
        elif chunked or (more and not no_body):
            if exchange.scope["http_version"] == "1.1":
                exchange.chunked = True
                parts.append(b"transfer-encoding: chunked\r\n")
            else:
                exchange.keep_alive = False
        elif not no_body:
            parts.append(b"content-length: %d\r\n" % len(body))
            exchange.remaining = len(body)
        if not exchange.keep_alive or self._closing:
            exchange.keep_alive = False
            parts.append(b"connection: close\r\n")
        parts.append(b"\r\n")
        head = b"".join(parts)
        # Each part is one line: any other count means a CR or LF in a header
        # name or value, which would let the app's input split the response.
        if head.count(b"\n") != len(parts):
            raise RuntimeError("a response header name or value contains a line break")
        if no_body:
            exchange.remaining = None
            exchange.chunked = False
            return head
        return head + self._frame(exchange, body, more)

    def _frame(self, exchange: _Exchange, body: bytes, more: bool) -> bytes:
        if exchange.head_only:
            return b""
        if exchange.chunked:
            if body:
                data = b"%x\r\n%b\r\n" % (len(body), body)
                return data if more else data + _CHUNK_END
            return b"" if more else _CHUNK_END
        remaining = exchange.remaining
        if remaining is not None:
            remaining -= len(body)
            if remaining < 0 or (not more and remaining):
                # The app broke its own Content-Length: cut the connection so the
                # client cannot take a wrong body for a whole one.
                self._close()
                raise RuntimeError("response body does not match its Content-Length")
            exchange.remaining = remaining
        return body

    def _finish(self, exchange: _Exchange) -> None:
        exchange.complete = True
        exchange.wake()
        self.server_state.total_requests += 1
        if not exchange.keep_alive:
            self._close()
            return
        if self._closing:
            return
        self._active = None
        self._idle_since = self.loop.time()
        if self._pipeline:
            self._start(self._pipeline.popleft())
        self._resume_reading()

    # -- flow control, timers, errors -------------------------------------

    def _pause_reading(self) -> None:
        if not self.read_paused and not self._closing:
            self.read_paused = True
            self.transport.pause_reading()

    def _resume_reading(self) -> None:
        if self.read_paused and not self._closing:
            self.read_paused = False
            self.transport.resume_reading()

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

    def _on_timer(self) -> None:
        self._timer = None
        if self._closing:
            return
        now = self.loop.time()
        due = self._idle_since + self.keep_alive_timeout
        if self._active is None and due <= now:
            self._close()
            return
        self._timer = self.loop.call_at(max(due, now + 1.0), self._on_timer)

    def _reject_head_too_large(self) -> None:
        self._reject(431, f"request head (URL and headers) larger than {MAX_HEAD_BYTES} bytes")

    def _reject(self, status: int, message: str) -> None:
        exchange = self._active
        if exchange is None or not exchange.started:
            body = message.encode("ascii", "replace")
            self.transport.write(
                _STATUS[status]
                + b"content-type: text/plain; charset=utf-8\r\ncontent-length: %d\r\n"
                b"connection: close\r\n\r\n%b" % (len(body), body)
            )
        # Closing with unread request bytes would reset the connection and the
        # client could lose the answer: stop sending, drop what still comes, close later.
        self._closing = True
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
        """Called by uvicorn on graceful shutdown: close when idle, else after the response."""
        exchange = self._active
        if exchange is None or exchange.complete:
            self._close()
        else:
            exchange.keep_alive = False
