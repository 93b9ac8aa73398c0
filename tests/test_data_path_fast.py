"""A body-less request through katyusha's data path, as users send it: what the pod gets and
what the client gets, on a kept-alive client connection (after its first request, requests
go out on an idle pooled connection to the pod, without a task: the fast path).
"""

from __future__ import annotations

import asyncio

from tests.katyusha_fleet import katyusha
from tests.procs import LEAN_SERVER
from tests.test_http_client import raw_server, read_request_head

ANSWERS = {
    b"/plain": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-End: 1\r\n\r\nok",
    b"/chunked": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-End: 2\r\n\r\n2\r\nok\r\n0\r\n\r\n",
    b"/named": (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive, X-Upstream-Hop\r\n"
                b"Keep-Alive: timeout=9\r\nX-Upstream-Hop: 1\r\nX-End: 3\r\nNonna-Queue-Length: 0\r\n"
                b"Nonna-In-Flight: 1\r\n\r\nok"),
    b"/id": b"HTTP/1.1 404 Not Found\r\nContent-Length: 2\r\nX-Request-Id: from-pod\r\n\r\nno",
}


def parse(head: bytes) -> tuple[bytes, dict[bytes, list[bytes]]]:
    lines = head.split(b"\r\n")
    headers: dict[bytes, list[bytes]] = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(b":")
            headers.setdefault(name.strip().lower(), []).append(value.strip())
    return lines[0], headers


async def exchange(reader, writer, request: bytes) -> tuple[bytes, dict, bytes]:
    writer.write(request)
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    status, headers = parse(head)
    if request.startswith(b"HEAD"):
        return status, headers, b""
    if headers.get(b"transfer-encoding", [b""])[-1].lower() == b"chunked":
        body = b""
        while size := int((await asyncio.wait_for(reader.readuntil(b"\r\n"), 10)).split(b";")[0], 16):
            body += (await reader.readexactly(size + 2))[:-2]
        await reader.readuntil(b"\r\n")  # no trailers: the blank line after the last chunk
        return status, headers, body
    length = int(headers.get(b"content-length", [b"0"])[0])
    return status, headers, await reader.readexactly(length)


class _Transport:
    def __init__(self):
        self.writes, self.closed = [], False

    def write(self, data):
        self.writes.append(bytes(data))

    def is_closing(self):
        return self.closed

    def close(self):
        self.closed = True

    def get_extra_info(self, name, default=None):
        return {"peername": ("127.0.0.1", 5000), "sockname": ("127.0.0.1", 80)}.get(name, default)


class _TakingApp:
    """An app whose fast path takes every body-less request and answers none."""

    def __init__(self):
        self.taken = []

    def fast(self, exchange, server, now=None):
        self.taken.append(exchange)
        return True

    async def __call__(self, scope, receive, send):  # pragma: no cover - never reached
        raise AssertionError


class _Config:
    loaded, root_path = True, ""

    def __init__(self, app):
        self.loaded_app = app


class _State:
    connections, tasks, total_requests = set(), set(), 0


def served(request: bytes):
    """katyusha's server on a fake transport, fed ``request``: (server, transport, the exchange
    its app's fast path took)."""
    from katyusha.http.server import LeanHTTPProtocol

    app, transport = _TakingApp(), _Transport()
    server = LeanHTTPProtocol(_Config(app), _State(), {}, _loop=asyncio.get_running_loop())
    server.connection_made(transport)
    server.data_received(request)
    return server, transport, app.taken[0]


