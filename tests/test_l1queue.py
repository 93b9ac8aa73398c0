"""The L1 queue (junbanmachi): limit, order, priorities, overflow, deadlines, cancel, hold."""

import random

import pytest

from katyusha.core.errors import BadInput, ConfigError, QueueFull
from katyusha.core.queue import L1Queue, parse_priority


def fill(queue, count, now=0.0, **kw):
    return [queue.offer(i, now, **kw) for i in range(count)]


def test_limit_admits_that_many_then_queues():
    q = L1Queue(limit=2)
    a, b, c = fill(q, 3)
    assert a.admitted and b.admitted and not c.admitted
    assert (q.active, q.waiting) == (2, 1)
    assert q.release(a, 1.0) == [c]
    assert c.admitted and c.admitted_at == 1.0
    assert (q.active, q.waiting, q.admitted_total) == (2, 0, 3)


def test_fifo_order_within_a_class():
    q = L1Queue(limit=1)
    first, *rest = fill(q, 6)
    order = []
    current = first
    for step in range(5):
        (current,) = q.release(current, float(step))
        order.append(current.payload)
    assert order == [1, 2, 3, 4, 5]


def test_higher_priority_goes_first_fifo_within():
    q = L1Queue(limit=1, priority_classes=3)
    running = q.offer("run", 0.0)
    q.offer("low1", 0.0, priority=0)
    q.offer("high1", 0.0, priority=2)
    q.offer("mid", 0.0, priority=1)
    q.offer("high2", 0.0, priority=2)
    q.offer("low2", 0.0, priority=0)
    order = []
    current = running
    while q.waiting:
        (current,) = q.release(current, 1.0)
        order.append(current.payload)
    assert order == ["high1", "high2", "mid", "low1", "low2"]


def test_new_arrival_does_not_jump_waiting_tickets():
    q = L1Queue(limit=1)
    a = q.offer("a", 0.0)
    q.hold()
    b = q.offer("b", 0.0)
    q.unhold(0.0)
    assert not b.admitted  # the slot is still a's
    q.release(a, 0.1)
    assert b.admitted


def test_full_queue_rejects():
    q = L1Queue(limit=1, max_length=2)
    fill(q, 3)
    with pytest.raises(QueueFull) as err:
        q.offer("x", 0.0)
    assert err.value.status_hint == 503 and "2" in str(err.value)
    assert q.rejected_total == 1 and q.waiting == 2


def test_deadline_expiry_and_next_deadline():
    q = L1Queue(limit=1, default_timeout_s=10.0)
    q.offer("run", 0.0)
    late = q.offer("late", 0.0)
    soon = q.offer("soon", 1.0, timeout_s=2.0)
    assert q.next_deadline() == 3.0
    assert q.expire(2.9) == []
    assert q.expire(3.0) == [soon] and soon.state == "expired"
    assert q.next_deadline() == 10.0
    assert q.expire(100.0) == [late]
    assert q.next_deadline() is None
    assert (q.waiting, q.expired_total) == (0, 2)


def test_expired_and_cancelled_tickets_are_never_admitted():
    q = L1Queue(limit=1)
    run = q.offer("run", 0.0)
    gone = q.offer("gone", 0.0, timeout_s=1.0)
    left = q.offer("left", 0.0)
    stays = q.offer("stays", 0.0)
    q.expire(5.0)  # "gone" expired; the others have the default 30 s
    assert q.cancel(left) == []
    assert q.release(run, 6.0) == [stays]
    assert not gone.admitted and not left.admitted


def test_cancel_and_release_free_a_slot_only_once():
    q = L1Queue(limit=2)
    a, b, c, d = fill(q, 4)
    assert q.cancel(a) == [c]
    assert q.cancel(a) == [] and q.release(a, 1.0) == []
    assert q.release(b, 1.0) == [d]
    assert q.release(b, 1.0) == [] and q.cancel(b) == []
    assert q.active == 2
    q.release(c, 2.0)
    q.release(d, 2.0)
    assert q.active == 0 and q.waiting == 0


def test_hold_queues_everything_until_unhold():
    q = L1Queue(limit=2)
    q.hold()
    tickets = fill(q, 3)
    assert not any(t.admitted for t in tickets) and q.held
    assert q.unhold(1.0) == tickets[:2]
    assert not q.held and q.waiting == 1


