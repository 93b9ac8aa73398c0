"""Several services behind one katyusha, end to end: real pods, real katyusha, HTTP over loopback.

Routing by Host (port ignored) then path prefix, 404 for no match, the admin
API per service, per-service policy, L1 settings, metrics and demand pushes,
the pick trace, L1 priority classes from a request header.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import http.server
import json
import subprocess
import threading
import time
import urllib.request

import pytest

from tests.katyusha_fleet import admin, blast, katyusha, start_pods
from tests.procs import script


@pytest.fixture(scope="module")
def fleet():
    pods = start_pods([1.0, 1.0, 1.0], service="const:10ms")
    yield pods
    for pod in pods:
        pod.stop()


def pod_yaml(pod) -> str:
    return (f"{{url: '{pod.nonna.url}', name: {pod.name}, node: node-1, "
            f"admin: '{pod.nonna.admin}'}}")


def services_yaml(fleet, extra: str = "") -> str:
    return f"""\
keep-nonna-headers: "true"
http-server: uvicorn
{extra}services:
  - name: alpha
    hosts: [alpha.local, Alpha.Example]
    pods: [{pod_yaml(fleet[0])}]
  - name: beta
    hosts: [beta.local]
    policy: round-robin
    katyusha-junbanmachi-concurrent-request: 1
    pods: [{pod_yaml(fleet[1])}]
  - name: api
    path-prefix: /api
    pods: [{pod_yaml(fleet[2])}]
  - name: empty
    path-prefix: /empty
    request-timeout: 1s
