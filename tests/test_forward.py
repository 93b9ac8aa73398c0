"""The ASGI forwarder end to end: client -> uvicorn(forward) -> upstream, all real sockets on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import time

import aiohttp
import pytest

from katyusha.http import Pool, ReplayableReceive, ResponseAborted, UpstreamError, forward
from tests.test_http_client import (
    MB,
    Upstream,
    apattern,
    asgi_server,
    pattern_digest,
    raw_server,
    read_request_head,
)


class Forwarder:
    """The proxy under test: tries each pool in turn while the error is retryable,
    answers the last error's status_hint itself, records every ForwardResult."""

    def __init__(self, pools: list[Pool], timeout: float | None = None):
        self.pools = pools
        self.timeout = timeout
        self.results = []
        self.aborted = []

    def on_head(self, status, headers):
        return [(k, v) for k, v in headers if k != b"x-secret"] + [(b"x-via", b"forwarder")]

    async def __call__(self, scope, receive, send):
        receive = ReplayableReceive(receive)
        error = None
        for pool in self.pools:
            try:
                result = await forward(
                    scope,
                    receive,
                    send,
                    pool,
                    extra_request_headers=[(b"x-forwarded-by", b"test")],
                    on_response_head=self.on_head,
                    timeout=self.timeout,
                )
            except UpstreamError as exc:
                error = exc
                if exc.retryable:
                    continue
                break
            except ResponseAborted as exc:
                self.aborted.append(exc)
                raise
            self.results.append(result)
            return
        body = str(error).encode()
        await send(
            {
                "type": "http.response.start",
                "status": error.status_hint,
                "headers": [(b"content-length", b"%d" % len(body)), (b"x-error", b"upstream")],
            }
        )
        await send({"type": "http.response.body", "body": body})


@contextlib.asynccontextmanager
async def proxy_to(*urls: str, timeout: float | None = None, **pool_kwargs):
    pools = [Pool(url, **pool_kwargs) for url in urls]
    app = Forwarder(pools, timeout)
    async with asgi_server(app) as url:
        app.url = url
        yield app
    for pool in pools:
        await pool.close()


@pytest.fixture
async def upstream():
    app = Upstream()
    async with asgi_server(app) as url:
        app.url = url
        yield app


@pytest.fixture
async def session():
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as client:
        yield client


