"""katyusha's /dashboard and /dashboard/data on a real katyusha in front of real pods."""

from __future__ import annotations

import asyncio
import statistics
import time
import urllib.error
import urllib.request

import pytest

from tests.katyusha_fleet import admin, blast, katyusha, start_pods
from tests.procs import wait_for


@pytest.fixture(scope="module")
def proxy():
    pods = start_pods([1.0, 1.0], service="const:1ms")
    proc = katyusha(*(arg for pod in pods for arg in ("--pod", pod.spec)))
    try:
        yield proc
    finally:
        proc.terminate()
        for pod in pods:
            pod.stop()


def test_page_is_html_from_the_package(proxy):
    with urllib.request.urlopen(proxy.admin + "/dashboard", timeout=5) as response:
        assert response.headers["content-type"].startswith("text/html")
        assert b"/dashboard/data" in response.read()


def test_data_counts_what_was_served_per_pod_and_per_second(proxy):
    results = asyncio.run(blast(proxy.url + "/", 300, 8))
    assert all(status == 200 for status, _, _ in results)
    time.sleep(1.2)  # one more sample of the 1 s timer

    def served():
        status, doc = admin(proxy, "GET", "/dashboard/data")
        assert status == 200 and doc["kind"] == "katyusha"
        service = doc["services"][0]
        return service if service["requests"] == 300 else None

    service = wait_for(served, 5, "the 300 responses in /dashboard/data")
    assert sorted(p["name"] for p in service["pods"]) == ["pod-0", "pod-1"]
    assert sum(p["requests"] for p in service["pods"]) == 300
    assert all(p["ready"] and not p["draining"] and p["health"] == "ok" for p in service["pods"])
    series = service["series"]
    assert len(series["t"]) == len(series["rps"]) == len(series["p99_ms"]) >= 1
    # Every response is in one point (a point's rate times its span, a second or a little less or more).
    assert sum(rps * dt for rps, dt in zip(series["rps"], series["dt"], strict=True)) == pytest.approx(300, abs=1)
    assert any(p99 is not None for p99 in series["p99_ms"])
    assert service["errors_by_status"] == {}


def test_one_service_and_an_unknown_one(proxy):
    status, doc = admin(proxy, "GET", "/dashboard/data?service=default")
    assert status == 200 and [s["name"] for s in doc["services"]] == ["default"]
    try:
        urllib.request.urlopen(proxy.admin + "/dashboard/data?service=nope", timeout=5)
    except urllib.error.HTTPError as exc:
        assert exc.code == 404
    else:
        raise AssertionError("an unknown service answered 200")


def test_two_workers_show_as_one_katyusha():
    """``--katyusha-threads 2``: the kernel spreads connections over both workers; the page counts them all."""
    pods = start_pods([1.0, 0.25], service="const:2ms")  # pod-1 takes 8 ms a request
    proc = katyusha("--katyusha-threads", "2", *(arg for pod in pods for arg in ("--pod", pod.spec)))
    try:
        # Many short connections, so both workers accept some.
        for _ in range(10):
            results = asyncio.run(blast(proc.url + "/", 40, 8, headers={"connection": "close"}))
            assert all(status == 200 for status, _, _ in results)
        status, metrics = 0, b""
        with urllib.request.urlopen(proc.admin + "/metrics", timeout=5) as response:
            metrics = response.read().decode()
        per_worker = {}
        for line in metrics.splitlines():
            if line.startswith("katyusha_requests_total{") and 'status="200"' in line:
                worker = line.split('worker="')[1].split('"')[0]
                per_worker[worker] = per_worker.get(worker, 0) + float(line.rsplit(" ", 1)[1])
        assert len(per_worker) == 2 and all(n > 0 for n in per_worker.values()), per_worker

        def served():
            status, doc = admin(proc, "GET", "/dashboard/data")
            assert status == 200 and doc["workers"] == 2 and doc["workers_up"] == 2
            service = doc["services"][0]
            series = service["series"]
            points = sum(rps * dt for rps, dt in zip(series["rps"], series["dt"], strict=True))
            return service if service["requests"] == 400 and points == pytest.approx(400, abs=1) else None

        service = wait_for(served, 10, "all 400 responses of both workers in /dashboard/data")
        assert service["workers"] == 2
        assert sum(p["requests"] for p in service["pods"]) == 400
        # Each pod's own latencies: the slow pod's p50, second by second, is its 8 ms and more.
        by_pod = service["series"]["pods"]
        p50 = {name: statistics.median(v for v in by_pod[name]["p50_ms"] if v is not None) for name in ("pod-0", "pod-1")}
        assert 2.0 <= p50["pod-0"] < p50["pod-1"] and 7.8 <= p50["pod-1"] <= 100, p50
        assert all(any(v is not None for v in by_pod[name]["p99_ms"]) for name in ("pod-0", "pod-1"))
        status, doc = admin(proc, "GET", "/dashboard/data?service=default")
        assert status == 200 and [s["name"] for s in doc["services"]] == ["default"]
        assert admin(proc, "GET", "/dashboard/data?service=nope")[0] == 404
    finally:
        proc.terminate()
        for pod in pods:
            pod.stop()