"""


def with_config(tmp_path, text: str, *args: str):
    path = tmp_path / "katyusha.yaml"
    path.write_text(text)
    return katyusha("--config", str(path), *args)


async def get(url: str, host: str | None = None, headers: dict | None = None):
    all_headers = dict(headers or {})
    if host:
        all_headers["Host"] = host
    [(status, got, body)] = await blast(url, 1, 1, headers=all_headers)
    return status, got, body


async def test_two_services_routed_by_host_then_path(fleet, tmp_path):
    with with_config(tmp_path, services_yaml(fleet)) as proxy:
        port = proxy.url.rsplit(":", 1)[1]
        for host, pod in (("alpha.local", "pod-0"), (f"alpha.example:{port}", "pod-0"),
                          (f"beta.local:{port}", "pod-1")):
            status, headers, _ = await get(proxy.url + "/work", host)
            assert (status, headers["nonna-pod"]) == (200, pod), host
        # Another host: the services that name no host, by path prefix (whole segments).
        status, headers, _ = await get(proxy.url + "/api/users", "other.local")
        assert (status, headers["nonna-pod"]) == (200, "pod-2")
        for host, path in (("other.local", "/"), ("other.local", "/apix"), ("other.local", "/emptyx")):
            status, _, body = await get(proxy.url + path, host)
            assert status == 404, (host, path)
            document = json.loads(body)
            assert document["host"] == host and document["path"] == path
            assert host in document["error"] and path in document["error"]
        # Per-service settings are in force.
        _, beta = admin(proxy, "GET", "/pods?service=beta")
        assert beta["policy"] == "round-robin" and beta["queue"]["limit"] == 1
        assert [row["name"] for row in beta["pods"]] == ["pod-1"]
        _, alpha = admin(proxy, "GET", "/pods")  # no service=: the first listed
        assert alpha["service"] == "alpha" and alpha["policy"] == "jsq-piggyback"
        _, listing = admin(proxy, "GET", "/services")
        assert listing["default"] == "alpha"
        assert [(s["name"], s["hosts"], s["path_prefix"], s["ready_pods"]) for s in listing["services"]] == [
            ("alpha", ["alpha.local", "alpha.example"], "/", 1), ("beta", ["beta.local"], "/", 1),
            ("api", [], "/api", 1), ("empty", [], "/empty", 0)]
        text = urllib.request.urlopen(proxy.admin + "/metrics", timeout=10).read().decode()
        assert 'katyusha_requests_total{pod="pod-1",service="beta",status="200"} 1.0' in text
        assert 'katyusha_requests_total{pod="",service="",status="404"} 3.0' in text
        assert 'katyusha_ready_pods{service="empty"} 0.0' in text


async def test_admin_routes_select_a_service(fleet, tmp_path):
    with with_config(tmp_path, services_yaml(fleet)) as proxy:
        status, body = admin(proxy, "GET", "/pods?service=nope")
        assert status == 404 and "nope" in body["error"]
        status, body = admin(proxy, "PUT", "/pods?service=nope", {"pods": []})
        assert status == 404 and "nope" in body["error"]
        status, body = admin(proxy, "PUT", "/pods?service=beta", {"pods": [fleet[2].json()]})
        assert status == 200 and body["service"] == "beta" and body["pods"] == ["pod-1", "pod-2"]
        assert admin(proxy, "GET", "/pods/pod-2?service=beta")[1]["name"] == "pod-2"
        assert admin(proxy, "GET", "/pods/pod-2")[0] == 404  # not in alpha
        status, body = admin(proxy, "DELETE", "/pods/pod-1?service=beta&timeout=5")
        assert status == 200 and body == {"name": "pod-1", "drained": True, "in_flight": 0}
        assert admin(proxy, "DELETE", "/pods/pod-1?service=beta")[0] == 404
        _, demand = admin(proxy, "GET", "/demand")
        assert set(demand) == {"waiting", "in_flight", "ready_pods", "services"}
        assert set(demand["services"]) == {"alpha", "beta", "api", "empty"}
        assert demand["services"]["empty"]["ready_pods"] == 0
        assert admin(proxy, "GET", "/demand?service=beta")[1] == {
            "service": "beta", "waiting": 0, "in_flight": 0, "ready_pods": 1}
        # A service with no pod holds its requests, then 503 naming the wait.
        started = time.monotonic()
        status, _, body = await get(proxy.url + "/empty/x", "other.local")
        assert status == 503 and b"no pod was ready within 1s" in body
        assert time.monotonic() - started >= 0.9


@contextlib.contextmanager
def demand_sink():
    """A control-plane stand-in on a thread: yields (its demand URL, the JSON bodies POSTed to it)."""
    posts: list = []

    class Sink(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            posts.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Sink)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/demand", posts
    finally:
        server.shutdown()


async def test_demand_push_names_the_service(fleet, tmp_path):
    with demand_sink() as (url, posts):
        with with_config(tmp_path, services_yaml(fleet, f"demand-url: {url}\n")) as proxy:
            task = asyncio.ensure_future(get(proxy.url + "/empty/", "other.local"))
            deadline = time.monotonic() + 10
            while not posts and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            assert posts and posts[0]["service"] == "empty" and posts[0]["waiting"] == 1
            # The pod that comes answers the waiting request.
            status, _ = admin(proxy, "PUT", "/pods?service=empty", {"pods": [fleet[0].json()]})
            assert status == 200
            status, headers, _ = await asyncio.wait_for(task, 10)
            assert (status, headers["nonna-pod"]) == (200, "pod-0")


async def test_pick_trace_shows_candidates_loads_and_choice(fleet):
    pods = [arg for pod in fleet for arg in ("--pod", pod.spec)]
    with katyusha(*pods, "--set", "trace-picks=5") as proxy:
        results = await blast(proxy.url + "/", 8, 2)
        assert [r[0] for r in results] == [200] * 8
        status, trace = admin(proxy, "GET", "/trace")
        assert status == 200 and trace["enabled"] and trace["size"] == 5
        picks = trace["picks"]
        assert len(picks) == 5
        assert [p["at"] for p in picks] == sorted(p["at"] for p in picks)
        names = {"pod-0", "pod-1", "pod-2"}
        for pick in picks:
            assert pick["service"] == "default" and pick["policy"] == "jsq-piggyback"
            assert pick["chosen"] in names
            compared = {c["pod"]: c["load"] for c in pick["candidates"]}
            assert pick["chosen"] in compared and set(compared) <= names
            # jsq picks a least loaded candidate.
            assert compared[pick["chosen"]] == min(compared.values())
        again = admin(proxy, "GET", "/trace?service=default")[1]["picks"]
        assert [(p["at"], p["chosen"]) for p in again] == [(p["at"], p["chosen"]) for p in picks]
        assert admin(proxy, "GET", "/trace?service=x")[0] == 404
    with katyusha(*pods) as proxy:
        assert admin(proxy, "GET", "/trace")[1] == {"enabled": False, "size": 0, "picks": []}


async def test_high_priority_request_is_admitted_before_queued_low_ones(tmp_path):
    [slow] = start_pods([1.0], service="const:300ms")
    try:
        with katyusha("--pod", slow.spec + ",concurrency=1", "--set", "priority-header=X-Priority",
                      "--request-timeout", "20") as proxy:
            finished: list[str] = []

            async def request(label: str, priority: str | None):
                headers = {"X-Priority": priority} if priority is not None else None
                status, _, _ = await get(proxy.url + "/", headers=headers)
                assert status == 200
                finished.append(label)

            async def demand_reaches(key: str, count: int):
                while admin(proxy, "GET", "/demand")[1][key] < count:
                    await asyncio.sleep(0.02)

            # The pod holds two: its one slot and the one that waits in nonna (the extra slot).
            tasks = [asyncio.ensure_future(request("first", None))]
            await asyncio.wait_for(demand_reaches("in_flight", 1), 5)
            tasks.append(asyncio.ensure_future(request("second", None)))
            await asyncio.wait_for(demand_reaches("in_flight", 2), 5)
            for index in range(3):
                tasks.append(asyncio.ensure_future(request(f"low-{index}", "0")))
                await asyncio.wait_for(demand_reaches("waiting", index + 1), 5)
            tasks.append(asyncio.ensure_future(request("high", "1")))
            await asyncio.wait_for(asyncio.gather(*tasks), 30)
            assert finished == ["first", "second", "high", "low-0", "low-1", "low-2"]
            status, _, body = await get(proxy.url + "/", headers={"X-Priority": "urgent"})
            assert status == 400 and b"x-priority" in body and b"urgent" in body
    finally:
        slow.stop()


@pytest.mark.parametrize("text, path", [
    ("services: [{name: a, pods: [{url: 'ftp://x'}]}]\n", "services[0].pods[0].url"),
    ("services: [{name: a}, {name: b, pods: [{url: 'http://127.0.0.1:1', concurrency: -1}]}]\n",
     "services[1].pods[0].concurrency"),
    ("services: [{name: a}, {name: a, path-prefix: /x}]\n", "services[1].name"),
    ("services: [{name: a, hosts: [x.local]}, {name: b, hosts: [X.local]}]\n", "services"),
    ("services: [{name: a, policy: fastest}]\n", "services[0].policy"),
    ("services: [{name: a, path-prefix: api}]\n", "services[0].path-prefix"),
    ("services: [{name: a, weight: 3}]\n", "services[0].weight"),
    ("services: [{name: a}]\npods: ['http://127.0.0.1:1']\n", "pods"),
    ("priority-header: 'bad header'\n", "priority-header"),
])
def test_bad_services_stop_katyusha_naming_the_field(tmp_path, text, path):
    config = tmp_path / "katyusha.yaml"
    config.write_text(text)
    done = subprocess.run([script("katyusha"), "serve", "--port", "0", "--admin-port", "0",
                           "--config", str(config)], capture_output=True, text=True, timeout=30)
    assert done.returncode == 2, done
    assert f"bad setting {path}:" in done.stderr, done.stderr


async def test_services_from_the_environment_and_workers_fan_out(fleet):
    services = json.dumps([{"name": "one", "pods": [fleet[0].json()]},
                           {"name": "two", "hosts": ["two.local"], "pods": [fleet[1].json()]}])
    with katyusha("--katyusha-threads", "2", "--keep-nonna-headers", "true",
                  env={"KATYUSHA_SERVICES": services}) as proxy:
        results = await blast(proxy.url + "/", 10, 2, headers={"Host": "two.local"})
        assert collections.Counter(h["nonna-pod"] for _, h, _ in results) == {"pod-1": 10}
        status, body = admin(proxy, "PUT", "/pods?service=two", {"pods": [fleet[2].json()]})
        assert status == 200 and len(body["workers"]) == 2
        _, demand = admin(proxy, "GET", "/demand?service=two")
        assert demand == {"service": "two", "waiting": 0, "in_flight": 0, "ready_pods": 2}
        assert admin(proxy, "GET", "/demand")[1]["services"]["one"]["ready_pods"] == 1
