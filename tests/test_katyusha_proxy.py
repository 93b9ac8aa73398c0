"""katyusha end to end: real sim-backend pods behind nonna, katyusha in front, HTTP over loopback."""

from __future__ import annotations

import asyncio
import collections
import time

import pytest

from tests.katyusha_fleet import admin, blast, katyusha, start_pods
from tests.test_service_e2e import demand_sink


@pytest.fixture(scope="module")
def fleet():
    """Three pods (exp:20ms, nonna concurrency 1); pod-2 is four times slower."""
    pods = start_pods([1.0, 1.0, 0.25])
    yield pods
    for pod in pods:
        pod.stop()


def per_pod(results) -> collections.Counter:
    return collections.Counter(headers.get("nonna-pod") for _, headers, _ in results)


async def test_with_defaults_the_slow_pod_gets_a_small_share_whatever_the_policy(fleet):
    # Defaults: each pod's capacity is learned from its Nonna-Concurrency (1)
    # plus the extra slot, so at most two requests per pod are out (one waiting
    # in nonna; none waiting at a slow pod) and the rest wait in L1 until a pod
    # frees: late binding. The four times slower pod frees a quarter as
    # often, so it serves at most about 0.25 / 2.25 of the requests, whatever
    # the policy (python -m benchmarks.policy_share: 9 to 24 of 150 over five
    # policies, before slow-pod-hold; a third would be 50); with the hold (on
    # by default) it is left out while the queue is short, its slot out of the
    # L1 limit while held.
    pods = [arg for pod in fleet for arg in ("--pod", pod.spec)]
    for policy in ("round-robin", "jsq-piggyback"):
        with katyusha(*pods, "--policy", policy, "--keep-nonna-headers", "true") as proxy:
            results = await blast(proxy.url + "/work", 150, 6)
            assert [status for status, _, _ in results] == [200] * 150
            slow = per_pod(results)["pod-2"]
            assert 3 <= slow <= 30, (policy, per_pod(results))
            _, state = admin(proxy, "GET", "/pods")
            held = [row["name"] for row in state["pods"] if row["held"]]
            assert held in ([], ["pod-2"])
            # Each pod's room: 2, 1 while slow (no extra), 0 while held.
            room = sum(0 if row["held"] else 1 if row["slow"] else 2 for row in state["pods"])
            assert state["queue"]["limit"] == room
            assert [row["capacity"] for row in state["pods"]] == [2, 2, 2]


async def test_with_per_pod_capacity_off_the_policy_decides(fleet):
    # Where requests are not held in L1 (capacity off, or unknown: pods that
    # report no concurrency), the policy alone decides: round robin gives the
    # slow pod its third, jsq-piggyback far less.
    pods = [arg for pod in fleet for arg in ("--pod", pod.spec)]
    counts = {}
    for policy in ("round-robin", "jsq-piggyback"):
        with katyusha(*pods, "--policy", policy, "--keep-nonna-headers", "true",
                      "--set", "pod-capacity-factor=0") as proxy:
            results = await blast(proxy.url + "/work", 150, 6)
            assert [status for status, _, _ in results] == [200] * 150
            counts[policy] = per_pod(results)
    rr_slow = counts["round-robin"]["pod-2"]
    jsq_slow = counts["jsq-piggyback"]["pod-2"]
    assert 35 <= rr_slow <= 65, counts
    assert jsq_slow < 0.7 * rr_slow, counts


async def test_headers_request_id_server_timing_and_nonna_stripped(fleet):
    with katyusha("--pod", fleet[0].spec) as proxy:
        [(status, headers, _)] = await blast(proxy.url + "/", 1, 1)
        assert status == 200
        assert headers.get("x-request-id")
        assert "katyusha-queue;dur=" in headers.get("server-timing", "")
        assert not [name for name in headers if name.lower().startswith("nonna-")]
        [(_, headers, _)] = await blast(proxy.url + "/", 1, 1, headers={"X-Request-Id": "abc-123"})
        assert headers["x-request-id"] == "abc-123"
        # The pod's own report still reached the load table.
        _, state = admin(proxy, "GET", "/pods")
        assert state["pods"][0]["reported_queue"] is not None


