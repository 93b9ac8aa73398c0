"""A burst of new connections on a busy data port is accepted at once, not one per loop iteration.

uvloop (libuv since 1.45) accepts one connection each time the event loop
polls; on a busy proxy an iteration takes tens of milliseconds, so the last
of 256 connections opened together waited seconds for its accept: the tail
at 256 connections in docs/performance.md. katyusha's HTTP server accepts
the others waiting (``ACCEPT_BURST``) when the loop hands it one.
"""

from __future__ import annotations

import asyncio
import socket
import time

import pytest
import uvicorn
from uvicorn.server import ServerState

from katyusha.http.limits import EdgeLimits
from katyusha.http.server import ACCEPT_BURST, LeanHTTPProtocol
from katyusha.serving import bind_socket

uvloop = pytest.importorskip("uvloop")

CLIENTS = 40


async def _hello(scope, receive, send) -> None:
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-length", b"5")]})
    await send({"type": "http.response.body", "body": b"hello"})


def _accept_iterations(listener: socket.socket | None) -> tuple[int, int]:
    """Open CLIENTS connections to a server whose loop is busy 5 ms an iteration.

    Returns (loop iterations until all were accepted, answers to a GET on each).
    """
    sock = bind_socket("127.0.0.1", 0)
    port = sock.getsockname()[1]
    config = uvicorn.Config(_hello, lifespan="off", log_level="warning")
    config.load()
    state = ServerState()
    protocol = LeanHTTPProtocol.with_limits(EdgeLimits(), None, sock if listener else None)
    loop = uvloop.new_event_loop()
    iterations = 0

    def busy() -> None:
        nonlocal iterations
        iterations += 1
        time.sleep(0.005)  # the work of the connections already served
        loop.call_soon(busy)

    async def run() -> tuple[int, int]:
        await loop.create_server(lambda: protocol(config, state, {}, _loop=loop), sock=sock)
        loop.call_soon(busy)
        clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(CLIENTS)]
        for client in clients:
            client.setblocking(False)
        started = iterations
        deadline = time.monotonic() + 10
        while len(state.connections) < CLIENTS and time.monotonic() < deadline:
            await asyncio.sleep(0)
        accepted_in = iterations - started
        answers = 0
        for client in clients:
            client.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        for client in clients:
            data = b""
            while not data.endswith(b"hello") and time.monotonic() < deadline:
                try:
                    data += client.recv(4096)
                except BlockingIOError:
                    await asyncio.sleep(0.001)
            answers += data.startswith(b"HTTP/1.1 200")
            client.close()
        return accepted_in, answers

    try:
        return loop.run_until_complete(run())
    finally:
        sock.close()
        loop.close()


def test_a_burst_of_connections_is_accepted_in_a_few_loop_iterations():
    assert ACCEPT_BURST >= CLIENTS
    iterations, answers = _accept_iterations(listener=True)
    assert answers == CLIENTS
    assert iterations <= 4


def test_without_the_listener_the_loop_accepts_one_an_iteration():
    # What the burst fixes: the same clients without it wait one iteration each.
    iterations, answers = _accept_iterations(listener=None)
    assert answers == CLIENTS
    assert iterations >= CLIENTS - 2
