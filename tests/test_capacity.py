"""Per-pod capacity: katyusha sends a pod no more than its container concurrency and keeps the rest in L1.

End to end over real processes (sim-backend behind nonna with a shallow L2
queue, so overflow shows as nonna's 503). The capacity arithmetic on its own
is tested on the core in tests/test_service_balancer.py.
"""

from __future__ import annotations

import asyncio
import collections
import subprocess
import time

import pytest

from katyusha.core.errors import ConfigError
from katyusha.proxy.config import parse_pod, validate
from tests.katyusha_fleet import Pod, admin, blast, katyusha, start_pods
from tests.procs import Proc, script


def start_shallow_pods(concurrencies: list[int]) -> list[Pod]:
    """One sim-backend + nonna per entry: that container concurrency, an L2 queue depth of 1."""
    backends = [
        Proc([script("sim-backend"), "--port", "0", "--admin-port", "0", "--pod", f"pod-{i}",
              "--node", "node-1", "--state", "warm", "--service-time", "const:20ms",
              "--seed", str(i + 1)], ready_timeout=0)
        for i in range(len(concurrencies))
    ]
    for proc in backends:
        proc.wait_ready(30)
    nonnas = [
        Proc([script("nonna"), "--port", "0", "--admin-port", "0", "--upstream", backend.url,
              "--concurrency", str(cc), "--queue-depth", "1", "--pod", f"pod-{i}",
              "--node", "node-1"], ready_timeout=0)
        for i, (backend, cc) in enumerate(zip(backends, concurrencies, strict=True))
    ]
    for proc in nonnas:
        proc.wait_ready(30)
    return [Pod(f"pod-{i}", b, n) for i, (b, n) in enumerate(zip(backends, nonnas, strict=True))]


@pytest.fixture(scope="module")
def pods():
    """pod-0 and pod-1: concurrency 1; pod-2: concurrency 2; every nonna queues at most 1."""
    started = start_shallow_pods([1, 1, 2])
    yield started
    for pod in started:
        pod.stop()


def statuses(results) -> collections.Counter:
    return collections.Counter(status for status, _, _ in results)


