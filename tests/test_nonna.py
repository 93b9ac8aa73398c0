"""nonna: its settings, then real nonna processes in front of real sim-backends.

The L2 queue and the report it piggybacks are tested on a fake clock in test_sidecar.py.
"""

from __future__ import annotations

import http.client
import json
import socket
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

import pytest

from katyusha.core.errors import ConfigError
from nonna.config import load
from tests.procs import Proc, script

PIGGYBACK = ("nonna-queue-length", "nonna-in-flight", "nonna-concurrency", "nonna-pod", "nonna-node")


# -- settings ------------------------------------------------------------------------


def test_config_precedence_yaml_env_flags(tmp_path):
    path = tmp_path / "nonna.yaml"
    path.write_text("concurrency: 4\npod: from-yaml\nnode: yaml-node\ntimeout: 5s\n")
    env = {"NONNA_POD": "from-env", "NONNA_TIMEOUT": "250ms"}
    config = load(flags={"pod": "from-flag"}, config_file=str(path), environ=env)
    assert (config.pod, config.node, config.concurrency) == ("from-flag", "yaml-node", 4)
    assert config.timeout == pytest.approx(0.25)
    assert config.effective_queue_depth == 40
    with pytest.raises(ConfigError, match="NONNA_TIMEOUT"):
        load(environ={"NONNA_TIMEOUT": "soon"})


# -- real processes ----------------------------------------------------------------


def sim_backend(port: int = 0, service: str = "const:100ms") -> Proc:
    return Proc([script("sim-backend"), "--port", str(port), "--admin-port", "0",
                 "--pod", "p", "--node", "n", "--state", "warm", "--service-time", service])


def nonna(upstream: Proc, *extra: str) -> Proc:
    return Proc([script("nonna"), "--port", "0", "--admin-port", "0", "--upstream", upstream.url,
                 "--pod", "pod-a", "--node", "node-a", "--stats-period", "0.5s", *extra])


