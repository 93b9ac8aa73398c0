"""A pod whose app is down: nonna says so (Nonna-Error), katyusha retries elsewhere and counts it.

Real sim-backend + nonna pods and a real katyusha over loopback; one pod's
sim-backend is stopped, so its nonna answers every request with a 502 that
carries ``Nonna-Error: upstream-unreachable``.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest

from katyusha.core.feedback import upstream_unreachable
from tests.katyusha_fleet import admin, blast, katyusha, start_pods


@pytest.fixture(scope="module")
def fleet_with_dead_app():
    pods = start_pods([1.0, 1.0, 1.0])
    pods[0].backend.terminate()
    yield pods
    for pod in pods:
        pod.stop()


def test_marker_parsing_never_raises():
    assert upstream_unreachable([(b"nonna-error", b"upstream-unreachable")])
    assert upstream_unreachable([(b"nonna-error", b" Upstream-Unreachable ")])
    assert not upstream_unreachable([(b"nonna-error", b"queue-full")])
    assert not upstream_unreachable([(b"x-other", b"upstream-unreachable")])
    assert not upstream_unreachable([("not", "bytes")])
    assert not upstream_unreachable(None)


def test_nonna_marks_its_502_when_the_app_refuses_connections(fleet_with_dead_app):
    dead = fleet_with_dead_app[0]
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(dead.nonna.url + "/x", timeout=10)
    assert err.value.code == 502
    assert err.value.headers["Nonna-Error"] == "upstream-unreachable"
    assert "nonna-queue-length" in {k.lower() for k in err.value.headers}
    assert b"cannot connect" in err.value.read()
    # A pod whose app answers carries no marker, even on its own errors.
    with urllib.request.urlopen(fleet_with_dead_app[1].nonna.url + "/x", timeout=10) as reply:
        assert reply.status == 200 and reply.headers["Nonna-Error"] is None


async def test_katyusha_takes_the_pod_out_at_once_and_retries_any_method(fleet_with_dead_app):
    args = [arg for pod in fleet_with_dead_app for arg in ("--pod", pod.spec)]
    # round-robin sends a third of first tries to the dead pod whatever its load.
    with katyusha(*args, "--policy", "round-robin") as proxy:
        results = await blast(proxy.url + "/item", 60, 4)
        assert [status for status, _, _ in results] == [200] * 60
        assert {headers.get("nonna-error") for _, headers, _ in results} == {None}
        _, state = admin(proxy, "GET", "/pods")
        rows = {row["name"]: row for row in state["pods"]}
        # The first upstream-unreachable took pod-0 out of the ready set (tries already on
        # their way to it may fail too); its nonna's /healthz says 503 while the app is down.
        assert 1 <= rows["pod-0"]["failures"] <= 4, rows["pod-0"]
        assert rows["pod-0"]["health"] == "probing" and not rows["pod-0"]["ready"]
        assert rows["pod-1"]["failures"] == rows["pod-2"]["failures"] == 0
        assert state["ready_pods"] == 2
        # The app never got these, so even a POST is safe to send elsewhere.
        posts = await blast(proxy.url + "/item", 6, 1, method="POST")
        assert [status for status, _, _ in posts] == [200] * 6


async def test_jsq_keeps_clear_of_a_pod_that_keeps_failing(fleet_with_dead_app):
    args = [arg for pod in fleet_with_dead_app for arg in ("--pod", pod.spec)]
    with katyusha(*args, "--policy", "jsq-piggyback") as proxy:
        results = await blast(proxy.url + "/item", 80, 2)
        assert [status for status, _, _ in results] == [200] * 80
        _, state = admin(proxy, "GET", "/pods")
        rows = {row["name"]: row for row in state["pods"]}
        # An instant 502 makes a pod look idle; out of the ready set it gets nothing more.
        assert rows["pod-0"]["requests"] <= 2, rows["pod-0"]


def test_nonna_stats_report_the_latency_prequal_probes(fleet_with_dead_app):
    healthy = fleet_with_dead_app[2]
    before = nonna_stats(healthy)["app_ewma_ms"]
    app_ms = []
    for _ in range(5):
        with urllib.request.urlopen(healthy.nonna.url + "/x", timeout=10) as reply:
            reply.read()
            timing = reply.headers["Server-Timing"]
        app_ms.append(float(timing.split("app;dur=")[1].split(",")[0]))
    stats = nonna_stats(healthy)
    # app_ewma_ms follows the app times the pod's responses reported, weight 0.2 each.
    expected = before
    for sample in app_ms:
        expected = sample if expected is None else expected + 0.2 * (sample - expected)
    assert stats["app_ewma_ms"] == pytest.approx(expected, abs=0.01)
    assert stats["app_ewma_ms"] >= 1.0  # exp:20ms service times, not a stray zero
    # Idle now, so a new request would wait for nobody: one app time.
    assert stats["latency_ms"] == stats["app_ewma_ms"]


def nonna_stats(pod) -> dict:
    with urllib.request.urlopen(pod.nonna.admin + "/stats", timeout=10) as reply:
        return json.loads(reply.read())
