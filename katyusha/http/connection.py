"""One HTTP/1.1 client connection on an asyncio Protocol, and the response it streams.

A connection carries one exchange at a time (no pipelining). The response
head is parsed by httptools; body bytes go into the :class:`Response`'s
buffer, and reading from the socket pauses while that buffer holds more than
``high_water`` bytes, so a slow consumer never makes us hold a whole body.
When the response ends and the connection may be kept alive, it is handed
back to its pool from inside the parser callback, before the consumer has
even looked at the body: small responses free their connection at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

from httptools import HttpParserError, HttpParserUpgrade, HttpResponseParser

from katyusha.http.errors import (
    ConnectFailed,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamTimeout,
)
from katyusha.http.tunnel import TunnelPeer

DEFAULT_HIGH_WATER = 256 * 1024
DEFAULT_MAX_HEAD = 64 * 1024


class Stale(Exception):
    """A reused idle connection closed before any response byte: the pool may retry."""


class Response:
    """An upstream response: status, headers (lower-case names) and a streamed body.

    Read the body with :meth:`next_chunk` (or iterate :meth:`body_chunks`), then
    call :meth:`release`. Releasing before the body ended closes the connection
    instead of reusing it. Body reads raise :class:`UpstreamError` when the
    upstream fails mid-body (closed, timed out, malformed).
    """

    # ``complete``: True once the whole body has been received (it may still be buffered here);
    # a plain attribute, read once per response.
    __slots__ = ("status", "headers", "_chunks", "_buffered", "complete", "_error", "_waiter", "_conn")

    def detach(self) -> TunnelPeer:
        """A 101 answer: take its connection out of the pool, for :func:`~katyusha.http.tunnel.splice`.

        Raises UpstreamError when this response is not a 101 or its connection is gone.
        """
        conn = self._conn
        if self.status != 101 or conn is None:
            raise UpstreamError("only a live 101 response can be detached")
        self._conn = None
        return conn.detach()

    def __init__(self, status: int, headers: list[tuple[bytes, bytes]], conn: Connection):
        self.status = status
        self.headers = headers
        # A list, not a deque: most bodies come in one read, and a reader takes all at once.
        self._chunks: list[bytes] = []
        self._buffered = 0
        self.complete = False
        self._error: BaseException | None = None
        self._waiter: asyncio.Future | None = None
        self._conn: Connection | None = conn

    @property
    def at_end(self) -> bool:
        """True once the whole body was received and handed out: the next read returns b""."""
        return self.complete and not self._chunks and self._error is None

    def header(self, name: bytes) -> bytes | None:
        """The first value of header ``name`` (lower-case), or None."""
        for key, value in self.headers:
            if key == name:
                return value
        return None

    async def next_chunk(self) -> bytes:
        """Return the next body bytes (everything buffered so far), or b"" at the end."""
        while True:
            chunks = self._chunks
            if chunks:
                data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
                chunks.clear()
                self._buffered = 0
                conn = self._conn
                if conn is not None and conn.read_paused:
                    conn.resume_reading()
                return data
            if self._error is not None:
                raise self._error
            if self.complete:
                return b""
            waiter = self._waiter = self._conn.loop.create_future()
            await waiter

    def take(self) -> bytes:
        """Everything buffered so far, without waiting; the whole body once :attr:`complete`.

        Raises the upstream's error when the body ended in one, even with bytes
        buffered: a cut body must not pass for a whole one.
        """
        if self._error is not None:
            raise self._error
        chunks = self._chunks
        if not chunks:
            return b""
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        self._buffered = 0
        return data

    async def body_chunks(self) -> AsyncIterator[bytes]:
        """Yield body bytes until the end of the body."""
        while True:
            data = await self.next_chunk()
            if not data:
                return
            yield data

    async def read(self) -> bytes:
        """The whole body; for small bodies only (it is held in memory)."""
        parts = []
        while data := await self.next_chunk():
            parts.append(data)
        return b"".join(parts)

    def release(self) -> None:
        """Done with this response: the connection is reused if the body ended, else closed."""
        conn = self._conn
        if conn is not None and not self.complete:
            conn.fail(UpstreamError("response released before its body ended", origin=conn.origin))
        self._chunks.clear()
        self._buffered = 0

    close = release

    async def __aenter__(self) -> Response:
        return self

    async def __aexit__(self, *exc) -> None:
        self.release()

    # Called by the connection.

    def _feed(self, data: bytes) -> None:
        self._chunks.append(data)
        self._buffered += len(data)
        if self._waiter is not None:
            self._wake()

    def _finish(self, error: BaseException | None = None) -> None:
        if error is not None:
            self._error = error
        self.complete = True
        self._conn = None
        if self._waiter is not None:
            self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)


class Connection(asyncio.Protocol):
    """The protocol of one upstream connection; owned by a Pool, one exchange at a time."""

    def __init__(
        self,
        origin: str,
        loop: asyncio.AbstractEventLoop,
        on_idle: Callable[..., None],  # (connection, reusable[, now]): Pool._on_idle
        high_water: int = DEFAULT_HIGH_WATER,
        max_head: int = DEFAULT_MAX_HEAD,
    ):
        # Per connection.
        self.origin = origin
        self.loop = loop
        self._on_idle = on_idle
        self._high_water = high_water
        self._max_head = max_head
        self._head_bytes = 0
        self.transport: asyncio.Transport | None = None
        self.parser = HttpResponseParser(self)
        self.closed = False
        self.reused = False
        self.stale = False
        self.idle_since = 0.0
        self.read_paused = False
        self._write_paused = False
        self._drain_waiter: asyncio.Future | None = None
        # Per exchange.
        self._active = False
        self._got_bytes = False
        self._head_only = False
        self._head_waiter: asyncio.Future | None = None
        # Or, without a future (start's on_head): the callback until the head
        # came, then it (``_deliver``) and the response (``_delivered``) until
        # data_received hands it over.
        self._on_head: Callable[[Response | None, BaseException | None, float | None], None] | None = None
        self._deliver: Callable[[Response | None, BaseException | None, float | None], None] | None = None
        self._delivered: Response | None = None
        self._response: Response | None = None
        self._headers: list[tuple[bytes, bytes]] = []
        self._informational = False
        self._upgrade = False
        # After a 101: bytes of the new protocol, kept until the tunnel takes over.
        self._tunnel: bytearray | None = None
        self._pump: asyncio.Task | None = None
        self._timeout = 0.0
        # One timer per connection, re-armed lazily: most exchanges end long
        # before their timeout, and a timer per exchange costs more than the check.
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._timed = False
        self.last_activity = 0.0
        # The loop's time at the start of the latest read.
        self.read_at = 0.0

    # asyncio.Protocol

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        tunnel = self._tunnel
        if tunnel is not None:
            tunnel += data
            if len(tunnel) > self._high_water and not self.read_paused:
                self.read_paused = True
                self.transport.pause_reading()
            return
        if not self._active:
            # Bytes nobody asked for: the stream is out of step, never reuse it.
            self.close()
            return
        self._got_bytes = True
        # One clock read a read: the timeout's activity, the pool's idle mark (_end) and the
        # time handed to on_head (the answer's) are all this read's.
        self.read_at = now = self.loop.time()
        if self._timed:
            self.last_activity = now
        in_head = self._response is None
        try:
            self.parser.feed_data(data)
        except HttpParserUpgrade as exc:
            offset = exc.args[0] if exc.args else len(data)
            self._tunnel = bytearray(data[offset:])
            if self._deliver is not None:
                self._hand_over()
            return
        except HttpParserError as exc:
            cause = exc.__context__
            if not isinstance(cause, UpstreamError):
                cause = UpstreamProtocolError(f"invalid response: {exc}", origin=self.origin)
            if self._active:
                self.fail(cause)
            else:
                self.close()
            if self._deliver is not None:
                self._hand_over()
            return
        if in_head and self._response is None and self._active:
            # Still inside the head: bound it by raw bytes (the parser gathers a
            # header line whole before calling on_header), so a pod's endless
            # header costs at most this much memory.
            self._head_bytes += len(data)
            if self._head_bytes > self._max_head:
                self.fail(UpstreamProtocolError(
                    f"response head larger than {self._max_head} bytes (max-response-head-bytes)",
                    origin=self.origin))
                return
        if self._head_only and self._response is not None:
            # The parser cannot be told that a HEAD response has no body;
            # it would wait for Content-Length bytes, so start a fresh one.
            keep_alive = self._head_keep_alive()
            self.parser = HttpResponseParser(self)
            self._complete(keep_alive)
        deliver = self._deliver
        if deliver is not None:
            # The head came in this read: handed over now, with what of the
            # body came with it (a small response whole, its connection idle again).
            # (_hand_over, inline: once per response.)
            self._deliver = None
            response = self._delivered
            self._delivered = None
            try:
                deliver(response, None, now)
            except Exception as exc:  # the caller's bug must not break this connection's read
                self.loop.call_exception_handler({
                    "message": "exception in a response head callback", "exception": exc,
                    "protocol": self})

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._wake_drain()
        if not self._active:
            self._on_idle(self, False)
            return
        if self._response is not None and not self._informational and self._until_close():
            self._complete(False)
            return
        if not self._got_bytes:
            if self.reused:
                self.stale = True
                error: BaseException = Stale()
            else:
                error = ConnectFailed(
                    "connection closed before any response byte", origin=self.origin
                )
        elif self._response is None:
            error = UpstreamError("connection closed inside the response head", origin=self.origin)
        else:
            error = UpstreamError("connection closed before the body ended", origin=self.origin)
        self.fail(error)

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        self._wake_drain()

    # httptools callbacks

    def on_message_begin(self) -> None:
        if not self._active:
            raise UpstreamProtocolError("response without a request", origin=self.origin)
        self._headers = []

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if status < 200:
            if status == 101:
                if not self._upgrade:
                    raise UpstreamProtocolError("101 to a request that asked for no upgrade",
                                                origin=self.origin)
                self._response = response = Response(status, self._headers, self)
                self._resolve(response)
                return
            self._informational = True
            self._head_bytes = 0
            return
        # Whether its body ends with the connection is asked only if the connection closes
        # (_until_close), not of every response.
        response = self._response = Response(status, self._headers, self)
        # _resolve, inline: once per response.
        waiter = self._head_waiter
        if waiter is not None:
            if not waiter.done():
                waiter.set_result(response)
            return
        on_head = self._on_head
        if on_head is not None:
            self._on_head = None
            self._deliver = on_head
            self._delivered = response

    def on_body(self, body: bytes) -> None:
        response = self._response
        if response is None or self._head_only:
            return
        # Response._feed, inlined: once per read of a body.
        response._chunks.append(body)
        response._buffered += len(body)
        if response._waiter is not None:
            response._wake()
        if response._buffered > self._high_water and not self.read_paused:
            self.read_paused = True
            self.transport.pause_reading()

    def on_message_complete(self) -> None:
        if self._informational:
            self._informational = False
            return
        response = self._response
        if self._head_only or response is None or response.status == 101:
            # A 101 has no body: the connection waits for its tunnel (detach).
            return
        # _complete(), inline: once per response.
        if not response.complete:
            response.complete = True
            response._conn = None
            if response._waiter is not None:
                response._wake()
        self._end(self.parser.should_keep_alive() and self._pump is None)

    # Used by the pool and the response.

    def start(
        self,
        head: bytes,
        body: bytes | None,
        stream: Callable[[Connection], asyncio.Task] | None,
        timeout: float | None,
        head_only: bool,
        upgrade: bool = False,
        on_head: Callable[[Response | None, BaseException | None, float | None], None] | None = None,
        now: float | None = None,
    ) -> asyncio.Future | None:
        """Send one request; the returned future gets the response once its head arrived.

        Await it through :meth:`exchange` semantics: the future fails with
        :class:`Stale` or :class:`UpstreamError` subclasses, and a caller that is
        cancelled while waiting must call :meth:`fail`. Raises :class:`Stale` at
        once when a reused connection is already closed.

        With ``on_head`` there is no future (None is returned): it is called
        once, ``on_head(response, None, now)`` at the end of the read that
        brought the head (so a small response arrives whole; ``now`` is the
        loop's time at the start of that read, the connection's idle mark too),
        or ``on_head(None, error, None)`` from a later loop callback when the
        exchange failed first. ``now``: the loop's time, when the caller has
        just read it.
        """
        if self.closed or self.transport.is_closing():
            if self.reused:
                raise Stale()
            raise ConnectFailed("connection closed before the request was sent", origin=self.origin,
                                sent_nothing=True)
        self._active = True
        self._got_bytes = False
        self._head_only = head_only
        self._response = None
        self._informational = False
        self._upgrade = upgrade
        self._head_bytes = 0
        if on_head is None:
            waiter = self._head_waiter = self.loop.create_future()
        else:
            waiter = self._head_waiter = None
            self._on_head = on_head
        if timeout is not None:
            self._timeout = timeout
            self._timed = True
            if now is None:
                now = self.loop.time()
            self.last_activity = now
            due = now + timeout
            timer = self._timer
            if timer is None or self._timer_at > due:
                if timer is not None:
                    timer.cancel()
                self._timer = self.loop.call_at(due, self._on_timer)
                self._timer_at = due
        else:
            self._timed = False
        if body:
            self.transport.write(head + body if len(body) < 65536 else head)
            if len(body) >= 65536:
                self.transport.write(body)
        else:
            self.transport.write(head)
        if stream is not None:
            self._pump = stream(self)
        return waiter

    async def exchange(self, head, body, stream, timeout, head_only, upgrade=False) -> Response:
        """:meth:`start` and wait for the response head; cancelling the wait ends the exchange."""
        waiter = self.start(head, body, stream, timeout, head_only, upgrade)
        try:
            return await waiter
        except asyncio.CancelledError:
            self.fail(UpstreamError("request cancelled", origin=self.origin))
            raise

    async def drain(self) -> None:
        """Wait until the socket accepts more request bytes; raises if it closed."""
        if self.closed:
            raise UpstreamError("connection closed while sending the request body", origin=self.origin)
        if self._write_paused:
            waiter = self._drain_waiter = self.loop.create_future()
            await waiter
            if self.closed:
                raise UpstreamError(
                    "connection closed while sending the request body", origin=self.origin
                )

    def write(self, data: bytes) -> None:
        if self._timed:
            self.last_activity = self.loop.time()
        self.transport.write(data)

    def pump_done(self) -> None:
        self._pump = None

    def resume_reading(self) -> None:
        if self.read_paused:
            self.read_paused = False
            if self.transport is not None and not self.closed:
                self.transport.resume_reading()
            if self._timed:
                self.last_activity = self.loop.time()

    def detach(self) -> TunnelPeer:
        """Leave the pool after a 101: the transport and the bytes already read go to the tunnel."""
        pending = bytes(self._tunnel or b"")
        self._tunnel = None
        self._active = False
        self._timed = False
        self._head_waiter = None
        self._on_head = None
        self._response = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        transport = self.transport
        # closed: the pool must neither reuse nor close it; the tunnel owns it now.
        self.closed = True
        self._on_idle(self, False)
        return TunnelPeer(transport, pending, self._write_paused)

    def fail(self, error: BaseException) -> None:
        """End the current exchange with ``error`` and close the connection."""
        if not self._active:
            self.close()
            return
        waiter = self._head_waiter
        on_head = self._on_head
        if waiter is not None and not waiter.done():
            waiter.set_exception(error)
        elif on_head is not None:
            self._on_head = None
            # As a future's callback would be: never from inside the caller's own call.
            self.loop.call_soon(on_head, None, error, None)
        elif self._response is not None:
            self._response._finish(error)
        self._end(False)

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    # Internals

    def _complete(self, keep_alive: bool) -> None:
        response = self._response
        if response is not None and not response.complete:
            # Response._finish(), inline: once per response.
            response.complete = True
            response._conn = None
            if response._waiter is not None:
                response._wake()
        if self._pump is not None:
            # The upstream answered before taking the whole request body.
            keep_alive = False
        self._end(keep_alive)

    def _end(self, keep_alive: bool) -> None:
        self._active = False
        self._head_waiter = None
        self._on_head = None
        self._response = None
        # (_headers is left to on_message_begin, which starts each head's list afresh.)
        self._timed = False
        pump = self._pump
        if pump is not None:
            self._pump = None
            pump.cancel()
        if self.read_paused:
            self.read_paused = False
            if not self.closed and keep_alive:
                self.transport.resume_reading()
        self.reused = True
        if not keep_alive and not self.closed:
            self.abort()
        # Reusable only at the end of a response, inside the read that brought it: idle since then.
        self._on_idle(self, keep_alive and not self.closed, self.read_at)

    def _resolve(self, response: Response) -> None:
        """The exchange's response head arrived: resolve its future, or keep it for :meth:`_hand_over`."""
        waiter = self._head_waiter
        if waiter is not None:
            if not waiter.done():
                waiter.set_result(response)
            return
        on_head = self._on_head
        if on_head is not None:
            self._on_head = None
            self._deliver = on_head
            self._delivered = response

    def _hand_over(self) -> None:
        on_head, response = self._deliver, self._delivered
        self._deliver = self._delivered = None
        try:
            on_head(response, None, self.read_at)
        except Exception as exc:  # the caller's bug must not break this connection's read
            self.loop.call_exception_handler({
                "message": "exception in a response head callback", "exception": exc,
                "protocol": self})

    def _until_close(self) -> bool:
        """Whether the response's body is delimited by the end of the connection (it has
        neither Content-Length nor Transfer-Encoding, and may have a body; not a 101)."""
        response = self._response
        status = response.status
        if status < 200 or status == 204 or status == 304:
            return False
        for name, _ in response.headers:
            if name == b"content-length" or name == b"transfer-encoding":
                return False
        return True

    def _head_keep_alive(self) -> bool:
        if self.parser.get_http_version() != "1.1":
            return False
        for name, value in self._response.headers:
            if name == b"connection" and b"close" in value.lower():
                return False
        return True

    def _on_timer(self) -> None:
        self._timer = None
        if not self._active or not self._timed:
            # Idle: the next exchange arms the timer again.
            return
        now = self.loop.time()
        # A paused read waits on our consumer, not on the upstream.
        if self.read_paused:
            self.last_activity = now
        due = self.last_activity + self._timeout
        if due > now:
            self._timer = self.loop.call_at(due, self._on_timer)
            self._timer_at = due
            return
        what = "response head" if self._response is None else "response body"
        self.fail(
            UpstreamTimeout(f"no {what} bytes within {self._timeout:g}s", origin=self.origin)
        )

    def _wake_drain(self) -> None:
        waiter = self._drain_waiter
        if waiter is not None:
            self._drain_waiter = None
            if not waiter.done():
                waiter.set_result(None)