async def wait_waiting(proxy, count: int, timeout: float = 10.0) -> None:
    """Until ``count`` requests wait in katyusha's L1 queue (bounded)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _, demand = admin(proxy, "GET", "/demand")
        if demand["waiting"] >= count:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"never {count} waiting: {demand}")


async def test_a_pod_gets_at_most_its_concurrency_and_one_more_the_rest_waits_in_l1(pods):
    spec = pods[0].spec + ",concurrency=1"
    with katyusha("--pod", spec) as proxy:
        results = await blast(proxy.url + "/", 20, 20)
        assert statuses(results) == {200: 20}
        _, state = admin(proxy, "GET", "/pods")
        # Its concurrency and the one extra request that waits in nonna (pod-capacity-extra 1).
        assert state["queue"]["limit"] == 2
        assert state["queue"]["configured_limit"] == 1000
        assert state["pods"][0]["capacity"] == 2
        assert state["pods"][0]["concurrency"] == 1
    # The same burst with the cap off overflows nonna's one-deep queue.
    with katyusha("--pod", spec, "--set", "pod-capacity-factor=0") as proxy:
        results = await blast(proxy.url + "/", 20, 20)
        assert statuses(results)[503] >= 10, statuses(results)


async def test_held_burst_is_spread_over_the_pods_as_they_join(pods):
    with katyusha("--request-timeout", "20", "--keep-nonna-headers", "true") as proxy:
        task = asyncio.ensure_future(blast(proxy.url + "/", 30, 30))
        await wait_waiting(proxy, 30)
        entries = [{**pod.json(), "concurrency": 1} for pod in pods[:2]]
        status, _ = admin(proxy, "PUT", "/pods", {"pods": entries})
        assert status == 200
        results = await asyncio.wait_for(task, 20)
        assert statuses(results) == {200: 30}
        served = collections.Counter(headers["nonna-pod"] for _, headers, _ in results)
        assert served["pod-0"] >= 5 and served["pod-1"] >= 5, served
        _, state = admin(proxy, "GET", "/pods")
        assert state["queue"]["limit"] == 4  # two pods of concurrency 1, each with its extra one


async def test_capacity_is_learned_from_nonna_concurrency_when_not_given(pods):
    # pod-2 takes 2 at once and queues 1: 20 at once would overflow it.
    with katyusha("--request-timeout", "20") as proxy:
        task = asyncio.ensure_future(blast(proxy.url + "/", 20, 20))
        await wait_waiting(proxy, 20)
        status, _ = admin(proxy, "PUT", "/pods", {"pods": [pods[2].json()]})
        assert status == 200
        results = await asyncio.wait_for(task, 20)
        assert statuses(results) == {200: 20}
        _, state = admin(proxy, "GET", "/pods")
        [row] = state["pods"]
        assert row["concurrency"] is None
        assert row["reported_concurrency"] == 2
        assert row["capacity"] == 3  # 2 at once, 1 waiting in nonna
        assert state["queue"]["limit"] == 3


@pytest.fixture(scope="module")
def slow_pod():
    """One pod of concurrency 2 answering in 300 ms (nonna's default queue depth)."""
    started = start_pods([1.0], service="const:300ms", concurrency=2)
    yield started[0]
    started[0].stop()


async def replica_beside_a_busy_one(pod, *args: str) -> dict:
    """Replica B keeps five clients on ``pod`` while replica A (``args``) sends it one request:
    A's ``/pods`` state once that request is back. Every request of both is answered."""
    spec = pod.spec + ",concurrency=2"
    with katyusha("--pod", spec) as b, katyusha("--pod", spec, *args) as a:
        busy = asyncio.ensure_future(blast(b.url + "/", 20, 5))
        await wait_waiting(b, 1)  # B holds its room at the pod (three), the rest wait in its L1
        assert statuses(await blast(a.url + "/", 1, 1)) == {200: 1}
        _, state = admin(a, "GET", "/pods")
        assert statuses(await asyncio.wait_for(busy, 30)) == {200: 20}
    return state


async def test_a_replica_leaves_room_at_a_pod_to_the_requests_another_replica_holds_there(slow_pod):
    """With the defaults (share-pods), A's request comes back with the pod's report of B's
    requests there: A's room at the pod (its two slots and the extra) is cut by one (half its
    slots) and its L1 limit with it, so A's next requests wait in its own L1 rather than behind
    B's in nonna; turned off, A keeps its room of three whatever B holds."""
    shared = await replica_beside_a_busy_one(slow_pod)
    [row] = shared["pods"]
    assert row["others"] >= 1 and row["capacity"] == 3 and row["room"] == 2, row
    assert shared["queue"]["limit"] == 2
    alone = await replica_beside_a_busy_one(slow_pod, "--share-pods", "false")
    [row] = alone["pods"]
    assert row["others"] == 0 and row["room"] == 3 and alone["queue"]["limit"] == 3, row


@pytest.mark.parametrize("raw", ["-1", "abc", "nan", "inf", "", True])
def test_bad_capacity_factor_is_an_error_naming_it(raw):
    with pytest.raises(ConfigError) as caught:
        validate({"pod-capacity-factor": raw})
    assert caught.value.key == "pod-capacity-factor"
    assert validate({"pod-capacity-factor": "0.5"}).pod_capacity_factor == 0.5


def test_bad_capacity_settings_stop_katyusha_naming_them():
    for extra in (["--set", "pod-capacity-factor=-2"],
                  ["--pod", "http://127.0.0.1:9,concurrency=many"]):
        done = subprocess.run([script("katyusha"), "serve", "--port", "0", "--admin-port", "0",
                               *extra], capture_output=True, text=True, timeout=30)
        assert done.returncode == 2, done
        name = "pod-capacity-factor" if "--set" in extra else "concurrency"
        assert name in done.stderr, done.stderr
    assert parse_pod("pods", "http://127.0.0.1:9,concurrency=3").concurrency == 3
    assert parse_pod("pods", {"url": "http://127.0.0.1:9"}).concurrency is None


async def test_put_pods_rejects_a_bad_concurrency_naming_the_field(pods):
    with katyusha() as proxy:
        for bad in (-1, "two", 1.5, True):
            status, body = admin(proxy, "PUT", "/pods",
                                 {"pods": [{**pods[0].json(), "concurrency": bad}]})
            assert status == 400, (bad, body)
            assert "pods[0].concurrency" in body["error"], body
        status, body = admin(proxy, "PUT", "/pods", {"pods": [{**pods[0].json(), "concurrency": 3}]})
        assert status == 200, body
