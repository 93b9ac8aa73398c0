"""The load table: membership, readiness cache, counts, reports and their staleness."""

import json
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from katyusha.core.errors import ConfigError
from katyusha.core.feedback import Feedback
from katyusha.core.loadtable import FAILURE_LOAD, LoadTable


def report(queue, in_flight, app_ms=None, concurrency=None):
    return Feedback(queue, in_flight, concurrency, None, app_ms, None, None)


def test_upsert_remove_and_ready_cache():
    table = LoadTable()
    a = table.upsert("a", "http://a")
    table.upsert("b", "http://b", node="n1", ready=False)
    assert [e.name for e in table.pods()] == ["a", "b"]
    ready = table.ready()
    assert ready == [a]
    version = table.version
    assert table.ready() is ready  # cached while nothing changes
    assert table.upsert("a", "http://a2") is a and a.url == "http://a2"
    assert table.version == version and table.ready() is ready

    table.set_ready("b", True)
    assert table.version > version
    assert [e.name for e in table.ready()] == ["a", "b"]
    table.set_ready("nobody", False)  # a pod that already left: no error
    assert table.remove("a") is a
    assert table.remove("a") is None
    assert [e.name for e in table.ready()] == ["b"]


def test_counters_survive_an_update():
    table = LoadTable()
    a = table.upsert("a", "http://a")
    table.on_dispatch(a, 0.0)
    table.upsert("a", "http://a", ready=False)
    assert a.in_flight == 1 and a.requests == 1


def test_dispatch_response_failure_counts():
    table = LoadTable()
    a = table.upsert("a", "http://a")
    for _ in range(3):
        table.on_dispatch(a, 0.0)
    table.on_response(a, 0.1, 0.050, None)
    table.on_failure(a, 0.2)
    assert (a.in_flight, a.requests, a.failures) == (1, 3, 1)
    table.on_failure(a, 0.3)
    table.on_failure(a, 0.3)  # more endings than dispatches never go negative
    assert a.in_flight == 0 and a.consecutive_failures == 3
    table.on_response(a, 0.4, 0.01, None)
    assert a.consecutive_failures == 0


def test_latency_and_app_ewma():
    table = LoadTable(ewma_alpha=0.5, app_alpha=0.25)
    a = table.upsert("a", "http://a")
    table.on_response(a, 0.0, 0.010, report(0, 0, app_ms=8.0))
    assert a.latency_ewma_ms == pytest.approx(10.0) and a.app_ewma_ms == pytest.approx(8.0)
    table.on_response(a, 0.1, 0.030, report(0, 0, app_ms=4.0))
    assert a.latency_ewma_ms == pytest.approx(20.0) and a.app_ewma_ms == pytest.approx(7.0)
    table.on_response(a, 0.2, 0.030, None)  # no report: app estimate kept
    assert a.app_ewma_ms == pytest.approx(7.0)


def test_an_app_time_reported_after_a_silence_weighs_by_the_time_since_the_last():
    table = LoadTable(app_alpha=0.15)  # app_memory_s: 1 s by default
    a = table.upsert("a", "http://a")
    table.on_response(a, 0.0, 0.080, report(0, 0, app_ms=80.0))
    table.on_response(a, 0.05, 0.080, report(0, 0, app_ms=20.0))  # 50 ms later: app_alpha
    assert a.app_ewma_ms == pytest.approx(80.0 - 0.15 * 60.0)
    table.on_response(a, 1.05, 0.020, report(0, 0, app_ms=20.0))  # a second later: 1 - 1/e
    assert a.app_ewma_ms == pytest.approx(71.0 - (1.0 - math.exp(-1.0)) * 51.0)
    seeded = table.upsert("c", "http://c")
    seeded.app_ewma_ms = 80.0  # an estimate set without a report (as tests and tools seed one)
    table.on_response(seeded, 2.0, 0.020, report(0, 0, app_ms=20.0))
    assert seeded.app_ewma_ms == pytest.approx(80.0 - 0.15 * 60.0)
    steady = LoadTable(app_memory_s=math.inf)  # every report app_alpha, whatever the silence
    b = steady.upsert("b", "http://b")
    steady.on_response(b, 0.0, 0.080, report(0, 0, app_ms=80.0))
    steady.on_response(b, 10.0, 0.020, report(0, 0, app_ms=20.0))
    assert b.app_ewma_ms == pytest.approx(80.0 - 0.15 * 60.0)


