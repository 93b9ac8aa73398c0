"""Pod health end to end: real katyusha, real pods (plain uvicorn apps, or sim-backend behind nonna).

A pod that starts answering 500 is ejected and comes back after its ejection
time once healthy; a killed pod leaves the ready set at once and returns when
its nonna's /healthz answers again.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
import urllib.request

from tests.katyusha_fleet import admin, blast, katyusha, start_pods
from tests.procs import Proc, script, wait_for


def plain_app(name: str, service_time: str = "const:2ms", concurrency: int = 0) -> Proc:
    return Proc([sys.executable, "-m", "tests.plain_app", "--name", name, "--service-time", service_time,
                 "--concurrency", str(concurrency)])


def control(app: Proc, **change) -> dict:
    request = urllib.request.Request(app.url + "/control", data=json.dumps(change).encode(), method="PUT")
    with urllib.request.urlopen(request, timeout=5) as reply:
        return json.loads(reply.read())


def rows(proxy: Proc) -> dict:
    _, state = admin(proxy, "GET", "/pods")
    return {row["name"]: row for row in state["pods"]}


async def test_a_pod_that_starts_answering_500_is_ejected_and_returns_when_healthy():
    apps = [plain_app(f"app-{i}") for i in range(3)]
    try:
        args = [arg for i, app in enumerate(apps) for arg in ("--pod", f"{app.url},name=app-{i}")]
        # A short base ejection time keeps the test short; everything else is the default
        # (5 failures in a row eject; at most 10% of the pods, at least one).
        with katyusha(*args, "--policy", "round-robin", "--outlier-base-ejection-time", "2",
                      "--health-path", "/health", "--log-level", "warning") as proxy:
            results = await blast(proxy.url + "/", 30, 3)
            assert {status for status, _, _ in results} == {200}
            control(apps[1], fail_status=500)
            results = await blast(proxy.url + "/", 60, 1)
            failed = [status for status, _, _ in results if status != 200]
            # round-robin sends it every third request: ejected after 5 of them.
            assert failed == [500] * 5, failed
            row = rows(proxy)["app-1"]
            assert (row["health"], row["ejections"], row["ready"]) == ("ejected", 1, False)
            assert 0 < row["ejected_until_s"] <= 2.0
            served = {app["app"] for status, _, body in results[-30:] for app in [json.loads(body)]}
            assert served == {"app-0", "app-2"}
            metrics = urllib.request.urlopen(proxy.admin + "/metrics", timeout=5).read().decode()
            assert 'katyusha_pod_ejections_total{pod="app-1",service="default"} 1.0' in metrics
            # Healthy again: back after the ejection time and two good probes of /health.
            control(apps[1], fail_status=None)
            wait_for(lambda: rows(proxy)["app-1"]["health"] == "ok", 6, "app-1 back in the ready set")
            results = await blast(proxy.url + "/", 30, 1)
            assert {status for status, _, _ in results} == {200}
            assert "app-1" in {json.loads(body)["app"] for _, _, body in results}
        assert "pod app-1 ejected for 2.0s" in proxy.output
        assert "pod app-1 is back in the ready set" in proxy.output
    finally:
        for app in apps:
            app.kill()


async def test_a_killed_pod_leaves_the_ready_set_at_once_and_returns_when_its_healthz_answers():
    pods = start_pods([1.0, 1.0, 1.0], service="exp:5ms")
    try:
        args = [arg for pod in pods for arg in ("--pod", pod.spec)]
        with katyusha(*args, "--policy", "round-robin") as proxy:
            port = pods[1].backend.url.rsplit(":", 1)[1]
            admin_port = pods[1].backend.admin.rsplit(":", 1)[1]
            pods[1].backend.kill()
            results = await blast(proxy.url + "/", 60, 3)
            assert {status for status, _, _ in results} == {200}
            row = rows(proxy)["pod-1"]
            assert (row["health"], row["ready"], row["health_probe"]) == ("probing", False, "admin")
            # One try met the dead app (a few may have been on their way at once); then no more.
            assert 1 <= row["failures"] <= 3
            assert row["requests"] == row["failures"]
            # The app comes back on its port: nonna's /healthz answers 200, the pod returns.
            started = time.monotonic()
            pods[1].backend = Proc([script("sim-backend"), "--port", port, "--admin-port", admin_port,
                                    "--pod", "pod-1", "--state", "warm", "--service-time", "exp:5ms"])
            wait_for(lambda: rows(proxy)["pod-1"]["ready"], 5, "pod-1 back in the ready set")
            assert time.monotonic() - started < 3.0
            results = await blast(proxy.url + "/", 30, 1)
            assert {status for status, _, _ in results} == {200}
            assert rows(proxy)["pod-1"]["requests"] > row["requests"]
    finally:
        for pod in pods:
            pod.stop()


async def test_a_pod_with_no_nonna_whose_port_closes_is_probed_by_tcp_and_returns():
    apps = [plain_app(f"app-{i}") for i in range(2)]
    try:
        args = [arg for i, app in enumerate(apps) for arg in ("--pod", f"{app.url},name=app-{i}")]
        with katyusha(*args, "--policy", "round-robin") as proxy:
            port = apps[0].url.rsplit(":", 1)[1]
            apps[0].kill()
            results = await blast(proxy.url + "/", 20, 2)
            assert {status for status, _, _ in results} == {200}
            assert rows(proxy)["app-0"]["health"] == "probing"
            apps[0] = Proc([sys.executable, "-m", "tests.plain_app", "--name", "app-0", "--port", port])
            wait_for(lambda: rows(proxy)["app-0"]["ready"], 5, "app-0 back")
            await asyncio.sleep(0)
    finally:
        for app in apps:
            app.kill()
