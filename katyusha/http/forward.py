"""Relay one ASGI HTTP request to an upstream Pool and its response back, streaming both ways.

The forwarder is the hot path of both proxies. A request without a body
never touches ``receive``; a body that arrives in one ASGI message goes out
with the head in one write; longer bodies stream with the client's
Content-Length (or chunked). A response that arrived whole by the time its
head is read goes out in two ``send`` calls; longer ones stream, and a slow
client slows the upstream read (``send`` waits on the client socket, the
response buffer fills, reading from the upstream pauses).

When the server can tunnel (the ``katyusha.tunnel`` scope extension: an
upgrade request on katyusha's server), the request goes upstream with its
``Upgrade``; a ``101`` from the pod is handed to the server, which relays
bytes both ways, and ``forward`` returns when that tunnel closed, so the
caller's slot and in-flight count last as long as the WebSocket.

Failures before the response head went downstream raise ``UpstreamError``
(with ``status_hint`` and ``retryable``) and nothing has been sent, so the
caller may try another upstream or answer itself. Failures after raise
``ResponseAborted``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field

from katyusha.core.protocol import HOP_BY_HOP
from katyusha.http.client import Pool
from katyusha.http.errors import ResponseAborted, UpstreamError
from katyusha.http.tunnel import TUNNEL_EXTENSION

Headers = list[tuple[bytes, bytes]]
Receive = Callable[[], Awaitable[dict]]
Send = Callable[[dict], Awaitable[None]]

# The client's Expect: 100-continue is answered by the server in front of us.
_HOP_REQUEST = frozenset(name.encode() for name in HOP_BY_HOP) | {b"expect"}
_HOP_RESPONSE = frozenset(name.encode() for name in HOP_BY_HOP)
# Request headers never sent upstream (a body-less request's fast path drops them in its one pass).
REQUEST_HOP_BY_HOP = _HOP_REQUEST
_METHODS = {m: m.encode() for m in ("GET", "POST", "PUT", "DELETE", "HEAD", "PATCH", "OPTIONS")}
_CLIENT_GONE_STATUS = 499
_PLAIN_CONNECTION = frozenset(
    {b"keep-alive", b"Keep-Alive", b"close", b"Close", b"upgrade", b"Upgrade"}
)


@dataclass(slots=True)
class ForwardResult:
    """What one forward relayed: the status and headers sent downstream and the bytes each way.

    ``client_disconnected`` is True when the client went away first; then
    ``status`` is 499 if nothing was sent downstream.
    """

    status: int
    headers: Headers = field(default_factory=list)
    request_bytes: int = 0
    response_bytes: int = 0
    client_disconnected: bool = False


class ReplayableReceive:
    """Wrap an ASGI ``receive`` so the request body can be sent again to another upstream.

    Messages are kept while their bodies total at most ``limit`` bytes. Pass the
    same wrapper to :func:`forward` again after a ``retryable`` error: it
    replays the kept messages from the start.
    """

    __slots__ = ("_receive", "_kept", "_pos", "_bytes", "limit", "intact")

    def __init__(self, receive: Receive, limit: int = 1 << 20):
        self._receive = receive
        self._kept: list[dict] = []
        self._pos = 0
        self._bytes = 0
        self.limit = limit
        self.intact = True

    async def __call__(self) -> dict:
        if self._pos < len(self._kept):
            message = self._kept[self._pos]
            self._pos += 1
            return message
        message = await self._receive()
        if self.intact and message["type"] == "http.request":
            self._bytes += len(message.get("body", b""))
            if self._bytes <= self.limit:
                self._kept.append(message)
                self._pos += 1
            else:
                self.intact = False
                self._kept = []
        return message

    def rewind(self) -> bool:
        """Start the replay over; False when the body outgrew ``limit`` and cannot be replayed."""
        self._pos = 0
        return self.intact


class _ClientGone(Exception):
    """The downstream client disconnected while its request body was being read."""


def request_headers(headers: Iterable[tuple[bytes, bytes]], extra: Iterable = ()) -> Headers:
    """The headers to send upstream: hop-by-hop ones and those named in Connection removed, ``extra`` appended."""
    out = _without_hop_by_hop(headers, _HOP_REQUEST)
    if extra:
        out.extend(extra)
    return out


def response_headers(headers: Headers) -> Headers:
    """A response's headers to send on: hop-by-hop ones and those named in Connection removed."""
    return _without_hop_by_hop(headers, _HOP_RESPONSE)


