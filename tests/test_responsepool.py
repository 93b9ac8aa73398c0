"""The response pool (outoushuugou): per pod / node / fleet statistics over a bounded window."""

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from katyusha.core.errors import ConfigError
from katyusha.core.responsepool import METRICS, ResponsePool, _clean, describe, quantile


def rec(pool, pod, node, now, value, status=200, **over):
    timings = dict(l1_wait_ms=value, l2_wait_ms=value / 2, app_ms=value * 2, latency_ms=value * 4)
    timings.update(over)
    pool.record(pod, node, now, status=status, **timings)


def test_quantiles_per_pod_and_node():
    pool = ResponsePool(window_s=60.0)
    for i in range(1, 101):
        rec(pool, "a", "n1", 1.0, float(i))
    for _ in range(10):
        rec(pool, "b", "n1", 1.0, 1000.0, status=503)
    summary = json.loads(json.dumps(pool.summary(2.0)))
    a = summary["pods"]["a"]
    assert a["count"] == 100 and a["errors"] == 0
    assert a["l1_wait_ms"]["mean"] == pytest.approx(50.5)
    assert a["l1_wait_ms"]["p50"] == pytest.approx(50.5)
    assert a["l1_wait_ms"]["p99"] == pytest.approx(99.01)
    assert a["app_ms"]["p50"] == pytest.approx(101.0)
    assert a["latency_ms"]["p99"] == pytest.approx(396.04)
    node = summary["nodes"]["n1"]
    assert node["count"] == 110 and node["errors"] == 10
    assert node["l1_wait_ms"]["p99"] == pytest.approx(1000.0)
    assert summary["fleet"]["count"] == 110


def test_missing_and_invalid_timings_are_not_counted():
    pool = ResponsePool()
    pool.record("a", "", 0.0, l1_wait_ms=1.0, l2_wait_ms=None, app_ms=None, latency_ms=3.0, status=200)
    pool.record("a", "", 0.0, l1_wait_ms=-1.0, l2_wait_ms=float("nan"), app_ms=None, latency_ms=5.0, status=502)
    stats = pool.summary(0.0)
    a = stats["pods"]["a"]
    assert a["count"] == 2 and a["errors"] == 1
    assert a["l1_wait_ms"]["count"] == 1 and a["latency_ms"]["mean"] == 4.0
    assert a["l2_wait_ms"] == {"count": 0, "mean": None, "p50": None, "p99": None}
    assert stats["nodes"] == {}  # no node known


def test_window_is_time_bounded():
    pool = ResponsePool(window_s=10.0)
    rec(pool, "old", "n1", 0.0, 1000.0)
    rec(pool, "a", "n1", 5.0, 1.0)
    rec(pool, "a", "n1", 12.0, 3.0)
    summary = pool.summary(14.0)
    assert summary["pods"]["a"]["count"] == 2
    assert "old" not in summary["pods"]  # no sample in the window: dropped
    assert summary["nodes"]["n1"]["l1_wait_ms"]["mean"] == pytest.approx(2.0)
    assert pool.summary(30.0)["pods"] == {}
    assert pool.summary(30.0)["fleet"]["count"] == 0


def test_window_is_memory_bounded():
    pool = ResponsePool(window_s=1e6, capacity=100, max_keys=3)
    for i in range(1000):
        rec(pool, "a", "n1", float(i), float(i))
    stats = pool.summary(1000.0)["pods"]["a"]
    assert stats["count"] == 100
    assert stats["l1_wait_ms"]["p50"] == pytest.approx(949.5)  # only the newest 100 kept
    for i, pod in enumerate(["b", "c", "d", "e"]):
        rec(pool, pod, "n1", 2000.0 + i, 1.0)
    assert set(pool.summary(2010.0)["pods"]) == {"c", "d", "e"}


def test_memory_stays_flat_and_figures_stay_the_same_past_the_window():
    # 4 pods on 2 nodes, 20 responses a second for 1,000 s, a 10 s window: the rings
    # could hold 1,024 samples a key, but only the last 10 s can count in a summary.
    pool = ResponsePool(window_s=10.0)
    reference = _OneAtATime(10.0, 1024, 4096)
    held = []
    for step in range(20_000):
        now = step / 20.0
        pod = f"p{step % 4}"
        for target in (pool, reference):
            rec(target, pod, f"n{step % 2}", now, float(step % 97))
        if step % 2_000 == 1_999:
            assert json.dumps(pool.summary(now)) == json.dumps(reference.summary(now))
            held.append(sum(ring.size for rings in (pool._pods, pool._nodes) for ring in rings.values())
                        + pool._fleet.size)
    # After a summary the pool holds the 201 samples of the last 10 s (both ends in), each in
    # its pod's, its node's and the fleet's ring: not up to 1,024 a ring (7,168 here).
    assert held == [3 * 201] * 10


