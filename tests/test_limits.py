"""The data port's limits and timeouts, with raw sockets, on katyusha's and on nonna's (shared code).

Each front runs with small limits so a test takes about a second: header
and body timeouts 1 s, keep-alive 1 s, bodies up to 1000 bytes, 10 header
fields, response heads from the pod up to 4096 bytes.
"""

from __future__ import annotations

import asyncio
import select
import threading
import time
from pathlib import Path

import pytest

from tests.procs import Proc, script
from tests.raw_http import connect, read_all
from tests.test_datapath import Upstream

SMALL = ["--header-timeout", "1", "--body-timeout", "1", "--keepalive-timeout", "1",
         "--max-body-bytes", "1000", "--max-headers", "10", "--max-response-head-bytes", "4096"]


class BigHead:
    """A raw upstream whose response head never ends: 64 MiB of one header line."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(ready,), daemon=True)
        self.thread.start()
        assert ready.wait(10)

    def _run(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)

        async def handle(reader, writer):
            try:
                await reader.readuntil(b"\r\n\r\n")
                writer.write(b"HTTP/1.1 200 OK\r\nx-big: ")
                block = b"a" * 65536
                for _ in range(1024):
                    writer.write(block)
                    await writer.drain()
            except (ConnectionError, asyncio.IncompleteReadError):
                pass
            finally:
                writer.close()

        server = self.loop.run_until_complete(asyncio.start_server(handle, "127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        ready.set()
        self.loop.run_forever()


@pytest.fixture(scope="module")
def upstream():
    server = Upstream()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def bighead():
    return BigHead()


@pytest.fixture(scope="module", params=["katyusha", "nonna"])
def front(request, upstream):
    if request.param == "katyusha":
        argv = [script("katyusha"), "serve", "--pod", f"{upstream.url},name=up"]
    else:
        argv = [script("nonna"), "--upstream", upstream.url, "--concurrency", "0"]
    with Proc([*argv, "--port", "0", "--admin-port", "0", *SMALL], ready_timeout=30) as proc:
        yield proc


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def test_slowloris_is_answered_408_at_the_header_timeout_whatever_it_trickles(front):
    socks = [connect(front.url) for _ in range(20)]
    started = time.monotonic()
    for sock in socks:
        sock.sendall(b"GET /hello HTTP/1.1\r\n")
    answered_at = {}
    # One byte every 0.2 s on each: a timer reset by each byte would never fire.
    while len(answered_at) < len(socks) and time.monotonic() - started < 5:
        for index, sock in enumerate(socks):
            if index not in answered_at:
                try:
                    sock.sendall(b"x")
                except OSError:
                    pass
        readable, _, _ = select.select([s for i, s in enumerate(socks) if i not in answered_at],
                                       [], [], 0.2)
        for sock in readable:
            answered_at[socks.index(sock)] = time.monotonic() - started
    replies = [read_all(sock) for sock in socks]
    for sock in socks:
        sock.close()
    assert len(answered_at) == len(socks), "some slowloris connections were never answered"
    assert max(answered_at.values()) < 2, answered_at
    assert all(reply.startswith(b"HTTP/1.1 408") for reply in replies), replies
    assert b"header-timeout" in replies[0]


def test_a_connection_that_sends_nothing_is_closed_at_the_header_timeout(front):
    sock = connect(front.url)
    started = time.monotonic()
    assert read_all(sock) == b""  # closed without an answer nobody asked for
    assert 0.8 < time.monotonic() - started < 2.5
    sock.close()


def test_idle_kept_alive_connection_closes_at_the_keepalive_timeout(front):
    sock = connect(front.url)
    sock.sendall(b"GET /hello HTTP/1.1\r\nHost: t\r\n\r\n")
    first = sock.recv(65536)
    assert first.startswith(b"HTTP/1.1 200") and first.endswith(b"hello")
    started = time.monotonic()
    assert read_all(sock) == b""
    assert 0.8 < time.monotonic() - started < 2.5
    sock.close()


def test_stalled_body_gets_408_at_the_body_timeout(front):
    sock = connect(front.url)
    sock.sendall(b"PUT /sink HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\n" + b"x" * 10)
    started = time.monotonic()
    reply = read_all(sock)
    sock.close()
    assert reply.startswith(b"HTTP/1.1 408"), reply[:200]
    assert b"body-timeout" in reply
    assert 0.8 < time.monotonic() - started < 3


def test_declared_oversize_body_gets_413_before_any_byte_is_read(front):
    sock = connect(front.url)
    sock.sendall(b"PUT /sink HTTP/1.1\r\nHost: t\r\nContent-Length: 2000\r\nExpect: 100-continue\r\n\r\n")
    reply = read_all(sock)
    sock.close()
    # No 100 Continue: the client never has to send the body.
    assert reply.startswith(b"HTTP/1.1 413"), reply[:200]
    assert b"max-body-bytes" in reply


def test_chunked_body_past_the_limit_gets_413(front):
    sock = connect(front.url)
    sock.sendall(b"PUT /sink HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n")
    for _ in range(3):
        sock.sendall(b"190\r\n" + b"y" * 400 + b"\r\n")
    reply = read_all(sock)
    sock.close()
    assert reply.startswith(b"HTTP/1.1 413"), reply[:200]
    assert b"max-body-bytes" in reply


def test_a_body_within_the_limit_passes(front):
    sock = connect(front.url)
    sock.sendall(b"PUT /sink HTTP/1.1\r\nHost: t\r\nContent-Length: 1000\r\nConnection: close\r\n\r\n"
                 + b"z" * 1000)
    reply = read_all(sock)
    sock.close()
    assert reply.startswith(b"HTTP/1.1 200"), reply[:200]
    assert b'"length": 1000' in reply


def test_too_many_header_fields_get_431(front):
    fields = b"".join(b"x-f%d: v\r\n" % index for index in range(10))
    sock = connect(front.url)
    sock.sendall(b"GET /hello HTTP/1.1\r\nHost: t\r\n" + fields + b"\r\n")
    reply = read_all(sock)
    sock.close()
    assert reply.startswith(b"HTTP/1.1 431"), reply[:200]
    assert b"max-headers" in reply


def test_oversize_response_head_from_the_pod_is_a_502_and_memory_stays_bounded(front, bighead):
    if "nonna" in front.argv[0]:
        argv = [script("nonna"), "--upstream", bighead.url]
    else:
        argv = [script("katyusha"), "serve", "--pod", f"{bighead.url},name=big", "--retries", "0"]
    with Proc([*argv, "--port", "0", "--admin-port", "0", *SMALL], ready_timeout=30) as proc:
        before = rss_mb(proc.ready.pid)
        sock = connect(proc.url)
        started = time.monotonic()
        sock.sendall(b"GET /x HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        reply = read_all(sock)
        sock.close()
        assert reply.startswith(b"HTTP/1.1 502"), reply[:200]
        assert b"max-response-head-bytes" in reply
        assert time.monotonic() - started < 2
        assert rss_mb(proc.ready.pid) - before < 8


@pytest.mark.parametrize("kind", ["katyusha", "nonna"])
def test_past_max_connections_a_canned_503_and_close(upstream, kind):
    if kind == "katyusha":
        argv = [script("katyusha"), "serve", "--pod", f"{upstream.url},name=up"]
    else:
        argv = [script("nonna"), "--upstream", upstream.url]
    with Proc([*argv, "--port", "0", "--admin-port", "0", "--max-connections", "5"],
              ready_timeout=30) as proc:
        held = [connect(proc.url) for _ in range(5)]
        time.sleep(0.2)
        extra = connect(proc.url)
        reply = read_all(extra)
        extra.close()
        assert reply.startswith(b"HTTP/1.1 503"), reply[:200]
        assert b"max-connections" in reply
        # The held connections are served as usual, and a freed place is taken again.
        held[0].sendall(b"GET /hello HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        assert read_all(held[0]).endswith(b"hello")
        for sock in held:
            sock.close()
        time.sleep(0.3)
        again = connect(proc.url)
        again.sendall(b"GET /hello HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        assert read_all(again).endswith(b"hello")
        again.close()


def test_a_slow_uploader_holds_its_l1_slot_only_until_the_body_timeout(upstream):
    argv = [script("katyusha"), "serve", "--port", "0", "--admin-port", "0",
            "--pod", f"{upstream.url},name=up", "--katyusha-junbanmachi-concurrent-request", "1",
            "--body-timeout", "1"]
    with Proc(argv, ready_timeout=30) as proc:
        slow = connect(proc.url)
        slow.sendall(b"PUT /sink HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\n" + b"x" * 10)
        time.sleep(0.2)  # it holds the one L1 slot now
        started = time.monotonic()
        other = connect(proc.url)
        other.sendall(b"GET /hello HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        reply = read_all(other)
        waited = time.monotonic() - started
        other.close()
        assert reply.startswith(b"HTTP/1.1 200") and reply.endswith(b"hello"), reply[:200]
        assert waited < 2.5, waited
        assert read_all(slow).startswith(b"HTTP/1.1 408")
        slow.close()


def test_a_client_trickling_its_head_takes_no_l1_slot(upstream):
    argv = [script("katyusha"), "serve", "--port", "0", "--admin-port", "0",
            "--pod", f"{upstream.url},name=up", "--katyusha-junbanmachi-concurrent-request", "1"]
    with Proc(argv, ready_timeout=30) as proc:
        trickling = [connect(proc.url) for _ in range(5)]
        for sock in trickling:
            sock.sendall(b"GET /hello HTTP/1.1\r\nHost: t\r\nx-slow: ")
        started = time.monotonic()
        other = connect(proc.url)
        other.sendall(b"GET /hello HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        assert read_all(other).endswith(b"hello")
        assert time.monotonic() - started < 1
        other.close()
        for sock in trickling:
            sock.close()