async def test_l1_limit_of_one_serialises_requests(fleet):
    pods = [arg for pod in fleet[:2] for arg in ("--pod", pod.spec)]
    with katyusha(*pods, "--set", "katyusha-junbanmachi-concurrent-request=1",
                  "--keep-nonna-headers", "true") as proxy:
        results = await blast(proxy.url + "/", 16, 4)
        assert [r[0] for r in results] == [200] * 16
        # With one request in flight fleet-wide, every pod answers with nothing else inside.
        loads = {(h["nonna-queue-length"], h["nonna-in-flight"]) for _, h, _ in results}
        assert loads <= {("0", "0"), ("0", "1")}, loads
        _, state = admin(proxy, "GET", "/pods")
        assert state["queue"]["limit"] == 1
    with katyusha(*pods, "--keep-nonna-headers", "true", "--set", "pod-capacity-factor=0") as proxy:
        results = await blast(proxy.url + "/", 16, 4)
        # Without the limit (and without the per-pod cap), four at a time over two single-slot pods must queue in nonna.
        assert any(h["nonna-queue-length"] != "0" for _, h, _ in results)


async def test_fukabunsan_off_picks_round_robin_even_with_jsq(fleet):
    pods = [arg for pod in fleet for arg in ("--pod", pod.spec)]
    with katyusha(*pods, "--policy", "jsq-piggyback", "--keep-nonna-headers", "true",
                  "--set", "katyusha-enable-fukabunsan=false") as proxy:
        results = await blast(proxy.url + "/", 9, 1)
        order = [headers["nonna-pod"] for _, headers, _ in results]
        assert order[:3] == ["pod-0", "pod-1", "pod-2"]
        assert order == order[:3] * 3
        _, state = admin(proxy, "GET", "/pods")
        assert state["policy"] == "round-robin"


async def test_katyusha_off_is_a_round_robin_pass_through(fleet):
    pods = [arg for pod in fleet for arg in ("--pod", pod.spec)]
    with katyusha(*pods, "--set", "ikukantai-enable-katyusha=false",
                  "--keep-nonna-headers", "true") as proxy:
        results = await blast(proxy.url + "/", 6, 1)
        assert [h["nonna-pod"] for _, h, _ in results] == ["pod-0", "pod-1", "pod-2"] * 2
        _, state = admin(proxy, "GET", "/pods")
        assert state["queue"]["limit"] is None
        # No feedback: the pods' reports were ignored.
        assert all(row["reported_queue"] is None for row in state["pods"])
        _, config = admin(proxy, "GET", "/config")
        assert config["ikukantai-enable-katyusha"] is False


async def test_no_ready_pod_waits_until_one_is_added(fleet):
    with katyusha("--request-timeout", "20") as proxy:
        task = asyncio.ensure_future(blast(proxy.url + "/", 3, 3))
        await asyncio.sleep(0.5)
        assert not task.done()
        _, demand = admin(proxy, "GET", "/demand")
        assert demand == {"waiting": 3, "in_flight": 0, "ready_pods": 0,
                          "services": {"default": {"waiting": 3, "in_flight": 0, "ready_pods": 0}}}
        status, _ = admin(proxy, "PUT", "/pods", {"pods": [fleet[0].json()]})
        assert status == 200
        results = await asyncio.wait_for(task, 15)
        assert [r[0] for r in results] == [200] * 3


async def test_deadline_with_no_pod_gives_503_naming_it(fleet):
    with katyusha("--request-timeout", "0.5") as proxy:
        started = time.monotonic()
        [(status, _, body)] = await blast(proxy.url + "/", 1, 1)
        assert status == 503
        assert b"no pod was ready" in body
        assert 0.25 <= time.monotonic() - started <= 5