@pytest.mark.parametrize("capacity", [1024, 5])
def test_a_large_fleet_answers_as_one_sample_at_a_time(capacity):
    # 300 pods on 60 nodes: a batch of responses touches nearly as many rings as it has
    # samples (each then written one at a time rather than sorted into groups); with a
    # capacity of 5 every pod's and node's ring overflows and drops its oldest.
    pool = ResponsePool(window_s=50.0, capacity=capacity)
    reference = _OneAtATime(50.0, capacity, 4096)
    for step in range(6_000):
        now = step / 100.0
        pod = (step * 7919) % 300
        for target in (pool, reference):
            rec(target, f"p{pod}", f"n{pod % 60}", now, float(step % 89))
        if step % 1_000 == 999:
            assert json.dumps(pool.summary(now)) == json.dumps(reference.summary(now))
    assert json.dumps(pool.summary(60.0)) == json.dumps(reference.summary(60.0))


def test_quantile_interpolates():
    assert quantile([1.0], 0.99) == 1.0
    assert quantile([0.0, 10.0], 0.5) == 5.0
    assert quantile([0.0, 10.0, 20.0], 0.99) == pytest.approx(19.8)


def test_bad_settings_raise_config_error():
    for kwargs, key in (({"window_s": 0}, "window_s"), ({"capacity": 0}, "capacity"), ({"max_keys": -1}, "max_keys")):
        with pytest.raises(ConfigError) as err:
            ResponsePool(**kwargs)
        assert err.value.key == key


class _OneAtATime:
    """The pool as it was written before samples were put aside: each response checked and
    written to its rings at once (reference for the batched pool)."""

    def __init__(self, window_s: float, capacity: int, max_keys: int):
        self.window_s, self.capacity, self.max_keys = window_s, capacity, max_keys
        self.pods: dict = {}
        self.nodes: dict = {}
        self.fleet = ([], [-float("inf")])

    def _ring(self, rings: dict, key: str):
        if key not in rings:
            if len(rings) >= self.max_keys:
                del rings[min(rings, key=lambda k: rings[k][1][0])]
            rings[key] = ([], [-float("inf")])
        return rings[key]

    def record(self, pod, node, now, *, l1_wait_ms, l2_wait_ms, app_ms, latency_ms, status):
        clean = [_clean(v) for v in (l1_wait_ms, l2_wait_ms, app_ms, latency_ms)]
        sample = (now, *clean, status)
        rings = [self.fleet, self._ring(self.pods, pod)]
        if node:
            rings.append(self._ring(self.nodes, node))
        for samples, last in rings:
            samples.append(sample)
            del samples[:-self.capacity]
            last[0] = max(last[0], now)

    def summary(self, now: float) -> dict:
        since = now - self.window_s

        def stats(samples):
            live = [s for s in samples if s[0] >= since]
            out = {"count": len(live), "errors": sum(1 for s in live if s[5] >= 500)}
            for index, metric in enumerate(METRICS, start=1):
                out[metric] = describe([s[index] for s in live if s[index] is not None])
            return out

        result = {"window_s": float(self.window_s), "fleet": stats(self.fleet[0])}
        for label, rings in (("pods", self.pods), ("nodes", self.nodes)):
            out = {}
            for key in list(rings):
                got = stats(rings[key][0])
                if got["count"]:
                    out[key] = got
                else:
                    del rings[key]
            result[label] = out
        return result


_TIMING = st.one_of(st.none(), st.floats(-5, 500), st.integers(-5, 500), st.just(float("nan")),
                    st.just(float("inf")))


@settings(max_examples=150, deadline=None)
@given(capacity=st.integers(1, 40), max_keys=st.integers(1, 4), steps=st.lists(st.one_of(
    st.tuples(st.sampled_from(["a", "b", "c", "d", "e"]), st.sampled_from(["", "n1", "n2", "n3"]),
              st.floats(0, 5), _TIMING, _TIMING, _TIMING, _TIMING, st.sampled_from([200, 404, 503])),
    st.just("summary")), max_size=300))
def test_batched_pool_answers_as_one_sample_at_a_time(capacity, max_keys, steps):
    pool = ResponsePool(window_s=3.0, capacity=capacity, max_keys=max_keys)
    reference = _OneAtATime(3.0, capacity, max_keys)
    now = 0.0
    for step in steps:
        if step == "summary":
            assert json.dumps(pool.summary(now)) == json.dumps(reference.summary(now))
            continue
        pod, node, advance, l1, l2, app, latency, status = step
        now += advance
        for target in (pool, reference):
            target.record(pod, node, now, l1_wait_ms=l1, l2_wait_ms=l2, app_ms=app, latency_ms=latency,
                          status=status)
    assert pool.recorded_total == sum(1 for step in steps if step != "summary")
    assert json.dumps(pool.summary(now)) == json.dumps(reference.summary(now))