def test_unlimited_mode_admits_all_but_still_holds():
    q = L1Queue(limit=None, max_length=5)
    assert all(t.admitted for t in fill(q, 500))
    q.hold()
    waiting = fill(q, 5)
    with pytest.raises(QueueFull):
        q.offer("x", 0.0)
    assert q.unhold(1.0) == waiting


def test_set_limit_raises_admission():
    q = L1Queue(limit=1)
    _, b, c = fill(q, 3)
    assert q.set_limit(3, 1.0) == [b, c]
    with pytest.raises(ConfigError):
        q.set_limit(0, 1.0)


@pytest.mark.parametrize(
    "kwargs, key",
    [({"limit": 0}, "limit"), ({"limit": -3}, "limit"), ({"limit": 1.5}, "limit"), ({"limit": True}, "limit"),
     ({"limit": 1, "max_length": -1}, "max_length"), ({"limit": 1, "default_timeout_s": 0}, "default_timeout_s"),
     ({"limit": 1, "priority_classes": 0}, "priority_classes")],
)
def test_bad_settings_raise_config_error(kwargs, key):
    with pytest.raises(ConfigError) as err:
        L1Queue(**kwargs)
    assert err.value.key == key


def test_bad_offer_arguments_are_bad_input_and_change_nothing():
    q = L1Queue(limit=1, priority_classes=2)
    for kwargs in ({"priority": 2}, {"priority": -1}, {"priority": 1.0}, {"timeout_s": 0}, {"timeout_s": float("nan")}):
        with pytest.raises(BadInput):
            q.offer("x", 0.0, **kwargs)
    assert (q.active, q.waiting) == (0, 0)
    assert q.offer("ok", 0.0).admitted


def test_requeue_puts_an_admitted_ticket_first_in_line_with_its_deadline():
    q = L1Queue(limit=2, default_timeout_s=5.0)
    a, b = fill(q, 2)
    c = q.offer("c", 1.0)
    q.hold()
    q.requeue(b, 2.0)
    assert b.waiting and (q.active, q.waiting) == (1, 2)
    q.requeue(b, 2.0)  # holds no slot: nothing changes
    assert (q.active, q.waiting, q.admitted_total) == (1, 2, 1)
    assert q.next_deadline() == 5.0
    assert q.unhold(3.0) == [b]  # ahead of c, which waited longer in the queue
    assert q.release(a, 3.5) == [c]
    # A requeued ticket expires once, at its own deadline.
    q.hold()
    q.requeue(b, 4.0)
    assert q.expire(4.9) == [] and q.expire(5.0) == [b] and q.expire(9.0) == []
    assert q.next_deadline() is None and q.waiting == 0 and q.expired_total == 1


def test_priority_header_values():
    assert parse_priority(b"1", "x-priority", 2) == 1
    assert parse_priority(b" 0 ", "x-priority", 3) == 0
    for bad in (b"2", b"-1", b"high", b"", b"1.0", b"+1", b"01234"):
        with pytest.raises(BadInput, match="x-priority: must be an integer from 0 to 1"):
            parse_priority(bad, "x-priority", 2)


def test_random_workload_keeps_invariants_and_bounded_memory():
    rng = random.Random(7)
    q = L1Queue(limit=3, max_length=50, priority_classes=2, default_timeout_s=5.0)
    live = []  # admitted tickets
    waiting = []
    now = 0.0
    for _ in range(20_000):
        now += rng.random() * 0.01
        roll = rng.random()
        if roll < 0.45:
            try:
                t = q.offer(None, now, priority=rng.randrange(2))
            except QueueFull:
                continue
            (live if t.admitted else waiting).append(t)
        elif roll < 0.75 and live:
            live.extend(q.release(live.pop(rng.randrange(len(live))), now))
        elif roll < 0.9 and waiting:
            live.extend(q.cancel(waiting.pop(rng.randrange(len(waiting)))))
        else:
            q.expire(now)
        waiting = [t for t in waiting if t.waiting]
        assert q.active == len(live) <= 3
        assert q.waiting == len(waiting) <= 50
    assert len(q._deadlines) <= 2 * 50 + 200
    assert sum(len(f) for f in q._classes) <= 2 * 50 + 200
