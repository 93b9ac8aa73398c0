"""WebSockets through katyusha, and through katyusha and nonna, to a Starlette app on uvicorn.

The client is the ``websockets`` library; the server is Starlette's WebSocket
endpoint on uvicorn (tests/edge_servers.py). After the 101 katyusha and nonna
relay bytes both ways (katyusha.http.tunnel); while the connection is open it
counts as a request in flight on its pod.
"""

from __future__ import annotations

import asyncio
import socket
import time
import urllib.request

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.edge_servers import start_chain, stop_all
from tests.procs import Proc, get_json, script
from tests.raw_http import send_raw


def ws_url(proc: Proc, path: str = "/ws") -> str:
    return proc.url.replace("http://", "ws://") + path


def pod_in_flight(proc: Proc) -> int:
    return sum(row["in_flight"] for row in get_json(proc.admin + "/pods")["pods"])


async def test_hundred_messages_echo_in_order_and_a_megabyte_passes(chain):
    async with connect(ws_url(chain), max_size=None, ping_interval=None) as ws:
        for index in range(100):
            await ws.send(f"message {index}")
        assert [await ws.recv() for _ in range(100)] == [f"message {i}" for i in range(100)]
        big = bytes(range(256)) * 4096 + b"end"  # 1 MiB and a bit, binary
        await ws.send(big)
        assert await ws.recv() == big


async def test_open_websocket_holds_the_pods_in_flight_count_until_it_closes(chain):
    assert pod_in_flight(chain) == 0
    async with connect(ws_url(chain), ping_interval=None) as ws:
        await ws.send("hi")
        assert await ws.recv() == "hi"
        assert await asyncio.to_thread(pod_in_flight, chain) == 1
    for _ in range(50):
        if await asyncio.to_thread(pod_in_flight, chain) == 0:
            break
        await asyncio.sleep(0.05)
    assert await asyncio.to_thread(pod_in_flight, chain) == 0


async def test_client_close_is_clean_and_reaches_the_app(chain, app):
    before = len(get_json(app.url + "/closes")["closes"])
    async with connect(ws_url(chain), ping_interval=None) as ws:
        await ws.send("x")
        await ws.recv()
        await ws.close(code=1000, reason="done")
        assert ws.close_code == 1000
    for _ in range(50):
        closes = get_json(app.url + "/closes")["closes"]
        if len(closes) > before:
            break
        await asyncio.sleep(0.05)
    assert closes[before:] == [1000]


async def test_server_closing_first_reaches_the_client_with_its_code(chain):
    async with connect(ws_url(chain), ping_interval=None) as ws:
        await ws.send("bye")
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), 10)
    assert closed.value.rcvd.code == 4001
    assert closed.value.rcvd.reason == "server says bye"
    # The proxy is fine afterwards.
    async with connect(ws_url(chain), ping_interval=None) as ws:
        await ws.send("again")
        assert await ws.recv() == "again"


async def test_refused_upgrade_passes_the_pods_answer_through(chain):
    # Starlette refuses a WebSocket on a path it has no WebSocket route for: 403.
    with pytest.raises(InvalidStatus) as refused:
        async with connect(ws_url(chain, "/hello"), ping_interval=None):
            pass
    assert refused.value.response.status_code == 403
    # An upgrade to a protocol the app does not speak: its plain answer, then close.
    reply = send_raw(chain.url, b"GET /hello HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 200"), reply[:200]
    assert reply.endswith(b"hello")


def test_a_websocket_client_that_never_reads_is_pushed_back_not_buffered(chain):
    """Backpressure both ways: echoes pile up unread, so the proxy stops reading the client."""
    pid = chain.ready.pid

    def rss_mb() -> float:
        with open(f"/proc/{pid}/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith("VmRSS")) / 1024

    before = rss_mb()
    host, port = chain.url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=10)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        sock.sendall(b"GET /ws HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
                     b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
        head = b""
        while b"\r\n\r\n" not in head:
            head += sock.recv(1)
        assert head.startswith(b"HTTP/1.1 101"), head
        # Masked binary frames of 1 MiB with a zero mask key (payload sent as is); never read.
        payload = b"b" * (1 << 20)
        frame = b"\x82\xff" + (1 << 20).to_bytes(8, "big") + b"\0\0\0\0" + payload
        sock.settimeout(3)
        sent = 0
        try:
            for _ in range(200):
                sock.sendall(frame)
                sent += 1
        except TimeoutError:
            pass
        growth = rss_mb() - before
        assert sent < 200, "sending never blocked: nothing pushed back"
        # What is in flight sits in the app's queue and the kernel, not in the proxy.
        assert growth < 24, f"RSS grew {growth:.1f} MB with {sent} MiB sent"
    finally:
        sock.close()


def test_idle_websocket_is_closed_at_upgrade_idle_timeout(app):
    async def run(url: str) -> float:
        async with connect(url, ping_interval=None) as ws:
            await ws.send("hi")
            await ws.recv()
            started = time.monotonic()
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(ws.recv(), 10)
            return time.monotonic() - started

    procs = start_chain("katyusha", app.url, "--upgrade-idle-timeout", "1")
    try:
        idle = asyncio.run(run(ws_url(procs[-1])))
        assert 0.8 < idle < 3.5, idle
        assert get_json(procs[-1].admin + "/pods")["pods"][0]["in_flight"] == 0
    finally:
        stop_all(procs)


def test_uvicorn_http_server_refuses_websockets_with_a_clear_501(app):
    with Proc([script("katyusha"), "serve", "--port", "0", "--admin-port", "0",
               "--pod", f"{app.url},name=pod", "--http-server", "uvicorn"], ready_timeout=30) as proxy:
        async def run():
            with pytest.raises(InvalidStatus) as refused:
                async with connect(ws_url(proxy)):
                    pass
            return refused.value.response

        response = asyncio.run(run())
        assert response.status_code == 501
        assert b"http-server: lean" in response.body
        # Plain HTTP still works there.
        with urllib.request.urlopen(proxy.url + "/hello", timeout=10) as reply:
            assert reply.read() == b"hello"
