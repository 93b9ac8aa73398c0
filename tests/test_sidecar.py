"""The sidecar core (nonna's L2 queue and its report), driven on a fake clock: no I/O, no sleeps."""

from __future__ import annotations

import pytest

from katyusha.core.errors import ConfigError, DeadlineExceeded, QueueFull
from katyusha.core.sidecar import LoadAverager, Piggyback, Sidecar


def sidecar(concurrency=1, depth=10, timeout=30.0, now=0.0) -> Sidecar:
    return Sidecar(concurrency=concurrency, queue_depth=depth, timeout_s=timeout, now=now)


def test_slots_pass_to_waiters_in_fifo_order_and_the_queue_has_a_depth():
    core = sidecar(concurrency=1, depth=3)
    first = core.offer(0.0, "first")
    assert first.admitted
    waiting = [core.offer(0.1, name) for name in "abc"]
    assert not any(t.admitted for t in waiting)
    with pytest.raises(QueueFull, match=r"3 requests waiting \(queue depth 3\), 1 in flight"):
        core.offer(0.2)
    order = []
    ticket = first
    for now in (1.0, 2.0, 3.0):
        woken = core.finish(ticket, now)
        assert len(woken) == 1 and woken[0].admitted
        # The slot went straight to the waiter: in flight never dipped.
        assert core.in_flight == 1
        ticket = woken[0]
        order.append(ticket.payload)
    assert order == ["a", "b", "c"]
    assert core.finish(ticket, 4.0) == []
    assert (core.in_flight, core.queue_length) == (0, 0)


def test_newcomer_never_overtakes_a_waiting_request():
    core = sidecar(concurrency=2)
    a, b = core.offer(0.0), core.offer(0.0)
    waiter = core.offer(0.0, "waiter")
    assert core.finish(a, 1.0) == [waiter]
    # The freed slot went to the waiter, so a newcomer finds none.
    assert not core.offer(1.0).admitted
    assert core.in_flight == 2 and b.admitted


def test_client_leaving_keeps_everyone_elses_place_and_slot():
    core = sidecar(concurrency=1)
    running = core.offer(0.0)
    a, b, c = (core.offer(0.0, x) for x in "abc")
    assert core.cancel(b, 0.5) == []  # left while waiting
    assert core.queue_length == 2
    assert core.finish(running, 1.0) == [a]
    # Admitted but gone before it ran: its slot passes on at once.
    assert core.cancel(a, 1.0) == [c]
    assert core.cancel(a, 1.0) == []  # twice changes nothing
    assert core.in_flight == 1 and core.queue_length == 0


def test_unlimited_no_queue_and_bad_settings():
    unlimited = sidecar(concurrency=0, depth=None)
    assert all(unlimited.offer(0.0).admitted for _ in range(1000))
    assert unlimited.next_deadline() is None
    no_queue = sidecar(concurrency=1, depth=0)
    no_queue.offer(0.0)
    with pytest.raises(QueueFull, match="queue full"):
        no_queue.offer(0.0)
    for kwargs, named in (({"concurrency": -1}, "concurrency"), ({"depth": -2}, "queue-depth"),
                          ({"timeout": 0}, "timeout")):
        with pytest.raises(ConfigError, match=named):
            sidecar(**kwargs)


def test_deadlines_are_data_the_driver_times():
    core = sidecar(concurrency=1, timeout=2.0)
    running = core.offer(0.0)
    early = core.offer(0.5, "early")
    late = core.offer(1.0, "late")
    assert core.next_deadline() == 2.5
    assert core.expire(2.4) == []
    assert core.expire(2.5) == [early]
    assert core.next_deadline() == 3.0
    # An expired request never gets a slot later; the next one does.
    assert core.finish(running, 2.6) == [late]
    assert core.next_deadline() is None and core.expire(10.0) == []
    assert "2.000s in the queue" in str(core.expired_error())
    # The budget left for the app's response head is what the queue did not use.
    assert core.start(late, 2.6) == pytest.approx(0.4)
    with pytest.raises(DeadlineExceeded, match="2s timeout"):
        core.start(late, 3.0)


def test_report_leaves_out_the_request_answered_and_times_it():
    core = sidecar(concurrency=2)
    a = core.offer(0.0)
    b = core.offer(0.0)
    c = core.offer(0.25)
    report = core.head(a, 1.0)  # a's response head leaves while b runs and c waits
    assert (report.queue_length, report.in_flight) == (1, 1)
    assert (report.queue_s, report.app_s) == (0.0, 1.0)
    assert core.finish(a, 1.5) == [c]
    report = core.head(c, 1.75)
    assert report.queue_s == pytest.approx(1.25) and report.app_s == pytest.approx(0.25)
    assert (report.queue_length, report.in_flight) == (0, 1)
    # After the slot is given back (an upstream failure) the request is not counted either.
    core.finish(b, 2.0)
    failed = core.report(b, 2.0)
    assert (failed.in_flight, failed.queue_s, failed.app_s) == (1, 0.0, 2.0)
    # Refused at once: waited nothing, never forwarded.
    refused = core.report(None, 2.0)
    assert (refused.queue_s, refused.app_s, refused.in_flight) == (0.0, 0.0, 1)