async def test_body_less_requests_and_their_answers_are_rewritten_on_a_kept_alive_connection():
    seen: list[bytes] = []

    async def pod(reader, writer, index):
        while True:
            head = await read_request_head(reader)
            seen.append(head)
            path = head.split(b" ")[1]
            writer.write(ANSWERS.get(path, ANSWERS[b"/plain"]))
            await writer.drain()

    async with raw_server(pod) as url:
        proxy = await asyncio.to_thread(katyusha, "--pod", f"{url},name=p,node=n")
        try:
            host, port = proxy.url.removeprefix("http://").split(":")
            reader, writer = await asyncio.open_connection(host, int(port))
            for _ in range(3):  # the first goes out on a new connection, the others on it again
                seen.clear()
                status, got, body = await exchange(
                    reader, writer, b"GET /plain?q=1 HTTP/1.1\r\nHost: svc.example\r\nTE: trailers\r\n"
                    b"X-Keep: kept\r\nNonna-Queue-Length: 9\r\n\r\n")
                assert status == b"HTTP/1.1 200 OK" and body == b"ok"
                request_line, sent = parse(seen[0])
                assert request_line == b"GET /plain?q=1 HTTP/1.1"
                assert sent[b"host"] == [b"svc.example"] and sent[b"x-keep"] == [b"kept"]
                assert b"te" not in sent and b"nonna-queue-length" not in sent
                assert sent[b"x-forwarded-for"] == [b"127.0.0.1"] and sent[b"via"] == [b"1.1 katyusha"]
                assert sent[b"forwarded"] == [b"for=127.0.0.1;proto=http;host=svc.example"]
                # One id, the same on both sides.
                assert got[b"x-request-id"] == sent[b"x-request-id"] and len(got[b"x-request-id"]) == 1
                assert got[b"server-timing"][0].startswith(b"katyusha-queue;dur=")
                assert got[b"x-end"] == [b"1"] and got[b"content-length"] == [b"2"]

                # Forwarding headers of the client's own (not trusted): rewritten as ever.
                status, got, body = await exchange(
                    reader, writer, b"GET /plain HTTP/1.1\r\nHost: svc.example\r\nX-Forwarded-For: 6.6.6.6\r\n"
                    b"Via: 1.0 other\r\nNonna-In-Flight: 3\r\n\r\n")
                assert status == b"HTTP/1.1 200 OK" and body == b"ok"
                sent = parse(seen[-1])[1]
                assert sent[b"x-forwarded-for"] == [b"127.0.0.1"] and b"nonna-in-flight" not in sent
                assert sent[b"via"] == [b"1.0 other, 1.1 katyusha"]
                assert got[b"x-request-id"] == sent[b"x-request-id"]

                status, got, body = await exchange(
                    reader, writer, b"GET /chunked HTTP/1.1\r\nHost: a\r\nX-Request-Id: mine\r\n\r\n")
                assert body == b"ok" and got[b"x-end"] == [b"2"]
                if LEAN_SERVER:  # katyusha's server sends a small chunked answer with its length
                    assert got[b"content-length"] == [b"2"] and b"transfer-encoding" not in got
                assert got[b"x-request-id"] == [b"mine"] and parse(seen[-1])[1][b"x-request-id"] == [b"mine"]

                status, got, body = await exchange(reader, writer, b"GET /named HTTP/1.1\r\nHost: a\r\n\r\n")
                assert body == b"ok" and got[b"x-end"] == [b"3"]
                for name in (b"x-upstream-hop", b"keep-alive", b"nonna-queue-length", b"nonna-in-flight"):
                    assert name not in got, name

                status, got, body = await exchange(reader, writer, b"GET /id HTTP/1.1\r\nHost: a\r\n\r\n")
                assert status == b"HTTP/1.1 404 Not Found" and body == b"no"
                assert got[b"x-request-id"] == [b"from-pod"]

                status, got, body = await exchange(reader, writer, b"HEAD /plain HTTP/1.1\r\nHost: a\r\n\r\n")
                assert status == b"HTTP/1.1 200 OK" and got[b"content-length"] == [b"2"]
                assert seen[-1].startswith(b"HEAD /plain HTTP/1.1\r\n")
            writer.close()

            # HTTP/1.0 asking for keep-alive keeps it, and is told so.
            reader, writer = await asyncio.open_connection(host, int(port))
            for _ in range(2 if LEAN_SERVER else 0):  # uvicorn's protocol closes any HTTP/1.0 connection
                status, got, body = await exchange(
                    reader, writer, b"GET /plain HTTP/1.0\r\nHost: a\r\nConnection: keep-alive\r\n\r\n")
                assert body == b"ok" and got[b"connection"] == [b"keep-alive"]
            status, got, body = await exchange(reader, writer, b"GET /plain HTTP/1.1\r\nHost: a\r\n"
                                                               b"Connection: close\r\n\r\n")
            assert body == b"ok" and got[b"connection"] == [b"close"]
            assert await asyncio.wait_for(reader.read(), 10) == b""
            writer.close()
        finally:
            await asyncio.to_thread(proxy.terminate)