def _without_hop_by_hop(headers: Iterable[tuple[bytes, bytes]], hop: frozenset) -> Headers:
    """``headers`` less those in ``hop`` and those a Connection header names; a new list."""
    out = []
    named = None
    for item in headers:
        name = item[0]
        if name in hop:
            if name == b"connection":
                named = _tokens(item[1], named)
            continue
        out.append(item)
    if named:
        out = [item for item in out if item[0] not in named]
    return out


def _tokens(value: bytes, into: set | None) -> set | None:
    if value in _PLAIN_CONNECTION:
        # The usual values name no other header: skip building a set.
        return into
    into = into if into is not None else set()
    into.update(token.strip().lower() for token in value.split(b","))
    return into


def _body_expected(headers: Iterable[tuple[bytes, bytes]]) -> bool:
    for name, value in headers:
        if name == b"content-length":
            return value.strip() != b"0"
        if name == b"transfer-encoding":
            return True
    return False


async def _disconnected(receive: Receive) -> None:
    """Return when the client disconnects; the request body must be fully read already,
    apart from one empty message a body-less request may still have pending."""
    while (await receive())["type"] != "http.disconnect":
        pass


async def _stream_body(first: bytes, receive: Receive, counter: list[int]):
    if first:
        counter[0] += len(first)
        yield first
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _ClientGone()
        data = message.get("body", b"")
        if data:
            counter[0] += len(data)
            yield data
        if not message.get("more_body", False):
            return


def _header(headers: Iterable[tuple[bytes, bytes]], wanted: bytes) -> bytes | None:
    for name, value in headers:
        if name == wanted:
            return value
    return None


async def _tunnel(response, out_headers: Headers, send: Send, result: ForwardResult) -> ForwardResult:
    """Hand the pod's 101 to the server, which relays both ways until the tunnel ends."""
    protocol = response.header(b"upgrade")
    peer = response.detach()  # UpstreamError when the pod already left: nothing was sent
    headers = [(b"upgrade", protocol)] if protocol is not None else []
    headers.extend(out_headers)
    await send({"type": TUNNEL_EXTENSION, "status": 101, "headers": headers, "peer": peer})
    return result