def test_expired_request_reports_its_wait():
    core = sidecar(concurrency=1, timeout=1.0)
    core.offer(0.0)
    waiter = core.offer(0.2)
    [gone] = core.expire(1.2)
    report = core.report(gone, 1.2)
    assert report.queue_s == pytest.approx(1.0) and report.app_s == 0.0
    assert waiter is gone and report.in_flight == 1


def test_latency_a_new_request_can_expect():
    core = sidecar(concurrency=1, depth=20)
    assert core.latency_ms() is None  # nothing timed yet
    core.latency_alpha = 0.5
    first = core.offer(0.0)
    core.head(first, 0.010)
    core.finish(first, 0.010)
    second = core.offer(1.0)
    core.head(second, 1.030)
    assert core.app_ewma_ms == pytest.approx(20.0)
    # second still executes: a new request waits for it, then runs.
    assert core.latency_ms() == pytest.approx(40.0)
    for _ in range(3):
        core.offer(1.1)
    assert core.latency_ms() == pytest.approx(100.0)  # four ahead of it
    wide = sidecar(concurrency=4, depth=20)
    wide.app_ewma_ms = 20.0
    for _ in range(3):
        wide.offer(0.0)
    assert wide.latency_ms() == pytest.approx(20.0)  # a slot is free
    for _ in range(12):
        wide.offer(0.0)
    assert wide.latency_ms() == pytest.approx(80.0)  # four waves of four
    unlimited = sidecar(concurrency=0, depth=None)
    unlimited.app_ewma_ms = 20.0
    for _ in range(15):
        unlimited.offer(0.0)
    assert unlimited.latency_ms() == pytest.approx(20.0)  # nobody waits


def test_period_averages_follow_the_queue_on_its_clock():
    core = sidecar(concurrency=1, depth=1, now=0.0)
    a = core.offer(0.0)
    b = core.offer(0.0)  # 2 inside, 1 executing, for 1 s
    with pytest.raises(QueueFull):
        core.offer(0.5)  # refused, but it arrived
    core.finish(a, 1.0)  # 1 inside, executing, for 1 s
    core.finish(b, 2.0)  # nothing for 2 s
    stat = core.close_period(4.0)
    assert stat.average_concurrency == pytest.approx(0.75)
    assert stat.average_in_flight == pytest.approx(0.5)
    assert stat.request_count == 3 and stat.requests_per_second == pytest.approx(0.75)
    assert core.stats()["last_period"]["request_count"] == 3
    assert core.close_period(4.0).request_count == 0


def test_load_averager_weights_by_time():
    avg = LoadAverager(now=0.0)
    avg.arrivals += 1
    avg.update(0.0, waiting=1, in_flight=1)  # 2 inside for 1 s
    avg.update(1.0, waiting=0, in_flight=0)  # 0 inside for 1 s
    stat = avg.report(2.0)
    assert stat.average_concurrency == pytest.approx(1.0)
    assert stat.average_in_flight == pytest.approx(0.5)


def test_stats_and_drain():
    core = sidecar(concurrency=2, depth=7)
    core.offer(0.0)
    stats = core.stats()
    assert stats["queue_length"] == 0 and stats["in_flight"] == 1
    assert stats["concurrency"] == 2 and stats["queue_depth"] == 7
    assert stats["app_ewma_ms"] is None and stats["latency_ms"] is None
    assert not stats["draining"]
    core.drain()
    assert core.stats()["draining"]


def test_piggyback_headers_keep_the_apps_server_timing_first():
    core = sidecar(concurrency=3)
    ticket = core.offer(0.0)
    core.offer(0.0)
    report = core.head(ticket, 0.1018705)
    writer = Piggyback(3, "pod-a", "node-a")
    upstream = [(b"content-type", b"text/plain"), (b"server-timing", b"db;dur=5")]
    headers = writer.response(report, upstream)
    assert headers == [
        (b"content-type", b"text/plain"),
        (b"server-timing", b"db;dur=5, nonna-queue;dur=0.000, app;dur=101.871"),
        (b"nonna-queue-length", b"0"),
        (b"nonna-in-flight", b"1"),
        (b"nonna-concurrency", b"3"),
        (b"nonna-pod", b"pod-a"),
        (b"nonna-node", b"node-a"),
    ]
    error = dict(writer.error(core.report(None, 0.2)))
    assert error[b"server-timing"] == b"nonna-queue;dur=0.000, app;dur=0.000"
    assert error[b"nonna-in-flight"] == b"2"
