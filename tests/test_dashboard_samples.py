"""The dashboard's per-second samples (katyusha.dashboard.samples, katyusha.dashboard.view): rates from counter
deltas, p50/p99 per service and per pod from the real per-request latencies, and several workers shown as one."""

from __future__ import annotations

import math
import random

import pytest

from katyusha.dashboard import view
from katyusha.dashboard.samples import (
    Point,
    ServiceSamples,
    add_sketch,
    bucket_quantile,
    merge_points,
    sketch_index,
    sketch_quantile,
)


def sketch_of(latencies) -> dict[int, int]:
    sketch: dict[int, int] = {}
    for seconds in latencies:
        add_sketch(sketch, {sketch_index(seconds): 1})
    return sketch


def exact(q: float, values) -> float:
    """The nearest-rank quantile."""
    ordered = sorted(values)
    return ordered[max(1, math.ceil(q * len(ordered))) - 1]


def test_bucket_quantile_interpolates_within_the_bucket_like_prometheus():
    bounds = (0.01, 0.1, 1.0)
    assert bucket_quantile(0.5, bounds, [0, 10, 0, 0]) == pytest.approx(0.055)
    assert bucket_quantile(0.99, bounds, [99, 0, 1, 0]) == pytest.approx(0.01)
    assert bucket_quantile(0.5, bounds, [0, 0, 0, 0]) is None
    assert bucket_quantile(0.99, bounds, [0, 0, 0, 5]) == 1.0  # overflow: its lower bound


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_sketch_quantiles_are_within_2_percent_of_the_exact_ones(seed):
    rng = random.Random(seed)
    latencies = [rng.lognormvariate(-5, 1.2) for _ in range(5000)]  # ~7 ms median, a long tail
    sketch = sketch_of(latencies)
    for q in (0.5, 0.9, 0.99, 0.999):
        assert sketch_quantile(q, sketch) == pytest.approx(exact(q, latencies), rel=0.021)
    assert sketch_quantile(0.5, {}) is None


def test_points_are_per_second_deltas_with_quantiles_per_service_and_per_pod():
    samples = ServiceSamples(window_s=10)
    assert samples.add(10.0, {(200, "pod-1"): 100, (200, "pod-2"): 50}, {}) is None  # only the start
    fast, slow = [0.004] * 30, [0.4] * 10
    responses = {(200, "pod-1"): 130, (200, "pod-2"): 60, (503, ""): 2}
    point = samples.add(12.0, responses, {"pod-1": sketch_of(fast), "pod-2": sketch_of(slow)})
    assert point.rps == pytest.approx(21.0)  # (30 + 10 + 2) / 2 s
    assert point.errors == pytest.approx(1.0)
    assert point.pod_rps == {"pod-1": 15.0, "pod-2": 5.0}
    assert point.p50_ms == pytest.approx(4.0, rel=0.02) and point.p99_ms == pytest.approx(400, rel=0.02)
    assert point.quantile_ms(0.99, "pod-1") == pytest.approx(4.0, rel=0.02)
    assert samples.pod_rps("pod-3") == 0.0
    # No traffic: zero rate, and no latency rather than a made-up one.
    quiet = samples.add(13.0, responses, {})
    assert quiet.rps == 0 and quiet.p50_ms is None
    series = samples.series()
    assert series["rps"] == [21.0, 0.0] and series["p50_ms"][1] is None
    assert series["pods"]["pod-2"]["p99_ms"][0] == pytest.approx(400, rel=0.02)
    assert series["pods"]["pod-2"]["p99_ms"][1] is None and series["pods"]["pod-1"]["rps"] == [15.0, 0.0]
    # The figures pool every request of the window, not the seconds' quantiles.
    assert samples.quantile_ms(0.5, 5, "pod-2") == pytest.approx(400, rel=0.02)
    assert samples.quantile_ms(0.9, 5) == pytest.approx(400, rel=0.02)  # 10 of 40 are slow