async def forward(
    scope: dict,
    receive: Receive,
    send: Send,
    pool: Pool,
    *,
    extra_request_headers: Iterable[tuple[bytes, bytes]] = (),
    on_response_head: Callable[[int, Headers], Headers] | None = None,
    timeout: float | None = None,
) -> ForwardResult:
    """Relay the ASGI http request ``scope``/``receive`` through ``pool`` and the response to ``send``.

    ``on_response_head(status, headers)`` sees the upstream status and headers
    (lower-case names, hop-by-hop ones removed) and returns the headers to send;
    it may raise UpstreamError to refuse the response (nothing is sent; the
    error propagates as one from the pool would, ``retryable`` adjusted alike).
    ``timeout`` bounds the wait for the upstream head and each later silence.

    Raises UpstreamError (nothing was sent downstream; ``retryable`` says whether
    calling forward again, with the same ``ReplayableReceive`` when there is a
    body, is safe) and ResponseAborted (the upstream failed mid-body). Returns a
    ForwardResult, also when the client disconnected first.
    """
    method = _METHODS.get(scope["method"]) or scope["method"].encode()
    target = scope.get("raw_path") or scope["path"].encode()
    query = scope.get("query_string")
    if query:
        target = target + b"?" + query
    client_headers = scope["headers"]
    headers = request_headers(client_headers, extra_request_headers)
    upgrade = None
    extensions = scope.get("extensions")
    if extensions and TUNNEL_EXTENSION in extensions:
        # The server can tunnel: ask the pod for the same upgrade.
        upgrade = _header(client_headers, b"upgrade")
        if upgrade is not None:
            headers.append((b"connection", b"upgrade"))
            headers.append((b"upgrade", upgrade))
    if isinstance(receive, ReplayableReceive):
        receive.rewind()

    counter = [0]
    body = None
    read_body = _body_expected(client_headers)
    if read_body:
        message = await receive()
        if message["type"] == "http.disconnect":
            return ForwardResult(_CLIENT_GONE_STATUS, client_disconnected=True)
        first = message.get("body", b"")
        if message.get("more_body", False):
            body = _stream_body(first, receive, counter)
        else:
            body = first
            counter[0] = len(first)

    try:
        response = await pool.request(method, target, headers, body, timeout=timeout,
                                      upgrade=upgrade is not None)
    except _ClientGone:
        return ForwardResult(_CLIENT_GONE_STATUS, request_bytes=counter[0], client_disconnected=True)
    except UpstreamError as exc:
        if exc.retryable and read_body:
            exc.retryable = isinstance(receive, ReplayableReceive) and receive.intact
        raise
    return await _relay(response, receive, send, on_response_head, read_body, body, counter)


async def relay_response(response, receive: Receive, send: Send, *,
                         on_response_head: Callable[[int, Headers], Headers] | None = None
                         ) -> ForwardResult:
    """What :func:`forward` does once the pod's head arrived, for a request without a body.

    For a caller that sent the request itself (``Pool.take_idle`` and
    ``Connection.start``); raises as :func:`forward` does.
    """
    return await _relay(response, receive, send, on_response_head, False, None, [0])


async def _relay(response, receive: Receive, send: Send, on_response_head, read_body: bool, body,
                 counter: list[int]) -> ForwardResult:
    status = response.status
    out_headers = response_headers(response.headers)
    if on_response_head is not None:
        try:
            out_headers = on_response_head(status, out_headers)
        except BaseException as exc:
            # The caller refused this response: nothing went downstream.
            response.release()
            if isinstance(exc, UpstreamError) and exc.retryable and read_body:
                exc.retryable = isinstance(receive, ReplayableReceive) and receive.intact
            raise
    result = ForwardResult(status, out_headers, counter[0])
    if status == 101:
        return await _tunnel(response, out_headers, send, result)

    if response.complete:
        # The whole body is already here: the common small response.
        try:
            data = response.take()
        except UpstreamError:
            response.release()
            raise
        await send({"type": "http.response.start", "status": status, "headers": out_headers})
        await send({"type": "http.response.body", "body": data})
        result.response_bytes = len(data)
        return result

    await send({"type": "http.response.start", "status": status, "headers": out_headers})
    watcher = None
    if body is None or isinstance(body, bytes):
        # The request body is fully read, so receive() now only reports a disconnect.
        watcher = asyncio.ensure_future(_disconnected(receive))
    sent = 0
    try:
        while True:
            try:
                data = await response.next_chunk()
            except _ClientGone:
                result.client_disconnected = True
                return result
            except UpstreamError as exc:
                result.response_bytes = sent
                result.request_bytes = counter[0]
                raise ResponseAborted(exc, result) from exc
            if watcher is not None and watcher.done():
                result.client_disconnected = True
                response.release()
                return result
            if not data:
                await send({"type": "http.response.body", "body": b""})
                break
            last = response.at_end
            await send({"type": "http.response.body", "body": data, "more_body": not last})
            sent += len(data)
            if last:
                break
        return result
    finally:
        result.request_bytes = counter[0]
        result.response_bytes = sent
        if watcher is not None and not watcher.done():
            watcher.cancel()
        response.release()