def test_response_header_names_are_sorted_out_the_same_however_many_a_pod_invents():
    """The client's header lines from a pod's headers: what it passes on, drops and adds does
    not change with how many different names pods sent before (names are kept to classify
    them only up to a bound, so a pod inventing a new name every response grows nothing)."""
    from katyusha.proxy import app

    def lines(headers, keep_nonna=False):
        built = app._downstream_lines(headers, keep_nonna, b"id-1", b"katyusha-queue;dur=0.000")
        return built and (b"".join(built[0]).split(b"\r\n")[:-1], built[1], built[2], built[3])

    headers = [(b"server", b"pod"), (b"content-length", b"2"), (b"keep-alive", b"timeout=5"),
               (b"nonna-queue-length", b"0"), (b"x-end", b"1")]
    expected = ([b"server: pod", b"content-length: 2", b"x-end: 1", b"x-request-id: id-1",
                 b"server-timing: katyusha-queue;dur=0.000"], 5, True, True)
    assert lines(headers) == expected
    for i in range(3 * app._KINDS_MAX):
        invented = [(b"x-invented-%d" % i, b"v"), (b"nonna-invented-%d" % i, b"1"),
                    (b"x-" + b"long" * 40, b"w")]
        assert lines(invented) == ([b"x-invented-%d: v" % i, b"x-" + b"long" * 40 + b": w",
                                    b"x-request-id: id-1",
                                    b"server-timing: katyusha-queue;dur=0.000"], 4, False, True)
        assert lines(invented, keep_nonna=True)[0][1] == b"nonna-invented-%d: 1" % i
    assert len(app._RESPONSE_KINDS) <= app._KINDS_MAX
    assert lines(headers) == expected
    assert lines([(b"x-request-id", b"from-pod"), (b"connection", b"close")]) == (
        [b"x-request-id: from-pod", b"server-timing: katyusha-queue;dur=0.000"], 2, False, False)
    assert lines([(b"connection", b"keep-alive, x-hop")]) is None  # the general filter's case


