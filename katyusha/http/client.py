"""Keep-alive connection pools to upstream origins, and the request path through them.

``Pool`` owns the connections to one origin: idle ones are reused last-in
first-out (the warmest socket first), at most ``max_idle`` are kept, and one
idle longer than ``idle_timeout`` is closed rather than reused, since servers
drop idle keep-alive connections on their own schedule (uvicorn after 5 s).
A reused connection that closes before any response byte is retried once on
a fresh connection when the request body can be sent again.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterable
from urllib.parse import urlsplit

from katyusha.core.errors import BadInput
from katyusha.http.connection import (
    DEFAULT_HIGH_WATER,
    DEFAULT_MAX_HEAD,
    Connection,
    Response,
    Stale,
)
from katyusha.http.errors import ConnectFailed, ConnectTimeout, UpstreamError

BodySource = bytes | bytearray | memoryview | AsyncIterable[bytes] | None
"""A request body: bytes (sent with Content-Length), an async iterable of bytes
(streamed: Content-Length when the caller gave one, else chunked), or None."""

_REPLAY_LIMIT = 64 * 1024
_BODY_METHODS = frozenset({b"POST", b"PUT", b"PATCH"})
_CHUNK_END = b"0\r\n\r\n"

__all__ = ["BodySource", "Pool", "PoolSet", "Response"]


class _StreamBody:
    """An async-iterable body, pulled one chunk at a time, its first bytes kept for a resend.

    A pull runs as its own task so that abandoning a stale connection mid-pull
    does not lose the chunk being read: the next connection picks it up.
    """

    __slots__ = ("_iter", "_pending", "kept", "_kept_bytes", "intact", "started", "ended")

    def __init__(self, source: AsyncIterable[bytes]):
        self._iter = source.__aiter__()
        self._pending: asyncio.Future | None = None
        self.kept: list[bytes] = []
        self._kept_bytes = 0
        self.intact = True
        self.started = False
        self.ended = False

    async def _pull(self) -> bytes | None:
        try:
            return await self._iter.__anext__()
        except StopAsyncIteration:
            return None

    async def next(self) -> bytes | None:
        if self.ended:
            return None
        pending = self._pending
        if pending is None:
            pending = self._pending = asyncio.ensure_future(self._pull())
        data = await asyncio.shield(pending)
        # Kept on delivery, not on arrival: a chunk pulled for a connection that
        # was abandoned before taking it goes to the next connection instead.
        self._pending = None
        if data is None:
            self.ended = True
            return None
        self.started = True
        if self.intact:
            if self._kept_bytes + len(data) <= _REPLAY_LIMIT:
                self.kept.append(data)
                self._kept_bytes += len(data)
            else:
                self.intact = False
                self.kept = []
        return data

    def abandon(self) -> None:
        pending = self._pending
        if pending is not None:
            self._pending = None
            pending.cancel()


async def _pump(conn: Connection, body: _StreamBody, chunked: bool, replay: list[bytes]) -> None:
    """Send a streamed request body on ``conn``; failures end the exchange with the error."""
    try:
        for data in replay:
            conn.write(b"%x\r\n%b\r\n" % (len(data), data) if chunked else data)
        while (data := await body.next()) is not None:
            if not data:
                continue
            if conn.closed:
                return
            conn.write(b"%x\r\n%b\r\n" % (len(data), data) if chunked else data)
            await conn.drain()
        if chunked and not conn.closed:
            conn.write(_CHUNK_END)
        conn.pump_done()
    except asyncio.CancelledError:
        if not conn.stale:
            body.abandon()
        raise
    except BaseException as exc:  # the body source failed: the requester sees its error
        body.abandon()
        conn.fail(exc)


class Pool:
    """Keep-alive HTTP/1.1 connections to one origin (``http://host:port`` or ``https://``).

    ``connect_timeout`` bounds connection setup (TLS handshake included);
    ``max_idle`` bounds the kept idle connections; ``idle_timeout`` is how long
    an idle one may be reused; ``high_water`` is how many response body bytes
    are buffered before reading from the upstream pauses; ``max_head`` bounds
    a response head (then UpstreamProtocolError, a 502). ``tls`` is the
    context for an ``https://`` origin (default: the system's trusted CAs,
    verified). Raises ValueError for an origin it cannot use.
    """

    def __init__(
        self,
        origin: str,
        *,
        max_idle: int = 64,
        connect_timeout: float = 2.0,
        idle_timeout: float = 4.0,
        high_water: int = DEFAULT_HIGH_WATER,
        max_head: int = DEFAULT_MAX_HEAD,
        tls: ssl.SSLContext | None = None,
    ):
        parts = urlsplit(origin)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"upstream origin must look like http://host:port, got {origin!r}")
        if parts.path not in ("", "/") or parts.query:
            raise ValueError(f"upstream origin must have no path or query, got {origin!r}")
        if max_idle < 0 or connect_timeout <= 0 or idle_timeout <= 0 or high_water <= 0:
            raise ValueError("max_idle must be >= 0; timeouts and high_water must be > 0")
        self.origin = origin.rstrip("/")
        self.host = parts.hostname
        self.tls = None
        if parts.scheme == "https":
            self.tls = tls if tls is not None else ssl.create_default_context()
        self.port = parts.port or (443 if self.tls is not None else 80)
        self.max_head = max_head
        netloc = f"[{self.host}]" if ":" in self.host else self.host
        self._host_header = b"host: %b\r\n" % f"{netloc}:{self.port}".encode("ascii")
        self.max_idle = max_idle
        self.connect_timeout = connect_timeout
        self.idle_timeout = idle_timeout
        self.high_water = high_water
        self._idle: list[Connection] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False
        # Counters for metrics and tests.
        self.connects = 0
        self.reuses = 0
        self.stale_retries = 0

    @property
    def idle_count(self) -> int:
        return len(self._idle)

    async def request(
        self,
        method: bytes,
        target: bytes,
        headers: list[tuple[bytes, bytes]] | tuple = (),
        body: BodySource = None,
        *,
        timeout: float | None = None,
        upgrade: bool = False,
    ) -> Response:
        """Send a request and return the response once its head arrived.

        ``headers`` are sent as given, except framing: Content-Length and
        Transfer-Encoding are set from ``body``, and Host is added when absent.
        ``timeout`` bounds the wait for the head and each silence between body
        bytes afterwards. With ``upgrade`` a 101 answer is accepted (take its
        connection with ``Response.detach``). Raises ConnectFailed/ConnectTimeout (``retryable`` when
        the body can still be sent again), UpstreamTimeout, UpstreamError, and
        BadInput for a header or target that would break the request line.
        """
        if self._closed:
            raise UpstreamError("pool is closed", origin=self.origin)
        stream: _StreamBody | None = None
        fixed: bytes | None = None
        if body is None:
            pass
        elif isinstance(body, bytes):
            fixed = body
        elif isinstance(body, bytearray | memoryview):
            fixed = bytes(body)
        else:
            stream = _StreamBody(body)
        head, chunked = self._head(method, target, headers, fixed, stream is not None)
        head_only = method == b"HEAD"

        def start_pump(conn: Connection, replay: list[bytes] | None = None) -> asyncio.Task:
            return self._loop.create_task(_pump(conn, stream, chunked, replay or []))

        conn = self._take_idle()
        if conn is None:
            conn = await self._connect(stream)
        else:
            self.reuses += 1
        # Set once the request went out on a kept-alive connection: if that
        # connection then closes unanswered, the upstream may have got it.
        written = False
        try:
            # Awaited here rather than in a coroutine of the connection: one
            # frame less to resume on every response.
            waiter = conn.start(
                head, fixed, start_pump if stream is not None else None, timeout, head_only,
                upgrade,
            )
            written = True
            try:
                return await waiter
            except asyncio.CancelledError:
                conn.fail(UpstreamError("request cancelled", origin=self.origin))
                raise
        except Stale:
            pass
        except ConnectFailed as exc:
            exc.retryable = stream is None or not stream.started
            raise
        # The reused connection was closed by the upstream: resend once, fresh.
        self.stale_retries += 1
        if stream is not None and not stream.intact:
            stream.abandon()
            raise ConnectFailed(
                "kept-alive connection closed before any response byte; body already consumed",
                origin=self.origin,
            )
        try:
            conn = await self._connect(stream)
            replay = list(stream.kept) if stream is not None else None
            return await conn.exchange(
                head,
                fixed,
                (lambda c: start_pump(c, replay)) if stream is not None else None,
                timeout,
                head_only,
                upgrade,
            )
        except ConnectFailed as exc:
            exc.retryable = stream is None or not stream.started
            exc.sent_nothing = exc.sent_nothing and not written
            raise

    def start(self, method: bytes, target: bytes, headers: list[tuple[bytes, bytes]], *,
              timeout: float | None = None, on_head=None) -> asyncio.Future | bool | None:
        """Send a body-less request on an idle connection, without a coroutine.

        Returns a future that gets the :class:`Response` once its head
        arrived, or fails with :class:`Stale` (the kept-alive connection was
        closed unanswered: send it again with :meth:`request`) or an
        UpstreamError; None when no idle connection is at hand (use
        :meth:`request`). Raises BadInput as :meth:`request` does.

        With ``on_head`` no future is made: True when the request went out,
        and ``on_head(response, error, now)`` is called once as
        :meth:`Connection.start` says; None as above.
        """
        if self._closed or not self._idle:
            return None
        head, _ = self._head(method, target, headers, None, False)
        return self._start_idle(head, method, timeout, on_head)

    def start_lines(self, method: bytes, target: bytes, lines: bytes | list[bytes], count: int,
                    has_host: bool, *, timeout: float | None = None, on_head=None,
                    now: float | None = None) -> asyncio.Future | bool | None:
        """:meth:`start` with the header lines already built: ``count`` lines of
        ``name: value\r\n`` (as bytes, or as a list of the pieces they join from: the head is
        then joined once) with no hop-by-hop or framing header (``has_host``: Host is
        among them). Raises BadInput for a line break in them or a space in ``target``.
        ``now``: the loop's time, when the caller has just read it."""
        if self._closed or not self._idle:
            return None
        parts = [method, b" ", target, b" HTTP/1.1\r\n"]
        if lines.__class__ is list:
            parts += lines
        else:
            parts.append(lines)
        count += 2
        if not has_host:
            parts.append(self._host_header)
            count += 1
        if method in _BODY_METHODS:
            parts.append(b"content-length: 0\r\n")
            count += 1
        parts.append(b"\r\n")
        head = b"".join(parts)
        # find, not `in`: a bytes `in` first tries its operand as an int, raising inside.
        if head.count(b"\n") != count or target.find(b" ") != -1:
            raise BadInput(_bad_header(method, target, _lines_as_headers(
                lines if lines.__class__ is bytes else b"".join(lines))))
        # _start_idle, inline: once per request on the fast path.
        conn = self._take_idle(now)
        if conn is None:
            return None
        try:
            waiter = conn.start(head, None, None, timeout, method == b"HEAD", False, on_head, now)
        except (Stale, UpstreamError):
            return None
        self.reuses += 1
        return True if on_head is not None else waiter

    def _start_idle(self, head: bytes, method: bytes, timeout: float | None, on_head) -> asyncio.Future | bool | None:
        """Send ``head`` on an idle connection (for :meth:`start`; :meth:`start_lines` has the same steps inline)."""
        conn = self._take_idle()
        if conn is None:
            return None
        try:
            waiter = conn.start(head, None, None, timeout, method == b"HEAD", False, on_head)
        except (Stale, UpstreamError):
            return None
        self.reuses += 1
        return True if on_head is not None else waiter

    async def close(self) -> None:
        """Close idle connections; busy ones close when their exchange ends."""
        self._closed = True
        idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()
        await asyncio.sleep(0)

    # Internals

    def _head(self, method, target, headers, fixed, streamed) -> tuple[bytes, bool]:
        parts = [method, b" ", target, b" HTTP/1.1\r\n"]
        has_host = False
        length: bytes | None = None
        for name, value in headers:
            if name == b"content-length":
                length = value
                continue
            if name == b"transfer-encoding":
                continue
            if name == b"host":
                has_host = True
            parts.append(b"%b: %b\r\n" % (name, value))
        lines = len(parts) - 4
        if not has_host:
            parts.append(self._host_header)
            lines += 1
        chunked = False
        if streamed:
            if length is not None:
                parts.append(b"content-length: %b\r\n" % length)
            else:
                parts.append(b"transfer-encoding: chunked\r\n")
                chunked = True
            lines += 1
        elif fixed or method in _BODY_METHODS:
            parts.append(b"content-length: %d\r\n" % len(fixed or b""))
            lines += 1
        parts.append(b"\r\n")
        head = b"".join(parts)
        # One newline per header line plus the request line and the blank line:
        # any other count means a header or the target smuggles a line break.
        if head.count(b"\n") != lines + 2 or b" " in target:
            raise BadInput(_bad_header(method, target, headers))
        return head, chunked

    def _take_idle(self, now: float | None = None) -> Connection | None:
        idle = self._idle
        if not idle:
            return None
        oldest_ok = (self._loop.time() if now is None else now) - self.idle_timeout
        while idle:
            conn = idle.pop()
            if conn.closed:
                continue
            if conn.idle_since < oldest_ok:
                # Everything below is older still.
                for old in idle:
                    old.close()
                idle.clear()
                conn.close()
                return None
            return conn
        return None

    async def _connect(self, stream: _StreamBody | None) -> Connection:
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        self.connects += 1
        try:
            async with asyncio.timeout(self.connect_timeout):
                _, conn = await loop.create_connection(
                    lambda: Connection(self.origin, loop, self._on_idle, self.high_water,
                                       self.max_head),
                    self.host,
                    self.port,
                    ssl=self.tls,
                    server_hostname=self.host if self.tls is not None else None,
                )
        except TimeoutError:
            raise ConnectTimeout(
                f"no connection within {self.connect_timeout:g}s",
                origin=self.origin,
                retryable=stream is None or not stream.started,
                sent_nothing=True,
            ) from None
        except ssl.SSLError as exc:
            raise ConnectFailed(
                f"TLS handshake failed: {exc.reason or exc}",
                origin=self.origin,
                retryable=stream is None or not stream.started,
            ) from None
        except OSError as exc:
            raise ConnectFailed(
                f"cannot connect: {exc.strerror or exc}",
                origin=self.origin,
                retryable=stream is None or not stream.started,
                sent_nothing=True,
            ) from None
        return conn

    def _on_idle(self, conn: Connection, reusable: bool, now: float | None = None) -> None:
        """The connection's exchange ended: kept idle when ``reusable`` (idle since ``now``, the
        time of the read that ended its response, when given), closed otherwise."""
        idle = self._idle
        if reusable and not self._closed and len(idle) < self.max_idle:
            conn.idle_since = self._loop.time() if now is None else now
            idle.append(conn)
            return
        if not reusable:
            try:
                idle.remove(conn)
            except ValueError:
                pass
        if not conn.closed:
            conn.close()