async def test_put_and_delete_pods(fleet):
    with katyusha("--pod", fleet[0].spec) as proxy:
        status, body = admin(proxy, "PUT", "/pods", {"pods": [{"name": "x", "url": "ftp://no"}]})
        assert status == 400 and "pods[0].url" in body["error"]
        status, body = admin(proxy, "PUT", "/pods", {"pods": "pod-1"})
        assert status == 400 and "pods" in body["error"]
        assert admin(proxy, "DELETE", "/pods/nope")[0] == 404
        status, body = admin(proxy, "PUT", "/pods", {"pods": [fleet[1].json()]})
        assert status == 200 and body["pods"] == ["pod-0", "pod-1"]
        status, body = admin(proxy, "PUT", "/pods", {"pods": [fleet[2].json()], "replace": True})
        assert body["pods"] == ["pod-2"] and sorted(body["removed"]) == ["pod-0", "pod-1"]
        # DELETE answers once katyusha's requests to the pod have finished.
        task = asyncio.ensure_future(blast(proxy.url + "/", 4, 4))
        await asyncio.sleep(0.05)
        status, body = await asyncio.to_thread(admin, proxy, "DELETE", "/pods/pod-2?timeout=10")
        assert status == 200 and body == {"name": "pod-2", "drained": True, "in_flight": 0}
        status, body = admin(proxy, "DELETE", "/pods/pod-0?timeout=x")
        assert status == 400
        admin(proxy, "PUT", "/pods", {"pods": [fleet[0].json()]})
        results = await asyncio.wait_for(task, 20)
        assert [r[0] for r in results] == [200] * 4


async def test_metrics_and_sigterm_exit_zero(fleet):
    proxy = katyusha("--pod", fleet[0].spec)
    try:
        await blast(proxy.url + "/", 3, 1)
        import urllib.request

        text = urllib.request.urlopen(proxy.admin + "/metrics", timeout=10).read().decode()
        assert 'katyusha_requests_total{pod="pod-0",service="default",status="200"} 3.0' in text
        assert 'katyusha_l1_wait_seconds_count{service="default"} 3.0' in text
        assert 'katyusha_pod_in_flight{pod="pod-0",service="default"} 0.0' in text
        task = asyncio.ensure_future(blast(proxy.url + "/", 4, 4))
        await asyncio.sleep(0.1)
        assert await asyncio.to_thread(proxy.terminate) == 0
        results = await task
        assert [r[0] for r in results] == [200] * 4
    finally:
        proxy.kill()


async def test_killed_pod_mid_run_idempotent_gets_all_succeed():
    pods = start_pods([1.0, 1.0, 1.0])
    try:
        args = [arg for pod in pods for arg in ("--pod", pod.spec)]
        with katyusha(*args, "--policy", "round-robin") as proxy:
            task = asyncio.ensure_future(blast(proxy.url + "/", 120, 4))
            await asyncio.sleep(0.3)
            await asyncio.to_thread(pods[1].nonna.kill)
            results = await asyncio.wait_for(task, 60)
            assert [r[0] for r in results] == [200] * 120
            _, state = admin(proxy, "GET", "/pods")
            assert sum(row["failures"] for row in state["pods"]) >= 1
    finally:
        for pod in pods:
            pod.stop()


async def test_several_workers_share_the_port_and_admin_fans_out(fleet):
    with katyusha("--pod", fleet[0].spec, "--katyusha-threads", "2") as proxy:
        status, body = admin(proxy, "PUT", "/pods", {"pods": [fleet[1].json()]})
        assert status == 200 and len(body["workers"]) == 2
        _, state = admin(proxy, "GET", "/pods")
        assert [sorted(p["name"] for p in w["pods"]) for w in state["workers"]] == [
            ["pod-0", "pod-1"], ["pod-0", "pod-1"]
        ]
        results = await blast(proxy.url + "/", 20, 4)
        assert [r[0] for r in results] == [200] * 20
        import urllib.request

        text = urllib.request.urlopen(proxy.admin + "/metrics", timeout=10).read().decode()
        assert 'worker="0"' in text and 'worker="1"' in text
        status, body = admin(proxy, "DELETE", "/pods/pod-1")
        assert status == 200 and body["drained"] is True
        assert admin(proxy, "GET", "/demand")[1]["ready_pods"] == 1
        assert proxy.terminate() == 0