def test_app_estimate_damps_noise_yet_follows_a_change_of_speed():
    import random

    rng = random.Random(3)
    table = LoadTable()
    a = table.upsert("a", "http://a")
    now = 0.0
    seen = []
    for _ in range(400):  # exponential app times, mean 20 ms
        now += 0.02
        table.on_response(a, now, 0.02, report(0, 0, app_ms=rng.expovariate(1 / 20.0)))
        seen.append(a.app_ewma_ms)
    steady = sorted(seen[50:])
    # Almost always within a factor of two of the mean, so pods of equal
    # speed are not told apart by luck.
    assert steady[len(steady) // 100] > 9.0 and steady[-len(steady) // 100] < 40.0
    # The pod turns four times slower: within a few responses it is seen as
    # more than twice as slow.
    for _ in range(6):
        now += 0.08
        table.on_response(a, now, 0.08, report(0, 0, app_ms=80.0))
    assert a.app_ewma_ms > 45.0


def test_recent_failures_raise_the_estimate_for_a_while():
    table = LoadTable(failure_hold_s=1.0)
    a = table.upsert("a", "http://a")
    table.on_dispatch(a, 0.0)
    table.on_failure(a, 0.0)
    table.on_dispatch(a, 0.1)
    table.on_failure(a, 0.1)
    assert table.estimated_load(a, 0.2) == 2 * FAILURE_LOAD  # answers at once, yet is no idle pod
    assert table.estimated_load(a, 1.2) == 0  # a second on, it is tried again
    table.on_dispatch(a, 1.3)
    table.on_response(a, 1.4, 0.01, report(0, 0))
    assert table.estimated_load(a, 1.4) == 0 and a.consecutive_failures == 0


def test_estimate_uses_fresh_report_plus_later_dispatches():
    table = LoadTable(stale_after_s=2.0)
    a = table.upsert("a", "http://a")
    assert table.estimated_load(a, 0.0) == 0
    table.on_dispatch(a, 0.0)
    table.on_dispatch(a, 0.0)
    # The pod reports 5 queued + 3 running (our other request among them).
    table.on_response(a, 1.0, 0.1, report(5, 3))
    assert a.in_flight == 1 and a.dispatched_since_report == 0
    assert table.estimated_load(a, 1.0) == 8  # our in-flight one is in the report, not added twice
    table.on_dispatch(a, 1.5)
    table.on_dispatch(a, 1.5)
    assert table.estimated_load(a, 1.5) == 10


def test_estimate_never_below_own_in_flight():
    table = LoadTable()
    a = table.upsert("a", "http://a")
    for _ in range(6):
        table.on_dispatch(a, 0.0)
    table.on_response(a, 0.1, 0.01, report(0, 1))  # the pod had not seen the others yet
    assert table.estimated_load(a, 0.1) == a.in_flight == 5


def test_old_report_ages_out_to_local_counts():
    table = LoadTable(stale_after_s=2.0)
    a = table.upsert("a", "http://a")
    table.on_dispatch(a, 0.0)
    table.on_dispatch(a, 0.0)
    table.on_response(a, 0.0, 0.01, report(40, 10))
    assert table.estimated_load(a, 1.9) == 50
    assert table.is_fresh(a, 2.0)
    assert not table.is_fresh(a, 2.01)
    assert table.estimated_load(a, 2.5) == a.in_flight == 1


# A pod's life as steps: ("d", dt) a dispatch, ("r", dt, queue, in_flight) a response with a
# report, ("n", dt) a response without one, ("f", dt) a failure.
_STEPS = st.lists(st.one_of(
    st.tuples(st.just("d"), st.floats(0, 1.5)),
    st.tuples(st.just("r"), st.floats(0, 1.5), st.integers(0, 30), st.integers(0, 10)),
    st.tuples(st.just("n"), st.floats(0, 1.5)),
    st.tuples(st.just("f"), st.floats(0, 1.5)),
), max_size=40)


@given(_STEPS, st.floats(0, 3))
def test_estimate_is_the_report_or_own_in_flight_whichever_is_more(steps, wait):
    """estimated_load works out reported_load's sum itself (on the hot path): both say the same."""
    table = LoadTable(stale_after_s=2.0, failure_hold_s=0.5)
    a = table.upsert("a", "http://a")
    now = 0.0
    for step in steps:
        now += step[1]
        if step[0] == "d":
            table.on_dispatch(a, now)
        elif step[0] == "r":
            table.on_response(a, now, 0.01, report(step[2], step[3]))
        elif step[0] == "n":
            table.on_response(a, now, 0.01, None)
        else:
            table.on_failure(a, now)
    now += wait
    reported = table.reported_load(a, now)
    expected = a.in_flight if reported is None else max(reported, a.in_flight)
    if a.consecutive_failures and now - a.failed_at < table.failure_hold_s:
        expected += min(a.consecutive_failures, 8) * FAILURE_LOAD
    assert table.estimated_load(a, now) == expected


def test_snapshot_is_json():
    table = LoadTable()
    a = table.upsert("a", "http://a", node="n1")
    table.on_dispatch(a, 0.0)
    table.on_response(a, 0.5, 0.02, report(2, 1, app_ms=3.0, concurrency=4))
    rows = json.loads(json.dumps(table.snapshot(1.0)))
    assert rows[0]["name"] == "a" and rows[0]["node"] == "n1"
    assert rows[0]["estimated_load"] == 3 and rows[0]["report_fresh"] is True
    assert rows[0]["report_age_s"] == pytest.approx(0.5)
    assert rows[0]["reported_concurrency"] == 4


@pytest.mark.parametrize(
    "kwargs, key",
    [({"stale_after_s": 0}, "stale_after_s"), ({"stale_after_s": float("nan")}, "stale_after_s"),
     ({"ewma_alpha": 0}, "ewma_alpha"), ({"ewma_alpha": 1.5}, "ewma_alpha"), ({"ewma_alpha": "x"}, "ewma_alpha"),
     ({"failure_hold_s": -1}, "failure_hold_s"), ({"app_alpha": 0}, "app_alpha"),
     ({"app_memory_s": 0}, "app_memory_s"), ({"app_memory_s": "x"}, "app_memory_s")],
)
def test_bad_settings_name_the_key(kwargs, key):
    with pytest.raises(ConfigError) as err:
        LoadTable(**kwargs)
    assert err.value.key == key and key in str(err.value)


def test_timed_is_the_ready_pods_with_a_recent_speed_whatever_happened():
    # jsq-piggyback's median speed reads timed() instead of visiting every ready pod: it must be
    # exactly the ready pods whose speed is at most SPEED_MEMORY_S old, through joins, leaves,
    # readiness flips, samples, and a clock that goes back.
    import random

    from katyusha.core.loadtable import SPEED_MEMORY_S

    rng = random.Random(3)
    table = LoadTable()
    now = 0.0
    removed = []
    for step in range(3000):
        now = max(0.0, now + rng.choice((0.01, 0.3, 1.0, 4.0, -2.0 if step % 97 == 0 else 0.5)))
        name = f"p{rng.randrange(40)}"
        action = rng.random()
        entry = table.get(name)
        if removed and action < 0.05:
            # A removed pod's requests still in flight answer (alone, so with a speed).
            table.record_response(rng.choice(removed), now, 0.01, None, alone=True)
        elif entry is None or action < 0.1:
            table.upsert(name, f"http://{name}", ready=rng.random() < 0.9)
        elif action < 0.15:
            removed.append(table.remove(name))
        elif action < 0.2:
            table.set_ready(name, not entry.ready)
        else:
            table.on_dispatch(entry, now)
            table.record_response(entry, now, rng.uniform(0.001, 0.1), None, alone=rng.random() < 0.3)
            table.on_end(entry)
        expected = {e.name for e in table.ready()
                    if e.idle_latency_ms is not None and now - e.idle_latency_at <= SPEED_MEMORY_S}
        timed = table.timed(now)
        assert len(timed) == len(expected) and {e.name for e in timed} == expected, step