async def raw_exchange(url: str, request: bytes) -> tuple[bytes, bytes]:
    """Send raw request bytes, read until the server closes; returns (head, body)."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(request)
    await writer.drain()
    data = await asyncio.wait_for(reader.read(-1), 10)
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    if b"transfer-encoding: chunked" in head.lower():
        body = dechunk(body)
    return head, body


def dechunk(data: bytes) -> bytes:
    out = []
    while True:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            return b"".join(out)
        out.append(data[:size])
        data = data[size + 2 :]


async def test_get_round_trip_keeps_upstream_connection_alive(upstream, session):
    async with proxy_to(upstream.url) as proxy:
        for i in range(20):
            async with session.get(f"{proxy.url}/echo?i={i}") as response:
                assert response.status == 200
                doc = await response.json()
                assert doc["query"] == f"i={i}"
                assert response.headers["x-via"] == "forwarder"
        assert len(upstream.peers) == 1
        assert proxy.pools[0].connects == 1


async def test_hop_by_hop_headers_are_not_forwarded_either_way(upstream):
    async with proxy_to(upstream.url) as proxy:
        request = (
            b"GET /echo HTTP/1.1\r\nHost: svc.example\r\n"
            b"Connection: close, X-Conn-Named\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\n"
            b"Proxy-Authorization: Basic eDp5\r\nUpgrade: h2c\r\nX-Conn-Named: drop\r\n"
            b"X-Keep: kept\r\nX-Secret: s\r\n\r\n"
        )
        head, body = await raw_exchange(proxy.url, request)
    assert head.startswith(b"HTTP/1.1 200")
    sent = dict(json.loads(body)["headers"])
    for name in ("connection", "keep-alive", "te", "proxy-authorization", "upgrade", "x-conn-named"):
        assert name not in sent, name
    assert sent["x-keep"] == "kept"
    assert sent["host"] == "svc.example"
    assert sent["x-forwarded-by"] == "test"
    lower = head.lower()
    assert b"x-via: forwarder" in lower
    assert b"x-secret" not in lower  # on_response_head removed the upstream's x-secret
    assert b"keep-alive:" not in lower


async def test_response_hop_by_hop_headers_are_stripped():
    async def handler(reader, writer, index):
        await read_request_head(reader)
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive, X-Upstream-Hop\r\n"
            b"Keep-Alive: timeout=9\r\nX-Upstream-Hop: 1\r\nX-End: 2\r\n\r\nok"
        )
        await writer.drain()

    async with raw_server(handler) as url, proxy_to(url) as proxy:
        head, body = await raw_exchange(
            proxy.url, b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
        )
    lower = head.lower()
    assert body == b"ok"
    assert b"x-end: 2" in lower
    assert b"keep-alive" not in lower and b"x-upstream-hop" not in lower


async def test_post_body_and_chunked_request_reach_upstream(upstream, session):
    async with proxy_to(upstream.url) as proxy:
        async with session.post(f"{proxy.url}/echo", data=b"x" * 1000) as response:
            doc = await response.json()
        assert doc["body_len"] == 1000 and doc["method"] == "POST"

        async def parts():
            for i in range(20):
                yield b"%04d" % i
                await asyncio.sleep(0.001)

        async with session.post(f"{proxy.url}/echo", data=parts()) as response:
            doc = await response.json()
        expected = b"".join(b"%04d" % i for i in range(20))
        assert doc["body_sha"] == hashlib.sha256(expected).hexdigest()


async def test_chunked_response_streams_through_before_it_ends(session):
    release = asyncio.Event()

    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"first;", "more_body": True})
        await asyncio.wait_for(release.wait(), 10)
        await send({"type": "http.response.body", "body": b"second;", "more_body": True})
        await send({"type": "http.response.body", "body": b"last"})

    async with asgi_server(app) as url, proxy_to(url) as proxy:
        async with session.get(f"{proxy.url}/") as response:
            assert response.headers.get("transfer-encoding") == "chunked"
            # The first chunk arrives while the upstream is still holding the rest.
            first = await asyncio.wait_for(response.content.readexactly(6), 5)
            assert first == b"first;"
            release.set()
            assert await response.read() == b"second;last"
        assert proxy.results[-1].response_bytes == len(b"first;second;last")


async def test_twenty_megabytes_both_ways_through_the_forwarder(upstream, session):
    total = 20 * MB
    async with proxy_to(upstream.url) as proxy:
        async with session.post(
            f"{proxy.url}/stream-echo", data=apattern(total), headers={"content-length": str(total)}
        ) as response:
            assert response.status == 200
            digest = hashlib.sha256()
            received = 0
            async for chunk in response.content.iter_any():
                digest.update(chunk)
                received += len(chunk)
    assert received == total
    assert digest.hexdigest() == pattern_digest(total)
    assert proxy.results[-1].request_bytes == total
    assert proxy.results[-1].response_bytes == total


async def test_head_and_204_through_the_forwarder(upstream, session):
    async with proxy_to(upstream.url) as proxy:
        async with session.head(f"{proxy.url}/head-info") as response:
            assert response.status == 200
            assert int(response.headers["content-length"]) > 0
            assert await response.read() == b""
        async with session.get(f"{proxy.url}/nocontent") as response:
            assert response.status == 204 and response.headers["x-kind"] == "none"
            assert await response.read() == b""
        async with session.get(f"{proxy.url}/head-info") as response:
            assert (await response.json())["method"] == "GET"
        assert proxy.pools[0].connects == 1


async def test_refused_upstream_is_retried_on_the_next_with_the_body(upstream, session):
    async with proxy_to("http://127.0.0.1:1", upstream.url) as proxy:
        async with session.post(f"{proxy.url}/echo", data=b"payload") as response:
            assert response.status == 200
            assert (await response.json())["body_len"] == len(b"payload")


async def test_refused_upstream_only_answers_502_naming_it(session):
    async with proxy_to("http://127.0.0.1:1") as proxy:
        async with session.get(f"{proxy.url}/x") as response:
            assert response.status == 502
            assert "127.0.0.1:1" in await response.text()


async def test_upstream_timeout_answers_504(upstream, session):
    async with proxy_to(upstream.url, timeout=0.3) as proxy:
        started = time.monotonic()
        async with session.get(f"{proxy.url}/sleep") as response:
            assert response.status == 504
            assert "0.3s" in await response.text()
        assert time.monotonic() - started < 3.0
        # The proxy still serves others afterwards.
        async with session.get(f"{proxy.url}/echo") as response:
            assert response.status == 200


async def test_upstream_failing_mid_body_aborts_the_client_response(session):
    async def handler(reader, writer, index):
        await read_request_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100000\r\n\r\n" + b"z" * 70000)
        await writer.drain()

    async with raw_server(handler) as url, proxy_to(url) as proxy:
        async with session.get(f"{proxy.url}/") as response:
            assert response.status == 200
            with pytest.raises(aiohttp.ClientPayloadError):
                await response.read()
        assert len(proxy.aborted) == 1 and proxy.aborted[0].result.status == 200


async def test_large_headers_pass_through(upstream):
    async with proxy_to(upstream.url) as proxy:
        extra = b"".join(b"X-Req-%d: %b\r\n" % (i, b"r" * 1000) for i in range(32))
        head, body = await raw_exchange(
            proxy.url,
            b"GET /big-headers HTTP/1.1\r\nHost: a\r\nConnection: close\r\n" + extra + b"\r\n",
        )
    assert head.startswith(b"HTTP/1.1 200")
    assert head.lower().count(b"x-big-") == 32
    sent = json.loads(body)["headers"]
    assert sum(1 for name, _ in sent if name.startswith("x-req-")) == 32


async def test_slow_client_does_not_make_the_forwarder_buffer_the_body():
    total = 64 * MB
    produced = 0

    async def app(scope, receive, send):
        nonlocal produced
        block = b"b" * (256 * 1024)
        await send(
            {"type": "http.response.start", "status": 200,
             "headers": [(b"content-length", b"%d" % total)]}
        )
        while produced < total:
            await send({"type": "http.response.body", "body": block, "more_body": True})
            produced += len(block)
        await send({"type": "http.response.body", "body": b""})

    async with asgi_server(app) as url, proxy_to(url) as proxy:
        host, port = proxy.url.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port), limit=64 * 1024)
        writer.write(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        await reader.readuntil(b"\r\n\r\n")
        await reader.readexactly(1 * MB)
        # Stop reading: the whole chain should stall well short of the body.
        await asyncio.sleep(0.5)
        stalled_at = produced
        await asyncio.sleep(0.3)
        assert produced == stalled_at, "upstream kept producing while the client read nothing"
        assert produced < total // 3, produced
        print(f"upstream produced {produced / MB:.1f} MB while the client held 1 MB")
        received = 1 * MB
        while received < total:
            received += len(await reader.read(1 * MB))
        writer.close()
        assert received == total


async def test_client_disconnect_mid_body_closes_the_upstream_connection(session):
    upstream_saw_disconnect = asyncio.Event()

    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        if scope["path"] == "/ok":
            await send({"type": "http.response.body", "body": b"fine"})
            return
        # Stream about 64 MB slowly, watching for the forwarder to go away.
        async def until_disconnect():
            while (await receive())["type"] != "http.disconnect":
                pass

        gone = asyncio.ensure_future(until_disconnect())
        for _ in range(1000):
            if gone.done():
                upstream_saw_disconnect.set()
                return
            await send({"type": "http.response.body", "body": b"x" * 65536, "more_body": True})
            await asyncio.sleep(0.005)
        gone.cancel()
        await send({"type": "http.response.body", "body": b""})

    async with asgi_server(app) as url, proxy_to(url) as proxy:
        host, port = proxy.url.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(b"GET /slow HTTP/1.1\r\nHost: a\r\n\r\n")
        await reader.readexactly(200_000)
        writer.close()
        # The forwarder closes its upstream connection instead of draining the body.
        await asyncio.wait_for(upstream_saw_disconnect.wait(), 5)
        assert proxy.results[-1].client_disconnected
        async with session.get(f"{proxy.url}/ok") as response:
            assert await response.read() == b"fine"