def _bad_header(method: bytes, target: bytes, headers) -> str:
    if b" " in target or b"\r" in target or b"\n" in target:
        return f"request target {target[:80]!r} contains a space or line break"
    for name, value in headers:
        if b"\r" in name or b"\n" in name or b"\r" in value or b"\n" in value:
            return f"header {name[:80]!r} contains a line break"
    return f"request line for method {method[:20]!r} contains a line break"


def _lines_as_headers(lines: bytes) -> list[tuple[bytes, bytes]]:
    # For the error message only: each CRLF-ended line as a (name, value) pair.
    out = []
    for line in lines.split(b"\r\n")[:-1]:
        name, _, value = line.partition(b": ")
        out.append((name, value))
    return out


class PoolSet:
    """One :class:`Pool` per origin, created on first use with the same settings."""

    def __init__(self, **pool_kwargs):
        self._kwargs = pool_kwargs
        self._pools: dict[str, Pool] = {}

    def get(self, origin: str) -> Pool:
        """The pool for ``origin``; raises ValueError for an origin a Pool cannot use."""
        pool = self._pools.get(origin)
        if pool is None:
            pool = self._pools[origin] = Pool(origin, **self._kwargs)
        return pool

    async def discard(self, origin: str) -> None:
        """Close and forget the pool of ``origin`` (an upstream that left the fleet)."""
        pool = self._pools.pop(origin, None)
        if pool is not None:
            await pool.close()

    async def close_all(self) -> None:
        pools, self._pools = list(self._pools.values()), {}
        for pool in pools:
            await pool.close()

    def __len__(self) -> int:
        return len(self._pools)

    def __iter__(self):
        return iter(list(self._pools.values()))
