"""The dashboard's per-second samples (katyusha.dashboard.samples): rates and quantiles from counter deltas."""

from __future__ import annotations

import pytest

from katyusha.dashboard.samples import ServiceSamples, bucket_quantile
from katyusha.proxy.metrics import LATENCY_BUCKETS, Histogram


def test_bucket_quantile_interpolates_within_the_bucket_like_prometheus():
    bounds = (0.01, 0.1, 1.0)
    assert bucket_quantile(0.5, bounds, [0, 10, 0, 0]) == pytest.approx(0.055)
    assert bucket_quantile(0.99, bounds, [99, 0, 1, 0]) == pytest.approx(0.01)
    assert bucket_quantile(0.5, bounds, [0, 0, 0, 0]) is None
    assert bucket_quantile(0.99, bounds, [0, 0, 0, 5]) == 1.0  # overflow: its lower bound


def test_points_are_per_second_deltas_of_the_cumulative_counters():
    hist = Histogram()
    samples = ServiceSamples(LATENCY_BUCKETS, window_s=10)
    responses = {(200, "pod-1"): 100, (200, "pod-2"): 50}
    assert samples.add(10.0, responses, hist.counts) is None  # the first snapshot has no rate
    for _ in range(40):
        hist.observe(0.004)
    hist.observe(0.4)
    responses = {(200, "pod-1"): 130, (200, "pod-2"): 60, (503, ""): 2}
    point = samples.add(12.0, responses, hist.counts)
    assert point.rps == pytest.approx(21.0)  # (30 + 10 + 2) / 2 s
    assert point.errors == pytest.approx(1.0)
    assert point.pod_rps == {"pod-1": 15.0, "pod-2": 5.0}
    assert 2.5 < point.p50_ms < 5.0 and 250 < point.p99_ms <= 500
    assert samples.pod_rps("pod-3") == 0.0
    # No traffic: zero rate, and no latency rather than a made-up one.
    quiet = samples.add(13.0, responses, hist.counts)
    assert quiet.rps == 0 and quiet.p50_ms is None
    series = samples.series()
    assert series["rps"] == [21.0, 0.0] and series["p50_ms"][1] is None


def test_the_ring_keeps_only_its_window():
    samples = ServiceSamples(LATENCY_BUCKETS, window_s=3)
    for second in range(10):
        samples.add(float(second), {(200, "p"): second * 5}, [0] * (len(LATENCY_BUCKETS) + 1))
    assert len(samples.points) == 3 and samples.series()["t"] == [7.0, 8.0, 9.0]
    assert samples.recent("rps", 3) == pytest.approx(5.0)


def test_the_page_is_self_contained():
    """No CDN, no external script, style, font or image: the page works with no network."""
    import re

    from katyusha.dashboard import page

    html = page().decode()
    assert "<script src" not in html and "<link rel=\"stylesheet\"" not in html
    assert not re.search(r"""(src|href)=["'](https?:)?//""", html)
    assert "@import" not in html and "url(http" not in html
