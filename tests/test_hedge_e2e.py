"""Hedged requests end to end: real katyusha processes in front of real app processes.

A slow pod's requests are answered by their hedge; the budget caps hedges; a
POST is never hedged; every request is answered exactly once and the pods'
in-flight counts end at zero.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
import urllib.request

import aiohttp

from tests.katyusha_fleet import admin, katyusha
from tests.procs import Proc


def plain_app(name: str, service_time: str) -> Proc:
    return Proc([sys.executable, "-m", "tests.plain_app", "--name", name, "--service-time", service_time])


def app_state(app: Proc) -> dict:
    with urllib.request.urlopen(app.url + "/control", timeout=5) as reply:
        return json.loads(reply.read())


def app_counts(app: Proc) -> dict:
    return app_state(app)["by_method"]


def hedge_state(proxy: Proc) -> tuple[dict, dict]:
    """(the default service's hedge counters, its pods' in-flight counts)."""
    status, body = admin(proxy, "GET", "/pods")
    assert status == 200, body
    return body["hedge"], {row["name"]: row["in_flight"] for row in body["pods"]}


async def timed(url: str, count: int, concurrency: int = 1, method: str = "GET", body: bytes | None = None):
    """(status, request id, seconds) of ``count`` requests, ``concurrency`` at a time."""
    if body is None and method == "POST":
        body = b"x"
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:

        async def one():
            start = time.perf_counter()
            async with session.request(method, url + "/work", data=body) as r:
                await r.read()
                return r.status, r.headers.get("x-request-id"), time.perf_counter() - start

        results = []
        for _ in range(count // concurrency):
            results += await asyncio.gather(*(one() for _ in range(concurrency)))
    return results


def _pods(apps) -> list[str]:
    return [arg for i, app in enumerate(apps) for arg in ("--pod", f"{app.url},name=app-{i}")]


def start(apps_times: list[str]) -> list[Proc]:
    return [plain_app(f"app-{i}", t) for i, t in enumerate(apps_times)]


def _started(apps: list[Proc], *args: str) -> Proc:
    """katyusha in front of ``apps``; the apps are stopped if it does not start."""
    try:
        return katyusha(*_pods(apps), *args)
    except BaseException:
        stop(*apps)
        raise


def stop(*procs: Proc) -> None:
    for proc in procs:
        proc.terminate()


async def test_a_slow_pod_s_requests_are_answered_by_their_hedge_once_each():
    apps = start(["const:600ms", "const:5ms", "const:5ms"])
    proxy = _started(apps, "--policy", "round-robin", "--hedge", "true",
                     "--hedge-delay", "50ms", "--hedge-budget", "1")
    try:
        results = await timed(proxy.url, 30)
        assert [status for status, _, _ in results] == [200] * 30
        assert len({rid for _, rid, _ in results}) == 30  # each answered once, its own answer
        # Round robin sends a third to the slow pod; each is answered by its hedge well before 600 ms.
        assert max(seconds for _, _, seconds in results) < 0.4
        hedge, in_flight = hedge_state(proxy)
        assert hedge["sent_total"] >= 8 and hedge["won_total"] >= 8
        assert in_flight == {"app-0": 0, "app-1": 0, "app-2": 0} or _settles(proxy)
        # The pods saw each request once, plus the hedges.
        total = sum(app_counts(app).get("GET", 0) for app in apps)
        assert total == 30 + hedge["sent_total"]
        with urllib.request.urlopen(proxy.admin + "/metrics", timeout=5) as reply:
            metrics = reply.read().decode()
        assert f'katyusha_hedges_won_total{{service="default"}} {float(hedge["won_total"])}' in metrics
    finally:
        stop(proxy, *apps)


async def test_a_put_with_a_small_body_is_hedged_and_both_tries_send_the_whole_body():
    apps = start(["const:600ms", "const:5ms", "const:5ms"])
    proxy = _started(apps, "--policy", "round-robin", "--hedge", "true",
                     "--hedge-delay", "50ms", "--hedge-budget", "1")
    body = bytes(range(256)) * 8  # 2 KiB, with a Content-Length
    try:
        results = await timed(proxy.url, 30, method="PUT", body=body)
        assert [status for status, _, _ in results] == [200] * 30
        assert max(seconds for _, _, seconds in results) < 0.4  # the slow pod's are answered by hedges
        hedge, _ = hedge_state(proxy)
        assert hedge["sent_total"] >= 8 and hedge["won_total"] >= 8
        assert _settles(proxy)
        # Every try reached its app with the whole body (a cancelled loser had sent its body too).
        states = [app_state(app) for app in apps]
        assert sum(s["by_method"].get("PUT", 0) for s in states) == 30 + hedge["sent_total"]
        assert sum(s["body_bytes"] for s in states) == (30 + hedge["sent_total"]) * len(body)
    finally:
        stop(proxy, *apps)


def _settles(proxy: Proc) -> bool:
    """Losers are counted out when cancelled; give the last response a moment."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if not any(hedge_state(proxy)[1].values()):
            return True
        time.sleep(0.05)
    return False


async def test_the_budget_caps_hedges_and_a_post_is_never_hedged():
    apps = start(["const:80ms", "const:80ms", "const:80ms"])
    proxy = _started(apps, "--hedge", "true", "--hedge-delay", "5ms", "--hedge-budget", "10%")
    try:
        results = await timed(proxy.url, 60, concurrency=2)
        assert [status for status, _, _ in results] == [200] * 60
        hedge, _ = hedge_state(proxy)
        # Every request outlives the delay; 10% of 60 requests is 6 hedges at most.
        assert 3 <= hedge["sent_total"] <= 6
        assert sum(app_counts(app).get("GET", 0) for app in apps) == 60 + hedge["sent_total"]
        posts = await timed(proxy.url, 20, method="POST")
        assert [status for status, _, _ in posts] == [200] * 20
        assert hedge_state(proxy)[0]["sent_total"] == hedge["sent_total"]
        assert sum(app_counts(app).get("POST", 0) for app in apps) == 20
        assert _settles(proxy)
    finally:
        stop(proxy, *apps)


async def test_hedging_is_off_by_default():
    apps = start(["const:60ms", "const:60ms"])
    proxy = _started(apps, "--hedge-delay", "1ms")
    try:
        results = await timed(proxy.url, 10)
        assert [status for status, _, _ in results] == [200] * 10
        hedge, _ = hedge_state(proxy)
        assert hedge["enabled"] is False and hedge["sent_total"] == 0
        assert sum(app_counts(app).get("GET", 0) for app in apps) == 10
    finally:
        stop(proxy, *apps)