async def test_demand_is_posted_when_requests_wait_for_a_pod():
    with demand_sink() as (url, posts):
        with katyusha("--demand-url", url, "--request-timeout", "1") as proxy:
            results = await blast(proxy.url + "/", 5, 5)
            assert [r[0] for r in results] == [503] * 5
            assert posts, "no demand POST arrived"
            assert posts[0]["service"] == "default"
            assert posts[0]["ready_pods"] == 0 and posts[0]["waiting"] >= 1
            # At most one POST per 100 ms (plus one trailing), not one per request.
            assert len(posts) <= 3


async def test_prequal_serves_every_request(fleet):
    pods = [arg for pod in fleet for arg in ("--pod", pod.spec)]
    with katyusha(*pods, "--policy", "prequal", "--probe-rate", "20") as proxy:
        results = await blast(proxy.url + "/", 40, 4)
        assert [r[0] for r in results] == [200] * 40


def _timings(url: str, method: str, body: bytes | None) -> dict[str, float]:
    """Every Server-Timing line of one response, parsed together."""
    import http.client
    import urllib.parse

    from katyusha.core.feedback import parse_server_timing

    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    try:
        conn.request(method, "/", body=body)
        response = conn.getresponse()
        response.read()
        assert response.status == 200
        lines = [value for name, value in response.getheaders() if name.lower() == "server-timing"]
    finally:
        conn.close()
    return parse_server_timing(", ".join(lines))


@pytest.mark.parametrize("method, body", [("GET", None), ("POST", b"x" * 2000)])
def test_keep_nonna_headers_also_times_the_upstream_leg(fleet, method, body):
    # With nonna's headers kept (debugging), katyusha times the dispatch to the pod's head: the
    # pod's slot is held for it, nonna's queue and app time inside it (benchmarks.sim_vs_live).
    # katyusha's loop clock (uvloop's) counts whole milliseconds: its leg may read up to 1 ms short.
    with katyusha("--pod", fleet[0].spec, "--keep-nonna-headers", "true") as proxy:
        for _ in range(5):
            timing = _timings(proxy.url, method, body)
            assert timing["katyusha-upstream"] + 1.0 >= timing["app"] + timing["nonna-queue"] > 0, timing
            assert "katyusha-queue" in timing and timing["katyusha-wake"] >= 0
    with katyusha("--pod", fleet[0].spec) as proxy:
        timing = _timings(proxy.url, method, body)
        assert "katyusha-queue" in timing and "katyusha-upstream" not in timing, timing
        assert "katyusha-wake" not in timing, timing


async def test_a_request_let_in_from_the_l1_queue_is_timed_from_its_admission_to_its_dispatch(fleet):
    from katyusha.core.feedback import parse_server_timing

    # One pod of concurrency 1, four requests at a time: three wait in L1 each time, and each is
    # dispatched only when its task runs after the admission (the pod idle meanwhile). The loop's
    # clock (uvloop's) counts whole milliseconds, so a wake of a fraction of one often reads 0.
    with katyusha("--pod", fleet[0].spec, "--keep-nonna-headers", "true") as proxy:
        results = await blast(proxy.url + "/", 16, 4)
    timings = [parse_server_timing(headers["server-timing"]) for _, headers, _ in results]
    queued = [t for t in timings if t["katyusha-queue"] > 0]
    assert queued, timings
    assert all(0 <= t["katyusha-wake"] < t["katyusha-queue"] + t["katyusha-upstream"] for t in queued), timings
