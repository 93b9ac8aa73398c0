"""The upstream HTTP client against real servers on loopback: uvicorn apps and raw asyncio servers."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import random
import socket
import time

import pytest
import uvicorn

from katyusha.core.errors import BadInput
from katyusha.http import (
    ConnectFailed,
    Pool,
    PoolSet,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamTimeout,
)
from katyusha.serving import socket_url

MB = 1024 * 1024


# Upstreams used here and by test_forward.py.


def listen_socket() -> socket.socket:
    # IPPROTO_TCP explicitly: asyncio only sets TCP_NODELAY on accepted sockets whose
    # proto says TCP, and without it a head and body written apart wait 40 ms (Nagle).
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(512)
    return sock


@contextlib.asynccontextmanager
async def asgi_server(app):
    """Serve ``app`` on uvicorn (httptools) in this loop; yields its URL."""
    sock = listen_socket()
    config = uvicorn.Config(
        app, http="httptools", loop="none", lifespan="off", log_level="critical", access_log=False
    )
    server = uvicorn.Server(config)
    server.install_signal_handlers = lambda: None  # older uvicorn
    server.capture_signals = contextlib.nullcontext  # newer uvicorn
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.005)
    try:
        yield socket_url(sock)
    finally:
        server.should_exit = True
        server.force_exit = True
        await asyncio.wait_for(task, 10)


@contextlib.asynccontextmanager
async def raw_server(handler):
    """An asyncio stream server calling ``handler(reader, writer, index)`` per connection."""
    count = 0

    async def on_connect(reader, writer):
        nonlocal count
        count += 1
        try:
            await handler(reader, writer, count)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            # Still waiting when the test ended: end quietly instead of
            # leaving asyncio to log the cancelled handler.
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.close()


async def read_request_head(reader) -> bytes:
    return await reader.readuntil(b"\r\n\r\n")


def pattern(total: int, seed: int = 7, block: int = 64 * 1024):
    """Deterministic pseudo-random blocks totalling ``total`` bytes (never held whole)."""
    rng = random.Random(seed)
    sent = 0
    while sent < total:
        size = min(block, total - sent)
        yield rng.randbytes(size)
        sent += size


def pattern_digest(total: int, seed: int = 7) -> str:
    digest = hashlib.sha256()
    for block in pattern(total, seed):
        digest.update(block)
    return digest.hexdigest()


async def apattern(total: int, seed: int = 7):
    for block in pattern(total, seed):
        yield block
        await asyncio.sleep(0)


async def read_body(receive) -> bytes:
    parts = []
    while True:
        message = await receive()
        parts.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(parts)


class Upstream:
    """A small ASGI app: /echo returns the request as JSON, /stream-echo streams the body back,
    /chunks sends chunked bytes, /head-info has a Content-Length, /nocontent is 204,
    /sleep waits, /big-headers sends 32 KB of headers, /close answers with Connection: close.
    Records the client ports it saw, to count upstream connections."""

    def __init__(self):
        self.peers: set[int] = set()
        self.requests = 0

    async def __call__(self, scope, receive, send):
        assert scope["type"] == "http"
        self.peers.add(scope["client"][1])
        self.requests += 1
        path = scope["path"]
        if path == "/stream-echo":
            digest = hashlib.sha256()
            await send({"type": "http.response.start", "status": 200, "headers": []})
            while True:
                message = await receive()
                data = message.get("body", b"")
                digest.update(data)
                await send({"type": "http.response.body", "body": data, "more_body": True})
                if not message.get("more_body"):
                    break
            await send({"type": "http.response.body", "body": b""})
            return
        body = await read_body(receive)
        if path == "/chunks":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            for i in range(5):
                await send({"type": "http.response.body", "body": b"part%d;" % i, "more_body": True})
                await asyncio.sleep(0.01)
            await send({"type": "http.response.body", "body": b""})
            return
        if path == "/nocontent":
            await send({"type": "http.response.start", "status": 204, "headers": [(b"x-kind", b"none")]})
            await send({"type": "http.response.body", "body": b""})
            return
        if path == "/sleep":
            await asyncio.sleep(float(scope["query_string"] or b"5"))
        if path == "/stall-body":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"first", "more_body": True})
            await asyncio.sleep(5)
            await send({"type": "http.response.body", "body": b""})
            return
        headers = [(b"content-type", b"application/json"), (b"x-secret", b"upstream-only")]
        if path == "/big-headers":
            headers += [(b"x-big-%d" % i, b"v" * 1000) for i in range(32)]
        if path == "/close":
            headers.append((b"connection", b"close"))
        doc = {
            "method": scope["method"],
            "path": path,
            "query": scope["query_string"].decode(),
            "headers": [[k.decode(), v.decode()] for k, v in scope["headers"]],
            "body_len": len(body),
            "body_sha": hashlib.sha256(body).hexdigest(),
        }
        payload = json.dumps(doc).encode()
        if path == "/head-info":
            headers.append((b"content-length", b"%d" % len(payload)))
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": payload})


@pytest.fixture
async def upstream():
    app = Upstream()
    async with asgi_server(app) as url:
        app.url = url
        yield app


async def get_json(pool: Pool, target: bytes = b"/echo", **kwargs) -> dict:
    response = await pool.request(kwargs.pop("method", b"GET"), target, **kwargs)
    try:
        assert response.status == 200, response.status
        return json.loads(await response.read())
    finally:
        response.release()


# Tests


async def test_keep_alive_reuses_one_connection_for_sequential_requests(upstream):
    pool = Pool(upstream.url)
    for i in range(50):
        doc = await get_json(pool, b"/echo?i=%d" % i)
        assert doc["query"] == f"i={i}"
    assert len(upstream.peers) == 1
    assert pool.connects == 1 and pool.reuses == 49
    await pool.close()


async def test_concurrent_requests_get_their_own_responses(upstream):
    pool = Pool(upstream.url, max_idle=8)
    docs = await asyncio.gather(*(get_json(pool, b"/echo?n=%d" % i) for i in range(40)))
    assert [doc["query"] for doc in docs] == [f"n={i}" for i in range(40)]
    assert pool.idle_count <= 8
    # Idle connections are reused afterwards: no new connection for the next round.
    before = pool.connects
    await asyncio.gather(*(get_json(pool) for _ in range(8)))
    assert pool.connects == before
    await pool.close()


async def test_host_and_body_framing(upstream):
    pool = Pool(upstream.url)
    doc = await get_json(pool, method=b"POST", headers=[(b"x-a", b"1")], body=b"hello")
    names = dict(doc["headers"])
    assert names["host"] == upstream.url.removeprefix("http://")
    assert names["content-length"] == "5" and names["x-a"] == "1"
    assert doc["body_len"] == 5
    doc = await get_json(pool, headers=[(b"host", b"example.test")])
    assert dict(doc["headers"])["host"] == "example.test"
    await pool.close()


async def test_chunked_request_body_and_chunked_response(upstream):
    pool = Pool(upstream.url)

    async def parts():
        for i in range(10):
            yield b"piece-%d|" % i
            await asyncio.sleep(0)

    doc = await get_json(pool, method=b"POST", body=parts())
    expected = b"".join(b"piece-%d|" % i for i in range(10))
    assert dict(doc["headers"]).get("transfer-encoding") == "chunked"
    assert doc["body_len"] == len(expected)
    assert doc["body_sha"] == hashlib.sha256(expected).hexdigest()

    response = await pool.request(b"GET", b"/chunks")
    chunks = [chunk async for chunk in response.body_chunks()]
    response.release()
    assert b"".join(chunks) == b"part0;part1;part2;part3;part4;"
    assert pool.connects == 1  # the chunked response ended cleanly: connection reused
    await pool.close()


async def test_twenty_megabytes_both_ways_byte_for_byte(upstream):
    import tracemalloc

    total = 20 * MB
    pool = Pool(upstream.url)
    tracemalloc.start()
    try:
        response = await pool.request(
            b"POST", b"/stream-echo", [(b"content-length", b"%d" % total)], apattern(total)
        )
        digest = hashlib.sha256()
        received = 0
        async for chunk in response.body_chunks():
            digest.update(chunk)
            received += len(chunk)
        response.release()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert received == total
    assert digest.hexdigest() == pattern_digest(total)
    # Client and upstream share this process; neither held the body whole.
    assert peak < 8 * MB, peak
    await pool.close()


async def test_head_response_has_no_body_and_connection_stays_usable(upstream):
    pool = Pool(upstream.url)
    response = await pool.request(b"HEAD", b"/head-info")
    assert response.status == 200
    assert int(response.header(b"content-length")) > 0
    assert await response.read() == b""
    response.release()
    doc = await get_json(pool, b"/head-info")
    assert doc["method"] == "GET"
    assert pool.connects == 1
    await pool.close()


async def test_204_has_no_body_and_connection_is_reused(upstream):
    pool = Pool(upstream.url)
    for _ in range(3):
        response = await pool.request(b"GET", b"/nocontent")
        assert response.status == 204 and response.header(b"x-kind") == b"none"
        assert await response.read() == b""
        response.release()
    assert pool.connects == 1
    await pool.close()


async def test_refused_connection_is_retryable_connect_failed():
    pool = Pool("http://127.0.0.1:1")
    with pytest.raises(ConnectFailed) as info:
        await pool.request(b"GET", b"/")
    assert info.value.retryable and info.value.status_hint == 502
    assert "127.0.0.1:1" in str(info.value)


async def test_kept_alive_connection_closed_by_upstream_is_retried_transparently():
    async def handler(reader, writer, index):
        # The first connection answers once, then drops the next request unanswered,
        # as a server does when its keep-alive timer fires as the request arrives.
        if index == 1:
            await read_request_head(reader)
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
            await writer.drain()
            await read_request_head(reader)
            return
        while True:
            head = await read_request_head(reader)
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            body = await reader.readexactly(length) if length else b""
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%b" % (len(body), body))
            await writer.drain()

    async with raw_server(handler) as url:
        pool = Pool(url)
        first = await pool.request(b"GET", b"/")
        assert await first.read() == b"ok"
        first.release()
        response = await pool.request(b"POST", b"/", body=b"payload")
        assert response.status == 200 and await response.read() == b"payload"
        response.release()
        assert pool.stale_retries == 1 and pool.connects == 2
        await pool.close()


async def test_stale_retry_replays_a_small_streamed_body():
    async def handler(reader, writer, index):
        if index == 1:
            await read_request_head(reader)
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
            await writer.drain()
            await read_request_head(reader)
            return
        await read_request_head(reader)
        body = await reader.readuntil(b"0\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%b" % (len(body), body))
        await writer.drain()

    async def parts():
        yield b"abc"
        yield b"def"

    async with raw_server(handler) as url:
        pool = Pool(url)
        (await pool.request(b"GET", b"/")).release()
        response = await pool.request(b"POST", b"/", body=parts())
        assert await response.read() == b"3\r\nabc\r\n3\r\ndef\r\n0\r\n\r\n"
        response.release()
        assert pool.stale_retries == 1
        await pool.close()


async def test_fresh_connection_closed_before_response_is_connect_failed():
    async def handler(reader, writer, index):
        await read_request_head(reader)

    async with raw_server(handler) as url:
        pool = Pool(url)
        with pytest.raises(ConnectFailed) as info:
            await pool.request(b"GET", b"/")
        assert info.value.retryable
        assert pool.stale_retries == 0


async def test_connection_close_from_upstream_is_not_reused(upstream):
    pool = Pool(upstream.url)
    for _ in range(3):
        await get_json(pool, b"/close")
    assert pool.connects == 3 and len(upstream.peers) == 3
    await pool.close()


async def test_timeout_waiting_for_head_is_504(upstream):
    pool = Pool(upstream.url)
    started = time.monotonic()
    with pytest.raises(UpstreamTimeout) as info:
        await pool.request(b"GET", b"/sleep", timeout=0.3)
    elapsed = time.monotonic() - started
    assert info.value.status_hint == 504 and not info.value.retryable
    assert 0.2 < elapsed < 2.0
    # The timed-out connection is discarded; the pool still works.
    assert (await get_json(pool))["path"] == "/echo"
    await pool.close()


async def test_timeout_when_body_stalls(upstream):
    pool = Pool(upstream.url)
    response = await pool.request(b"GET", b"/stall-body", timeout=0.3)
    assert await response.next_chunk() == b"first"
    with pytest.raises(UpstreamTimeout):
        await response.next_chunk()
    response.release()
    await pool.close()


async def test_large_headers_both_ways(upstream):
    pool = Pool(upstream.url)
    big = [(b"x-req-%d" % i, b"r" * 1000) for i in range(32)]
    response = await pool.request(b"GET", b"/big-headers", big)
    doc = json.loads(await response.read())
    response.release()
    assert sum(1 for name, _ in response.headers if name.startswith(b"x-big-")) == 32
    assert sum(1 for name, _ in doc["headers"] if name.startswith("x-req-")) == 32
    await pool.close()


async def test_header_with_line_break_is_rejected_before_sending(upstream):
    pool = Pool(upstream.url)
    with pytest.raises(BadInput, match="x-evil"):
        await pool.request(b"GET", b"/", [(b"x-evil", b"a\r\nx-injected: 1")])
    with pytest.raises(BadInput, match="target"):
        await pool.request(b"GET", b"/a b")
    assert upstream.requests == 0
    await pool.close()


async def test_malformed_response_is_protocol_error():
    async def handler(reader, writer, index):
        await read_request_head(reader)
        writer.write(b"NOT HTTP AT ALL\r\n\r\n")
        await writer.drain()

    async with raw_server(handler) as url:
        pool = Pool(url)
        with pytest.raises(UpstreamProtocolError):
            await pool.request(b"GET", b"/")


async def test_body_cut_short_raises_upstream_error():
    async def handler(reader, writer, index):
        await read_request_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nonly-this")
        await writer.drain()

    async with raw_server(handler) as url:
        pool = Pool(url)
        response = await pool.request(b"GET", b"/")
        with pytest.raises(UpstreamError, match="before the body ended"):
            await response.read()


async def test_read_until_close_body():
    async def handler(reader, writer, index):
        await read_request_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nall of it")
        await writer.drain()

    async with raw_server(handler) as url:
        pool = Pool(url)
        response = await pool.request(b"GET", b"/")
        assert await response.read() == b"all of it"
        assert pool.idle_count == 0


def test_bad_origin_is_rejected():
    for origin in ("ftp://x:1", "127.0.0.1:80", "http://x:1/path"):
        with pytest.raises(ValueError, match="origin"):
            Pool(origin)


async def test_poolset_one_pool_per_origin(upstream):
    pools = PoolSet(max_idle=4)
    assert pools.get(upstream.url) is pools.get(upstream.url)
    assert pools.get(upstream.url).max_idle == 4
    await get_json(pools.get(upstream.url))
    await pools.close_all()
    assert len(pools) == 0


async def test_101_is_refused_unless_an_upgrade_was_asked_then_detached_with_its_bytes():
    async def handler(reader, writer, index):
        await read_request_head(reader)
        writer.write(b"HTTP/1.1 101 Switching Protocols\r\nupgrade: echo\r\nconnection: upgrade\r\n\r\nhi")
        await writer.drain()
        while data := await reader.read(100):
            writer.write(data.upper())
            await writer.drain()
        writer.close()

    async with raw_server(handler) as url:
        pool = Pool(url)
        with pytest.raises(UpstreamProtocolError, match="asked for no upgrade"):
            await pool.request(b"GET", b"/")
        response = await pool.request(b"GET", b"/", [(b"connection", b"upgrade"),
                                                     (b"upgrade", b"echo")], upgrade=True)
        assert response.status == 101
        peer = response.detach()
        # The bytes after the 101 head are kept for the tunnel; the pool lets the socket go.
        assert peer.pending == b"hi"
        assert pool.idle_count == 0
        got = asyncio.get_running_loop().create_future()

        class Reader(asyncio.Protocol):
            def data_received(self, data):
                if not got.done():
                    got.set_result(data)

        peer.transport.set_protocol(Reader())
        peer.transport.write(b"shout")
        assert await asyncio.wait_for(got, 5) == b"SHOUT"
        peer.transport.close()


async def test_response_head_past_max_head_is_a_protocol_error_without_reading_it_all():
    sent = []

    async def handler(reader, writer, index):
        await read_request_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nx-big: ")
        try:
            for _ in range(1024):
                writer.write(b"a" * 65536)
                await writer.drain()
                sent.append(1)
        except ConnectionError:
            pass

    async with raw_server(handler) as url:
        pool = Pool(url, max_head=8192)
        with pytest.raises(UpstreamProtocolError, match="max-response-head-bytes"):
            await pool.request(b"GET", b"/")
        await asyncio.sleep(0.1)
        assert len(sent) < 100, "the client kept reading an endless head"


@contextlib.asynccontextmanager
async def _warm_pool_answering_ok(heads: list, extra_lines: bytes = b""):
    """A Pool with one idle connection to a server answering every request 200 "ok" (with
    ``extra_lines`` in its head); each request head the server reads goes to ``heads``."""

    async def handler(reader, writer, index):
        while True:
            heads.append(await read_request_head(reader))
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n" + extra_lines + b"\r\nok")
            await writer.drain()

    async with raw_server(handler) as url:
        pool = Pool(url)
        (await pool.request(b"GET", b"/warm")).release()
        yield pool


async def test_start_lines_hands_a_small_response_over_whole_from_the_read_that_brought_it():
    heads = []
    async with _warm_pool_answering_ok(heads, b"x-pod: a\r\n") as pool:
        got = asyncio.get_running_loop().create_future()

        def on_head(response, error, now):
            # Called once, the body already in and the connection idle again (since that read).
            got.set_result((response.status, response.complete, response.take(), error,
                            pool.idle_count, now == pool._idle[-1].idle_since))

        assert pool.start_lines(b"GET", b"/x?y=1", b"x-a: 1\r\n", 1, False, timeout=5,
                                on_head=on_head) is True
        assert await asyncio.wait_for(got, 5) == (200, True, b"ok", None, 1, True)
        assert heads[1].startswith(b"GET /x?y=1 HTTP/1.1\r\nx-a: 1\r\nhost: 127.0.0.1:")
        assert pool.reuses == 1 and pool.connects == 1
        await pool.close()


async def test_start_lines_takes_the_pieces_of_its_lines_and_joins_the_head_once():
    heads = []
    async with _warm_pool_answering_ok(heads) as pool:
        got = asyncio.get_running_loop().create_future()
        assert pool.start_lines(b"GET", b"/p", [b"x-a", b": ", b"1", b"\r\n", b"x-b: 2\r\n"], 2,
                                False, on_head=lambda response, error, now: got.set_result(
                                    (response.status, response.take()))) is True
        assert await asyncio.wait_for(got, 5) == (200, b"ok")
        assert heads[1].startswith(b"GET /p HTTP/1.1\r\nx-a: 1\r\nx-b: 2\r\nhost: 127.0.0.1:")
        with pytest.raises(BadInput):  # a line break inside a piece: nothing sent
            pool.start_lines(b"GET", b"/", [b"x-a", b": ", b"1\r\nx-c: 3", b"\r\n"], 1, False,
                             on_head=lambda *_: None)
        assert pool.idle_count == 1
        await pool.close()


async def test_start_lines_refuses_a_line_break_and_needs_an_idle_connection(upstream):
    pool = Pool(upstream.url)
    # No idle connection yet: the caller sends the request through Pool.request instead.
    assert pool.start_lines(b"GET", b"/", b"", 0, False, on_head=lambda *_: None) is None
    (await pool.request(b"GET", b"/echo")).release()
    with pytest.raises(BadInput):
        pool.start_lines(b"GET", b"/", b"x-a: 1\r\nx-b: 2\r\n", 1, False, on_head=lambda *_: None)
    for target in (b"/a b", b" /", b"/ "):  # a space in the target would split the request line
        with pytest.raises(BadInput):
            pool.start_lines(b"GET", target, b"", 0, False, on_head=lambda *_: None)
    assert pool.idle_count == 1  # nothing was sent on it
    await pool.close()


async def test_on_head_gets_stale_when_the_kept_alive_connection_closes_unanswered():
    async def handler(reader, writer, index):
        await read_request_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        await writer.drain()
        await read_request_head(reader)  # then closes without an answer

    async with raw_server(handler) as url:
        pool = Pool(url)
        (await pool.request(b"GET", b"/")).release()
        got = asyncio.get_running_loop().create_future()
        assert pool.start_lines(b"GET", b"/", b"", 0, False,
                                on_head=lambda response, error, now: got.set_result((response, error, now))
                                ) is True
        response, error, now = await asyncio.wait_for(got, 5)
        assert response is None and type(error).__name__ == "Stale" and now is None
        await pool.close()