async def test_a_whole_answer_from_header_pieces_is_one_write_and_a_line_break_in_a_header_is_refused():
    """The server's answer from the pieces of its header lines (as the fast path hands them):
    status line, lines, framing and body in one write; newlines in the body are the body's, a
    line break inside a header value closes the connection with nothing written."""
    server, transport, taken = served(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
    server.respond_lines(taken, 200, [b"x-a", b": ", b"1", b"\r\n", b"x-b: 2\r\n"], 2, False,
                         b"line\nline\n")
    assert transport.writes == [b"HTTP/1.1 200 OK\r\nx-a: 1\r\nx-b: 2\r\ncontent-length: 10\r\n\r\n"
                                b"line\nline\n"]
    assert not transport.closed
    # HTTP/1.0 asking for keep-alive is told so; a HEAD answer carries no body.
    server, transport, taken = served(b"HEAD /a HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    server.respond_lines(taken, 200, [b"content-length: 3\r\n"], 1, True, b"abc")
    assert transport.writes == [b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\nconnection: keep-alive\r\n\r\n"]
    server, transport, taken = served(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
    server.respond_lines(taken, 200, [b"x-a", b": ", b"1\r\nx-evil: 1", b"\r\n"], 1, False, b"ok")
    assert transport.writes == [] and transport.closed


async def test_the_server_reads_version_keep_alive_path_and_query_of_a_head_as_the_parser_says():
    """What the server makes of a request head (the version without asking the parser for its
    string when the request keeps alive without naming Connection; the target's ? and # found in
    its decoded str): the same scope and keep-alive for every kind of head."""
    cases = [
        # (request line and headers, http_version, keep-alive)
        (b"GET /a HTTP/1.1\r\nHost: x\r\n", "1.1", True),
        (b"GET /a HTTP/1.1\r\nConnection: close\r\n", "1.1", False),
        (b"GET /a HTTP/1.1\r\nConnection: keep-alive\r\n", "1.1", True),
        (b"GET /a HTTP/1.0\r\nHost: x\r\n", "1.0", False),
        (b"GET /a HTTP/1.0\r\nConnection: keep-alive\r\n", "1.0", True),
        (b"GET /a HTTP/1.0\r\nCONNECTION: Keep-Alive\r\n", "1.0", True),
        # The parser reads Proxy-Connection as it reads Connection.
        (b"GET /a HTTP/1.0\r\nProxy-Connection: keep-alive\r\n", "1.0", True),
        (b"GET /a HTTP/2.0\r\n", "2.0", False),
    ]
    for head, version, keep_alive in cases:
        _, _, taken = served(head + b"\r\n")
        assert (taken.scope["http_version"], taken.keep_alive) == (version, keep_alive), head
    targets = [
        # (target, path, raw_path, query_string)
        (b"/a", "/a", b"/a", b""),
        (b"/a?x=1&y=%20", "/a", b"/a", b"x=1&y=%20"),
        (b"/a#frag", "/a", b"/a", b""),
        (b"/a?x=1#frag", "/a", b"/a", b"x=1#frag"),
        (b"/caf%C3%A9?q", "/caf\u00e9", b"/caf%C3%A9", b"q"),
        (b"/bad%FF?q", "/bad\ufffd", b"/bad%FF", b"q"),
        (b"http://h.example/p?q=2", "/p", b"/p", b"q=2"),
    ]
    for target, path, raw_path, query in targets:
        _, _, taken = served(b"GET " + target + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        scope = taken.scope
        assert (scope["path"], scope["raw_path"], scope["query_string"]) == (path, raw_path, query), target


async def test_a_fast_path_request_waits_on_its_exchange_which_lets_go_of_the_server_once_answered():
    # In process, on the benchmark's fake transports (benchmarks.bytecodes_per_request): the
    # server makes the app's FastExchange, the request goes out from the parser's callback,
    # and once the pod's head answered it the exchange (which the server keeps until its next
    # request) no longer refers to the server: no cycle outlives the answer.
    from benchmarks.bytecodes_per_request import _ANSWER, _REQUEST, fast_path
    from katyusha.proxy.app import FastExchange

    server, upstream, to_client, to_pod = fast_path(asyncio.get_running_loop())
    server.data_received(_REQUEST)
    exchange = server._parsing
    assert type(exchange) is FastExchange and exchange.server is server and to_pod.writes == 1
    upstream.data_received(_ANSWER)
    assert to_client.writes == 1 and exchange.complete
    assert exchange.server is None and server._parsing is exchange


async def test_a_request_that_may_be_hedged_is_left_to_its_task():
    # The fast path has no hedge timer: with hedging on, a GET that could be hedged now (the
    # budget has a token: one every 20 requests, none at first) goes on in a task, which sends it (and its
    # hedge if it comes to that); with hedging off, every GET goes out from the parser's callback.
    from benchmarks.bytecodes_per_request import _ANSWER, _REQUEST, fast_path

    async def until(transport, writes):
        for _ in range(100):
            if transport.writes == writes:
                return
            await asyncio.sleep(0)
        raise AssertionError(f"{transport.writes} writes, not {writes}")

    for flags, expected in (((), 40), (("--hedge", "true", "--hedge-delay", "50ms"), 20)):
        server, upstream, to_client, to_pod = fast_path(asyncio.get_running_loop(), *flags)
        at_once = 0
        for sent in range(1, 41):
            server.data_received(_REQUEST)
            at_once += to_pod.writes == sent
            await until(to_pod, sent)
            upstream.data_received(_ANSWER)
            await until(to_client, sent)
        assert at_once == expected, flags
