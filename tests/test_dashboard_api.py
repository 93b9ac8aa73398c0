"""katyusha's /dashboard and /dashboard/data on a real katyusha in front of real pods."""

from __future__ import annotations

import asyncio
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
    # Every response is in one point; a tick may stretch past 1 s on a busy machine (a lower rate).
    assert 150 <= sum(series["rps"]) <= 330
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