def request(url: str, method: str = "GET", body: bytes | None = None, timeout: float = 10.0):
    """One request on a fresh connection: (status, headers dict lower-case, body, seconds)."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    start = time.monotonic()
    try:
        conn.request(method, parts.path or "/", body=body)
        response = conn.getresponse()
        data = response.read()
        headers = {k.lower(): v for k, v in response.getheaders()}
        return response.status, headers, data, time.monotonic() - start
    finally:
        conn.close()


def concurrently(url: str, n: int):
    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(lambda _: request(url + "/work"), range(n)))


def assert_piggyback(headers: dict, status: int):
    for name in PIGGYBACK:
        assert name in headers, f"{name} missing on a {status}"
    assert headers["nonna-pod"] == "pod-a" and headers["nonna-node"] == "node-a"
    timing = headers["server-timing"]
    assert "nonna-queue;dur=" in timing and "app;dur=" in timing


@pytest.fixture(scope="module")
def backend():
    with sim_backend() as proc:
        yield proc


def test_concurrency_one_queues_in_fifo_and_reports_queue_length(backend):
    with nonna(backend, "--concurrency", "1") as proxy:
        request(proxy.url + "/warmup")
        start = time.monotonic()
        results = concurrently(proxy.url, 5)
        elapsed = time.monotonic() - start
        assert [r[0] for r in results] == [200] * 5
        # One at a time: about 5 x 100 ms, never all in parallel.
        assert 0.4 <= elapsed <= 2.5, elapsed
        lengths = {int(r[1]["nonna-queue-length"]) for r in results}
        assert {0, 1, 2, 3} <= lengths, lengths
        for status, headers, _, _ in results:
            assert_piggyback(headers, status)
            assert headers["nonna-concurrency"] == "1"
            assert headers["nonna-in-flight"] == "0"  # C=1: nobody else executes
        waits = sorted(float(r[1]["server-timing"].split("nonna-queue;dur=")[1].split(",")[0])
                       for r in results)
        assert waits[-1] >= 250  # the last one waited for about four others (ms)

        stats = json.loads(request(proxy.admin + "/stats")[2])
        assert stats["pod"] == "pod-a" and stats["node"] == "node-a"
        assert stats["concurrency"] == 1 and stats["queue_depth"] == 10
        assert stats["queue_length"] == 0 and stats["in_flight"] == 0
        deadline = time.monotonic() + 5
        while stats["last_period"] is None and time.monotonic() < deadline:
            time.sleep(0.2)
            stats = json.loads(request(proxy.admin + "/stats")[2])
        period = stats["last_period"]
        assert set(period) >= {"average_concurrency", "request_count", "requests_per_second"}

        metrics = request(proxy.admin + "/metrics")[2].decode()
        assert 'nonna_requests_total{code="200"} 6.0' in metrics
        assert "nonna_queue_wait_seconds_count 6.0" in metrics
        assert "nonna_app_seconds_bucket" in metrics
        assert "nonna_in_flight 0.0" in metrics and "nonna_queue_length 0.0" in metrics
        assert "nonna_concurrency_limit 1.0" in metrics


def test_beyond_queue_depth_gets_503_at_once(backend):
    with nonna(backend, "--concurrency", "1", "--queue-depth", "2") as proxy:
        request(proxy.url + "/warmup")
        results = concurrently(proxy.url, 8)
        rejected = [r for r in results if r[0] == 503]
        served = [r for r in results if r[0] == 200]
        assert len(rejected) + len(served) == 8
        assert len(rejected) >= 3, [r[0] for r in results]
        for status, headers, body, seconds in rejected:
            assert b"queue full" in body
            assert seconds < 0.4, seconds  # not after the 100 ms requests ahead of it
            assert_piggyback(headers, status)
            assert int(headers["nonna-queue-length"]) == 2
        metrics = request(proxy.admin + "/metrics")[2].decode()
        assert f'nonna_requests_total{{code="503"}} {len(rejected)}.0' in metrics


def test_request_timeout_gives_504(backend):
    with nonna(backend, "--concurrency", "1", "--timeout", "250ms") as proxy:
        results = concurrently(proxy.url, 6)
        codes = [r[0] for r in results]
        assert 200 in codes and 504 in codes, codes
        for status, headers, body, seconds in results:
            if status == 504:
                assert_piggyback(headers, status)
                assert b"queue" in body or b"timeout" in body
                assert seconds < 1.5
        # Timed-out waiters gave back nothing they did not hold: the pod serves again.
        stats = wait_stats(proxy, lambda s: s["in_flight"] == 0 and s["queue_length"] == 0)
        assert stats["queue_length"] == 0
        assert request(proxy.url + "/after")[0] == 200


def test_upstream_down_502_then_serves_again_and_health_follows():
    first = sim_backend()
    port = urlsplit(first.url).port
    try:
        with nonna(first, "--upstream-health", first.admin + "/healthz") as proxy:
            assert request(proxy.url + "/")[0] == 200
            assert request(proxy.admin + "/healthz")[0] == 200
            assert first.terminate() == 0

            status, headers, body, _ = request(proxy.url + "/")
            assert status == 502
            assert first.url.encode() in body
            assert_piggyback(headers, status)
            status, _, body, _ = request(proxy.admin + "/healthz")
            assert status == 503 and first.admin.encode() in body

            second = sim_backend(port=port)
            try:
                # The health URL names the old admin port: probe the data path instead.
                deadline = time.monotonic() + 10
                while request(proxy.url + "/")[0] != 200:
                    assert time.monotonic() < deadline, "nonna never recovered"
                    time.sleep(0.1)
                assert proxy.popen.poll() is None
            finally:
                second.terminate()
    finally:
        first.kill()


def test_healthz_follows_backend_state():
    with sim_backend() as upstream, \
            nonna(upstream, "--upstream-health", upstream.admin + "/healthz") as proxy:
        assert request(proxy.admin + "/healthz")[0] == 200
        status = put_state(upstream, "warmdisk")
        assert status < 300, status
        status, _, body, _ = request(proxy.admin + "/healthz")
        assert status == 503, body
        assert b"503" in body or b"answered" in body


def put_state(upstream: Proc, state: str) -> int:
    body = json.dumps({"state": state}).encode()
    return request(upstream.admin + "/state", method="PUT", body=body)[0]


def wait_stats(proxy: Proc, predicate, seconds: float = 5.0) -> dict:
    deadline = time.monotonic() + seconds
    while True:
        stats = json.loads(request(proxy.admin + "/stats")[2])
        if predicate(stats):
            return stats
        assert time.monotonic() < deadline, f"stats never matched: {stats}"
        time.sleep(0.01)


def test_client_leaving_the_queue_frees_its_place():
    with sim_backend(service="const:1s") as upstream, nonna(upstream, "--concurrency", "1") as proxy:
        with ThreadPoolExecutor(2) as pool:
            first = pool.submit(request, proxy.url + "/first")
            wait_stats(proxy, lambda s: s["in_flight"] == 1)
            parts = urlsplit(proxy.url)
            leaver = socket.create_connection((parts.hostname, parts.port), timeout=5)
            leaver.sendall(b"GET /leaver HTTP/1.1\r\nHost: nonna\r\n\r\n")
            wait_stats(proxy, lambda s: s["queue_length"] == 1)
            leaver.close()
            # Gone from the queue while the first request still holds the only slot.
            stats = wait_stats(proxy, lambda s: s["queue_length"] == 0)
            assert stats["in_flight"] == 1 and not first.done()
            second = pool.submit(request, proxy.url + "/second")
            assert first.result()[0] == 200
            status, headers, _, _ = second.result()
            assert status == 200
        metrics = request(proxy.admin + "/metrics")[2].decode()
        assert 'nonna_requests_total{code="499"} 1.0' in metrics
        assert json.loads(request(proxy.admin + "/stats")[2])["in_flight"] == 0


def test_sigterm_lets_queued_and_in_flight_finish(backend):
    proxy = nonna(backend, "--concurrency", "1")
    try:
        with ThreadPoolExecutor(3) as pool:
            futures = [pool.submit(request, proxy.url + "/work") for _ in range(3)]
            deadline = time.monotonic() + 5
            while json.loads(request(proxy.admin + "/stats")[2])["queue_length"] < 1:
                assert time.monotonic() < deadline, "requests never queued"
                time.sleep(0.01)
            assert proxy.terminate() == 0
            assert [f.result()[0] for f in futures] == [200, 200, 200]
    finally:
        proxy.kill()


@pytest.mark.parametrize("argv, named", [
    (["--concurrency", "-2"], "--concurrency"),
    (["--timeout", "soon"], "--timeout"),
    (["--upstream", "ftp://x"], "--upstream"),
    (["--queue-depth", "many"], "--queue-depth"),
])
def test_bad_flag_exits_nonzero_naming_it(argv, named):
    done = subprocess.run([script("nonna"), *argv], capture_output=True, text=True, timeout=30)
    assert done.returncode != 0
    assert named in done.stderr