def test_the_ring_keeps_only_its_window():
    samples = ServiceSamples(window_s=3)
    for second in range(10):
        samples.add(float(second), {(200, "p"): second * 5}, {"p": {100: 5}})
    assert len(samples.points) == 3 and samples.series()["t"] == [7.0, 8.0, 9.0]
    assert samples.rps(3) == pytest.approx(5.0)


def test_points_survive_json_and_merge_second_by_second():
    a = [Point(100.005, 1.0, {(200, "p1"): 10}, {"p1": {50: 10}}), Point(101.006, 1.0, {(200, "p1"): 4}, {"p1": {60: 4}})]
    b = [Point(101.004, 1.0, {(200, "p1"): 6, (502, "p2"): 1}, {"p1": {70: 6}, "p2": {80: 1}})]
    b = [Point.from_json(p.to_json()) for p in b]
    merged = merge_points([a, b])
    assert [round(p.at) for p in merged] == [100, 101]
    assert merged[1].responses == {(200, "p1"): 10, (502, "p2"): 1}
    assert merged[1].latency == {"p1": {60: 4, 70: 6}, "p2": {80: 1}}
    assert a[1].latency == {"p1": {60: 4}}  # the inputs stay as they were


def _instant(worker_pods, waiting, responses):
    return {"name": "default", "policy": "p2c", "ready_pods": len(worker_pods),
            "queue": {"waiting": waiting, "active": 3, "limit": 100},
            "pods": [{"name": name, "ready": ready, "health": "ok" if ready else "ejected", "in_flight": 2,
                      "reported_queue": q, "latency_ewma_ms": 5.0} for name, ready, q in worker_pods],
            "draining": [], "responses": responses}


def test_a_group_of_workers_shows_as_one_katyusha():
    """Worker 0's view of ``--workers 2``: sums, the merged quantiles, the worst health."""
    group = view.Group(2)
    fast = {sketch_index(0.002): 90}
    slow = {sketch_index(0.2): 10}
    raws = [
        {"at": 2.0, "services": [{**_instant([("p1", True, 1), ("p2", True, 0)], 1, [[200, "p1", 90]]),
                                  "points": [Point(1.005, 1.0, {(200, "p1"): 90}, {"p1": fast}).to_json()]}]},
        {"at": 2.0, "services": [{**_instant([("p1", True, 4), ("p2", False, 0)], 2, [[200, "p2", 10]]),
                                  "points": [Point(1.003, 1.0, {(200, "p2"): 10}, {"p2": slow}).to_json()]}]},
    ]
    doc = group.data(raws)
    assert doc["workers"] == 2 and doc["workers_up"] == 2
    (service,) = doc["services"]
    assert service["workers"] == 2 and service["requests"] == 100
    assert service["queue"] == {"waiting": 3, "active": 6, "limit": 200} and service["l1_waiting"] == 3
    assert service["rps"] == pytest.approx(100.0)
    assert service["p50_ms"] == pytest.approx(2.0, rel=0.02) and service["p99_ms"] == pytest.approx(200, rel=0.02)
    pods = {p["name"]: p for p in service["pods"]}
    assert pods["p1"]["in_flight"] == 4 and pods["p1"]["reported_queue"] == 4 and pods["p1"]["ready"]
    assert not pods["p2"]["ready"] and pods["p2"]["health"] == "ejected"
    assert "1 of 2 workers" in pods["p2"]["health_cause"]
    assert pods["p2"]["p99_ms"] == pytest.approx(200, rel=0.02)
    assert service["series"]["pods"]["p1"]["rps"] == [90.0]
    # The next poll asks each worker only for newer points; a worker that does not answer keeps its copy.
    assert group.since(0) == pytest.approx(1.005) and group.since(1) == pytest.approx(1.003)
    again = group.data([raws[0], None])
    assert again["workers_up"] == 1 and again["services"][0]["series"]["rps"] == [100.0]


def test_the_page_is_self_contained():
    """No CDN, no external script, style, font or image: the page works with no network."""
    import re

    from katyusha.dashboard import page

    html = page().decode()
    assert "<script src" not in html and "<link rel=\"stylesheet\"" not in html
    assert not re.search(r"""(src|href)=["'](https?:)?//""", html)
    assert "@import" not in html and "url(http" not in html
