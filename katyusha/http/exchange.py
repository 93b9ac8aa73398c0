"""One request/response exchange of katyusha's HTTP server, and how its response is framed.

Kept apart from the connection protocol (katyusha.http.server): what one
exchange holds, the head the server writes for what the app declared
(Content-Length, chunked for HTTP/1.1, close-delimited for HTTP/1.0, no body
for HEAD, 1xx, 204 and 304), and the refusals the server answers itself.
"""

from __future__ import annotations

import asyncio
import http

from httptools import HttpParserError, parse_url

MAX_HEAD_BYTES = 64 * 1024
CHUNK_END = b"0\r\n\r\n"
NO_BODY_STATUS = frozenset({204, 304})


class Refusal(Exception):
    """A request the server answers itself with ``status`` (raised from a parser callback)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


class BodyLengthError(RuntimeError):
    """The app's body broke its own Content-Length: the connection must be cut."""


def status_line(code: int) -> bytes:
    try:
        phrase = http.HTTPStatus(code).phrase
    except ValueError:
        phrase = ""
    return f"HTTP/1.1 {code} {phrase}\r\n".encode("ascii")


STATUS = {code: status_line(code) for code in range(100, 600)}


class _Refusal(Exception):
    """A request the server answers itself with ``status`` (raised from a parser callback)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


class Exchange:
    """One request and its response on a connection.

    No ``__slots__``: what most exchanges never change stays a class default,
    so making one (once per request) sets five attributes, not nineteen.
    """

    # True: more body to come; False: ended, not yet handed out; None: ended and handed out.
    more_body: bool | None = True
    waiter: asyncio.Future | None = None
    started = False
    complete = False
    disconnected = False
    status = 0
    headers: list | tuple = ()
    chunked = False
    remaining: int | None = None
    received = 0
    upgrade = False
    tunnel_data: bytearray | None = None
    asterisk = False
    has_body = False

    def __init__(self, scope: dict, keep_alive: bool, expect_continue: bool, head_only: bool):
        self.scope = scope
        self.body = bytearray()
        self.expect_continue = expect_continue
        self.keep_alive = keep_alive
        self.head_only = head_only

    def wake(self) -> None:
        waiter = self.waiter
        if waiter is not None:
            self.waiter = None
            if not waiter.done():
                waiter.set_result(None)


def response_head(exchange: Exchange, body: bytes, more: bool, close: bool) -> bytes:
    """The response head, framed for what the app declared, and the first body bytes.

    ``close``: the connection closes after this response whatever it says.
    Raises RuntimeError for a header with a line break or a bad
    Content-Length, and BodyLengthError (see :func:`frame_body`).
    """
    status = exchange.status
    exchange.status = 0
    parts = [STATUS.get(status) or status_line(status)]
    length = None
    chunked = False
    for name, value in exchange.headers:
        if name == b"content-length":
            length = value
        elif name == b"transfer-encoding":
            chunked = True
            continue
        elif name == b"connection":
            if b"close" in value.lower():
                exchange.keep_alive = False
            continue
        parts.append(b"%b: %b\r\n" % (name, value))
    no_body = exchange.head_only or status in NO_BODY_STATUS or status < 200
    old = exchange.scope["http_version"] != "1.1"
    if length is not None:
        try:
            exchange.remaining = int(length)
        except ValueError:
            raise RuntimeError(f"bad content-length {length[:40]!r} in the response") from None
    elif chunked or (more and not no_body):
        if not old:
            exchange.chunked = True
            parts.append(b"transfer-encoding: chunked\r\n")
        else:
            # No chunked coding for HTTP/1.0: the body ends when the connection does.
            exchange.keep_alive = False
    elif not no_body:
        parts.append(b"content-length: %d\r\n" % len(body))
        exchange.remaining = len(body)
    if not exchange.keep_alive or close:
        exchange.keep_alive = False
        parts.append(b"connection: close\r\n")
    elif old:
        parts.append(b"connection: keep-alive\r\n")
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
    return head + frame_body(exchange, body, more)


def frame_body(exchange: Exchange, body: bytes, more: bool) -> bytes:
    """``body`` framed for the response (a chunk, or as is). Raises BodyLengthError when the
    app sends more or less than its Content-Length said: the caller must cut the connection."""
    if exchange.head_only:
        return b""
    if exchange.chunked:
        if body:
            data = b"%x\r\n%b\r\n" % (len(body), body)
            return data if more else data + CHUNK_END
        return b"" if more else CHUNK_END
    remaining = exchange.remaining
    if remaining is not None:
        remaining -= len(body)
        if remaining < 0 or (not more and remaining):
            raise BodyLengthError("response body does not match its Content-Length")
        exchange.remaining = remaining
    return body


def head_too_large() -> str:
    return f"request head (URL and headers) larger than {MAX_HEAD_BYTES} bytes"


def absolute_form(url: bytes, headers: list) -> tuple[bytes, bytes, list]:
    """Path, query and headers of an absolute-form target: its authority replaces Host (RFC 9112 3.2.2)."""
    try:
        parsed = parse_url(url)
    except HttpParserError:
        raise Refusal(400, f"invalid request target {url[:80]!r}") from None
    if not parsed.host:
        raise Refusal(400, f"invalid request target {url[:80]!r}")
    authority = parsed.host if parsed.port is None else b"%b:%d" % (parsed.host, parsed.port)
    headers = [item for item in headers if item[0] != b"host"]
    headers.append((b"host", authority))
    return parsed.path or b"/", parsed.query or b"", headers
