"""Graceful shutdown as users expect it: SIGTERM during a burst of new connections.

The sequence (katyusha.serving): ``/healthz`` turns 503 at once; for
``drain-grace`` seconds new connections are still accepted and served; then
the listener closes and requests in flight finish within
``shutdown-timeout``; the process exits 0.
"""

from __future__ import annotations

import signal
import socket
import threading
import time
import urllib.error
import urllib.request

import pytest

from katyusha.proxy.config import load
from tests.procs import Proc, script
from tests.raw_http import send_raw
from tests.test_datapath import Upstream


@pytest.fixture(scope="module")
def upstream():
    server = Upstream()
    yield server
    server.stop()


def healthz(proc: Proc) -> int:
    try:
        with urllib.request.urlopen(proc.admin + "/healthz", timeout=2) as reply:
            return reply.status
    except urllib.error.HTTPError as exc:
        return exc.code


def one_request(url: str, path: str) -> bytes:
    return send_raw(url, b"GET %b HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n" % path.encode())


def test_default_drain_grace_is_five_seconds():
    assert load(environ={}).drain_grace == 5.0


@pytest.mark.parametrize("kind", ["katyusha", "nonna"])
def test_sigterm_during_a_burst_resets_no_connection_within_drain_grace(upstream, kind):
    grace = 2.0
    if kind == "katyusha":
        argv = [script("katyusha"), "serve", "--pod", f"{upstream.url},name=up"]
    else:
        argv = [script("nonna"), "--upstream", upstream.url, "--concurrency", "0"]
    proc = Proc([*argv, "--port", "0", "--admin-port", "0", "--drain-grace", str(grace)],
                ready_timeout=30)
    results: list[tuple[float, str]] = []
    stop = threading.Event()
    started = time.monotonic()

    def burst() -> None:
        while not stop.is_set():
            at = time.monotonic() - started
            try:
                reply = one_request(proc.url, "/sleep?s=0.05")
                results.append((at, "ok" if reply.startswith(b"HTTP/1.1 200") else repr(reply[:40])))
            except OSError as exc:
                results.append((at, type(exc).__name__))

    threads = [threading.Thread(target=burst, daemon=True) for _ in range(8)]
    try:
        for thread in threads:
            thread.start()
        time.sleep(0.2)
        signalled = time.monotonic() - started
        proc.popen.send_signal(signal.SIGTERM)
        time.sleep(0.2)
        assert healthz(proc) == 503  # at once: the balancer in front learns to stop
        # A slow request begun near the end of the grace still finishes after the listener closed.
        slow: list[bytes] = []
        time.sleep(grace - 0.6)
        slow_thread = threading.Thread(target=lambda: slow.append(one_request(proc.url, "/sleep?s=1.5")))
        slow_thread.start()
        time.sleep(0.2)
        # Keep bursting past the grace: those connections are then refused, not reset mid-way.
        time.sleep(1.0)
        stop.set()
        for thread in threads:
            thread.join(15)
        slow_thread.join(15)
        assert proc.popen.wait(15) == 0
    finally:
        stop.set()
        proc.kill()
    within = [outcome for at, outcome in results if at < signalled + grace - 0.1]
    assert len(within) > 50
    assert set(within) == {"ok"}, [r for r in results if r[1] != "ok"][:5]
    after = [outcome for at, outcome in results if at > signalled + grace + 0.3]
    assert after and set(after) <= {"ConnectionRefusedError"}, after[:5]
    assert slow and slow[0].startswith(b"HTTP/1.1 200") and slow[0].endswith(b"slept")


@pytest.mark.parametrize("kind", ["katyusha", "nonna"])
def test_a_connection_accepted_as_the_listener_closes_is_served_its_first_request(upstream, kind):
    """drain-grace 0 (a supervisor restarting the process): a connection already accepted
    gets its request answered, with ``connection: close``; its client could not know to
    send it again. A kept-alive connection between requests closes at once."""
    if kind == "katyusha":
        argv = [script("katyusha"), "serve", "--pod", f"{upstream.url},name=up"]
    else:
        argv = [script("nonna"), "--upstream", upstream.url, "--concurrency", "0"]
    proc = Proc([*argv, "--port", "0", "--admin-port", "0", "--drain-grace", "0"], ready_timeout=30)
    host, port = proc.url.removeprefix("http://").rsplit(":", 1)
    try:
        fresh = [socket.create_connection((host, int(port)), timeout=10) for _ in range(4)]
        kept = socket.create_connection((host, int(port)), timeout=10)
        kept.sendall(b"GET /sleep?s=0 HTTP/1.1\r\nHost: t\r\n\r\n")
        assert kept.recv(65536).startswith(b"HTTP/1.1 200")
        time.sleep(0.2)  # every connection accepted, none has sent its request yet
        proc.popen.send_signal(signal.SIGTERM)
        time.sleep(0.1)
        replies = []
        for sock in fresh:
            sock.sendall(b"GET /sleep?s=0 HTTP/1.1\r\nHost: t\r\n\r\n")
        for sock in fresh:
            reply = b""
            try:
                while chunk := sock.recv(65536):
                    reply += chunk
            except OSError as exc:
                reply = type(exc).__name__.encode()
            replies.append(reply)
            sock.close()
        assert kept.recv(65536) == b""  # closed between requests
        kept.close()
        assert proc.popen.wait(15) == 0
    finally:
        proc.kill()
    for reply in replies:
        head = reply.split(b"\r\n\r\n", 1)[0].lower()
        assert head.startswith(b"http/1.1 200") and b"connection: close" in head, reply[:80]
