"""Safe retries end to end: what is sent again, what is not, what the client is told, and the budget.

Real katyusha processes in front of real servers: plain uvicorn apps, sim-backend
behind nonna, and raw asyncio servers that read a request and hang up without
answering (a pod that dies mid-request).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import sys
import urllib.request

from tests.katyusha_fleet import admin, blast, katyusha, start_pods
from tests.procs import Proc


def plain_app(name: str) -> Proc:
    return Proc([sys.executable, "-m", "tests.plain_app", "--name", name])


def app_counts(app: Proc) -> dict:
    with urllib.request.urlopen(app.url + "/control", timeout=5) as reply:
        return json.loads(reply.read())["by_method"]


def closed_port() -> int:
    """A port nothing listens on (bound, then closed)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.asynccontextmanager
async def hang_up_server():
    """A server that reads each request head and closes without answering; yields (url, heads seen)."""
    heads: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            heads.append(head)
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}", heads
    finally:
        server.close()
        await server.wait_closed()


async def test_a_post_is_retried_after_a_refused_connection():
    app = plain_app("app-0")
    try:
        with katyusha("--pod", f"http://127.0.0.1:{closed_port()},name=gone", "--pod", f"{app.url},name=app-0",
                      "--policy", "round-robin") as proxy:
            results = await blast(proxy.url + "/order", 20, 1, method="POST")
            assert [status for status, _, _ in results] == [200] * 20
            assert app_counts(app) == {"POST": 20}
            _, state = admin(proxy, "GET", "/pods")
            gone = next(row for row in state["pods"] if row["name"] == "gone")
            assert gone["failures"] == 1 and gone["health"] == "probing"
        # Only a pod that refuses: the POST waits for a ready pod, then gets katyusha's own
        # 503, which says it ran nowhere.
        with katyusha("--pod", f"http://127.0.0.1:{closed_port()},name=gone", "--request-timeout", "1") as proxy:
            [(status, headers, body)] = await blast(proxy.url + "/order", 1, 1, method="POST")
            assert status == 503 and headers["katyusha-maybe-executed"] == "false"
            assert json.loads(body)["maybe_executed"] is False
    finally:
        app.kill()


async def test_a_post_that_reached_a_pod_which_hung_up_is_not_retried_and_the_502_says_so():
    app = plain_app("app-0")
    try:
        async with hang_up_server() as (url, heads):
            with katyusha("--pod", f"{url},name=hangs-up", "--pod", f"{app.url},name=app-0",
                          "--policy", "round-robin") as proxy:
                posts = await blast(proxy.url + "/order", 10, 1, method="POST")
                failed = [(headers, json.loads(body)) for status, headers, body in posts if status == 502]
                assert failed, "round-robin sent no POST to the pod that hangs up"
                for headers, body in failed:
                    assert headers["katyusha-maybe-executed"] == "true"
                    assert body["maybe_executed"] is True and "may have been executed" in body["error"]
                # Each failed POST reached the hanging pod once, and was not sent anywhere else.
                assert len([h for h in heads if h.startswith(b"POST")]) == len(failed)
                assert app_counts(app) == {"POST": 10 - len(failed)}
                # An idempotent request is sent again: every GET succeeds.
                gets = await blast(proxy.url + "/item", 10, 1)
                assert [status for status, _, _ in gets] == [200] * 10
    finally:
        app.kill()


async def test_through_nonna_a_post_cut_off_by_a_killed_app_is_maybe_executed_a_get_is_retried():
    pods = start_pods([1.0, 1.0], service="const:1500ms")
    try:
        args = [arg for pod in pods for arg in ("--pod", pod.spec)]
        with katyusha(*args, "--policy", "round-robin") as proxy:
            for method, expected in (("POST", 502), ("GET", 200)):
                task = asyncio.ensure_future(blast(proxy.url + "/job", 2, 2, method=method))
                await asyncio.sleep(0.5)  # both are executing, one on each pod
                pods[0].backend.kill()
                [first, second] = await asyncio.wait_for(task, 20)
                statuses = sorted([first[0], second[0]])
                assert statuses == sorted([200, expected]), (method, first, second)
                if method == "POST":
                    failed = first if first[0] == 502 else second
                    assert failed[1]["katyusha-maybe-executed"] == "true"
                # Start the app again for the next round (same ports).
                pods[0].backend = restart_sim(pods[0].backend)
                await wait_ready(proxy, "pod-0")
    finally:
        for pod in pods:
            pod.stop()


def restart_sim(old: Proc) -> Proc:
    from tests.procs import script

    port = old.url.rsplit(":", 1)[1]
    admin_port = old.admin.rsplit(":", 1)[1]
    return Proc([script("sim-backend"), "--port", port, "--admin-port", admin_port, "--pod", "pod-0",
                 "--state", "warm", "--service-time", "const:1500ms"])


async def wait_ready(proxy: Proc, name: str, timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        _, state = admin(proxy, "GET", "/pods")
        if all(row["ready"] for row in state["pods"]):
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{name} not back in the ready set within {timeout}s")


async def test_the_retry_budget_stops_a_retry_storm():
    # Every pod hangs up on every request: without a budget each GET would be sent three
    # times (retries: 2). Defaults: retries may add 20% of the requests plus 10 a second.
    async with contextlib.AsyncExitStack() as stack:
        servers = [await stack.enter_async_context(hang_up_server()) for _ in range(3)]
        args = [arg for i, (url, _) in enumerate(servers) for arg in ("--pod", f"{url},name=p{i}")]
        with katyusha(*args) as proxy:
            loop = asyncio.get_running_loop()
            started = loop.time()
            results = await blast(proxy.url + "/", 600, 20)
            elapsed = loop.time() - started
            assert {status for status, _, _ in results} == {502}
            tries = sum(len(heads) for _, heads in servers)
            retries = tries - 600
            assert retries <= 0.2 * 600 + 10 * max(elapsed, 10.0) + 5, (tries, elapsed)
            assert retries < 600, (tries, elapsed)  # far fewer than the 1200 the retries setting alone allows
            _, state = admin(proxy, "GET", "/pods")
            assert state["retry_budget"]["exhausted_total"] > 0
