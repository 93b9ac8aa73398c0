"""HTTP/1.1 edge cases on katyusha's and nonna's data ports, with raw sockets (RFC 9110/9112).

``Expect: 100-continue``, HTTP/1.0 clients, ``OPTIONS *``, absolute-form
targets, and pipelining: a request that was forwarded gets its response
before the connection is closed for what the client sent after it.
"""

from __future__ import annotations

import json
import socket

import pytest

from tests.procs import Proc, script
from tests.raw_http import connect, read_all
from tests.test_datapath import Upstream


@pytest.fixture(scope="module")
def upstream():
    server = Upstream()
    yield server
    server.stop()


@pytest.fixture(scope="module", params=["katyusha", "nonna"])
def front(request, upstream):
    if request.param == "katyusha":
        argv = [script("katyusha"), "serve", "--pod", f"{upstream.url},name=up"]
    else:
        argv = [script("nonna"), "--upstream", upstream.url, "--concurrency", "0"]
    with Proc([*argv, "--port", "0", "--admin-port", "0"], ready_timeout=30) as proc:
        yield proc


def read_response(sock: socket.socket, buffer: bytearray) -> tuple[bytes, dict, bytes]:
    """One response with a Content-Length body from ``sock``; leftovers stay in ``buffer``."""
    while b"\r\n\r\n" not in buffer:
        chunk = sock.recv(65536)
        assert chunk, f"closed before a whole head: {bytes(buffer)!r}"
        buffer += chunk
    head, _, rest = bytes(buffer).partition(b"\r\n\r\n")
    status, *lines = head.split(b"\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(b":") for line in lines)}
    length = int(headers.get(b"content-length", b"0"))
    while len(rest) < length:
        chunk = sock.recv(65536)
        assert chunk
        rest += chunk
    buffer[:] = rest[length:]
    return status, headers, rest[:length]


def test_expect_100_continue_gets_100_then_the_answer(front):
    sock = connect(front.url)
    sock.sendall(b"PUT /sink HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
    interim = sock.recv(65536)
    assert interim.startswith(b"HTTP/1.1 100 Continue\r\n\r\n"), interim
    sock.sendall(b"hello")
    buffer = bytearray(interim[len(b"HTTP/1.1 100 Continue\r\n\r\n"):])
    status, _, body = read_response(sock, buffer)
    sock.close()
    assert status.startswith(b"HTTP/1.1 200")
    assert json.loads(body)["length"] == 5


def test_http10_without_keep_alive_gets_its_answer_and_a_close(front):
    sock = connect(front.url)
    sock.sendall(b"GET /hello HTTP/1.0\r\nHost: t\r\n\r\n")
    reply = read_all(sock)
    sock.close()
    assert reply.startswith(b"HTTP/1.1 200")
    assert b"connection: close" in reply.lower()
    assert reply.endswith(b"hello")


def test_http10_keep_alive_is_kept_when_asked(front):
    sock = connect(front.url)
    buffer = bytearray()
    for _ in range(2):
        sock.sendall(b"GET /hello HTTP/1.0\r\nHost: t\r\nConnection: keep-alive\r\n\r\n")
        status, headers, body = read_response(sock, buffer)
        assert status.startswith(b"HTTP/1.1 200")
        assert headers[b"connection"].lower() == b"keep-alive"
        assert body == b"hello"
    sock.close()


def test_http10_never_gets_chunked_coding(front):
    sock = connect(front.url)
    # The pod answers chunked; a 1.0 client gets the body delimited by the close.
    sock.sendall(b"GET /chunked HTTP/1.0\r\nHost: t\r\nConnection: keep-alive\r\n\r\n")
    reply = read_all(sock)
    sock.close()
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert b"transfer-encoding" not in head.lower()
    assert b"connection: close" in head.lower()
    assert body == b"part-0;part-1;part-2;part-3;part-4;"


def test_options_asterisk_is_answered_by_the_server(front):
    sock = connect(front.url)
    sock.sendall(b"OPTIONS * HTTP/1.1\r\nHost: t\r\n\r\n")
    status, headers, body = read_response(sock, bytearray())
    sock.close()
    assert status.startswith(b"HTTP/1.1 200")
    assert b"GET" in headers[b"allow"]
    assert body == b""


def test_asterisk_with_another_method_is_a_400(front):
    sock = connect(front.url)
    sock.sendall(b"GET * HTTP/1.1\r\nHost: t\r\n\r\n")
    reply = read_all(sock)
    sock.close()
    assert reply.startswith(b"HTTP/1.1 400")


def test_absolute_form_target_takes_its_host_from_the_target(front):
    sock = connect(front.url)
    sock.sendall(b"GET http://app.example:8080/host?x=1 HTTP/1.1\r\nHost: wrong.example\r\n\r\n")
    status, _, body = read_response(sock, bytearray())
    sock.close()
    assert status.startswith(b"HTTP/1.1 200"), body
    # The app got the origin-form path, and the target's authority as Host (RFC 9112 3.2.2).
    assert json.loads(body) == {"host": "app.example:8080", "path": "/host?x=1"}


def test_pipelined_garbage_after_a_request_comes_after_its_answer(front):
    sock = connect(front.url)
    sock.sendall(b"GET /sleep?s=0.2 HTTP/1.1\r\nHost: t\r\n\r\nthis is not HTTP\r\n\r\n")
    reply = read_all(sock)
    sock.close()
    first, _, rest = reply.partition(b"slept")
    assert first.startswith(b"HTTP/1.1 200"), reply[:300]
    assert rest.startswith(b"HTTP/1.1 400"), reply[:300]


def test_body_longer_than_its_content_length_is_answered_then_400(front):
    sock = connect(front.url)
    body = b"x" * 50
    sock.sendall(b"PUT /sink HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\n" + body)
    buffer = bytearray()
    status, _, answer = read_response(sock, buffer)
    assert status.startswith(b"HTTP/1.1 200")
    assert json.loads(answer)["length"] == 5
    rest = bytes(buffer) + read_all(sock)
    sock.close()
    assert rest.startswith(b"HTTP/1.1 400"), rest[:200]


def test_pipelined_requests_are_answered_in_order(front):
    sock = connect(front.url)
    sock.sendall(b"GET /sleep?s=0.2 HTTP/1.1\r\nHost: t\r\n\r\n"
                 b"GET /hello HTTP/1.1\r\nHost: t\r\n\r\n"
                 b"HEAD /hello HTTP/1.1\r\nHost: t\r\n\r\n"
                 b"GET /hello HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
    reply = read_all(sock)
    sock.close()
    # Four heads in order; the HEAD answer has a length and no body.
    parts = reply.split(b"HTTP/1.1 200 OK\r\n")
    assert parts[0] == b"" and len(parts) == 5, reply
    assert parts[1].endswith(b"slept") and parts[2].endswith(b"hello")
    assert parts[3].endswith(b"\r\n\r\n") and b"content-length: 5" in parts[3].lower()
    assert parts[4].endswith(b"hello") and b"connection: close" in parts[4].lower()


def test_connect_is_refused_with_405(front):
    sock = connect(front.url)
    sock.sendall(b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n")
    reply = read_all(sock)
    sock.close()
    assert reply.startswith(b"HTTP/1.1 405"), reply[:200]
