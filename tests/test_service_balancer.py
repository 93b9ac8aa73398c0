"""The service balancer (katyusha.core.service) driven on a fake clock: a request's whole life, counted."""

from __future__ import annotations

import random

import pytest

from katyusha.core.errors import BadInput, DeadlineExceeded, NoReadyPod, QueueFull
from katyusha.core.feedback import Feedback
from katyusha.core.membership import PodChange, PodSpec
from katyusha.core.service import ServiceBalancer, ServiceSettings


class Balancer(ServiceBalancer):
    """A service balancer that lists the pods whose drain ended (``on_idle``) in ``idle``."""

    __slots__ = ("idle",)


def service(**settings) -> Balancer:
    # The counts below are in slots of concurrency: no extra slot unless a test asks for one
    # (the default, 1, is test_the_default_capacity_is_the_concurrency_and_one_more below).
    settings.setdefault("capacity_extra", 0)
    idle: list = []
    balancer = Balancer(ServiceSettings(**settings), rng=random.Random(7), on_idle=idle.append)
    balancer.idle = idle
    return balancer


def pod(name: str, concurrency: int | None = None) -> PodSpec:
    return PodSpec(name, f"http://127.0.0.1:{9000 + int(name[-1])}", "node-1", None, concurrency)


def report(queue: int = 0, in_flight: int = 1, concurrency: int | None = None) -> Feedback:
    return Feedback(queue, in_flight, concurrency, 0.1, 5.0, None, None)


def counts(balancer: ServiceBalancer) -> dict:
    q = balancer.queue
    return {
        "waiting": q.waiting,
        "active": q.active,
        "held": q.held,
        "limit": q.limit,
        "ready": len(balancer.table.ready()),
        "in_flight": {e.name: e.in_flight for e in balancer.table.pods()},
        "caps": {e.name: c for e, c in balancer.capacity.caps.items()},
        "full": sorted(e.name for e in balancer.capacity.full),
    }


def test_a_request_s_whole_life_queued_admitted_dispatched_head_done():
    s = service(request_timeout=10.0)
    # No pod yet: the queue is held and the request waits.
    ticket = s.offer(0.0)
    assert not ticket.admitted and s.needs_pods
    assert counts(s) == {"waiting": 1, "active": 0, "held": True, "limit": 1000, "ready": 0,
                         "in_flight": {}, "caps": {}, "full": []}
    assert s.next_deadline() == 10.0
    # A pod with concurrency 1 joins: the change admits the ticket and lowers the limit.
    result = s.change_pods(PodChange(upsert=(pod("pod-0", 1),)), 1.0)
    assert result.admitted == [ticket] and ticket.admitted and ticket.l1_wait == 1.0
    assert counts(s) == {"waiting": 0, "active": 1, "held": False, "limit": 1, "ready": 1,
                         "in_flight": {"pod-0": 0}, "caps": {"pod-0": 1}, "full": []}
    assert s.next_deadline() is None
    # A second request waits: the pod's one slot is the L1 limit.
    second = s.offer(1.0)
    assert not second.admitted and counts(s)["waiting"] == 1
    handle = s.dispatch(ticket, 1.5)
    assert handle.entry.name == "pod-0"
    assert counts(s)["in_flight"] == {"pod-0": 1} and counts(s)["full"] == ["pod-0"]
    # The head: recorded once, the request still counted (its body streams).
    assert handle.on_head(1.6, report(), 200) == pytest.approx(0.1)
    handle.on_head(1.7, report(), 200)
    entry = s.table.get("pod-0")
    assert entry.requests == 1 and entry.reported_in_flight == 1
    assert counts(s)["in_flight"] == {"pod-0": 1} and counts(s)["active"] == 1
    assert s.pool.recorded_total == 1
    # The end: count and slot released together; the waiting one comes in.
    assert handle.done(2.0) == [second]
    assert counts(s) == {"waiting": 0, "active": 1, "held": False, "limit": 1, "ready": 1,
                         "in_flight": {"pod-0": 0}, "caps": {"pod-0": 1}, "full": []}
    # Calling any of them again counts nothing twice.
    assert handle.done(2.1) == [] and s.end(ticket, 2.1) == []
    assert handle.on_failure(2.1, retryable=True) is False
    assert entry.failures == 0 and counts(s)["active"] == 1 and entry.in_flight == 0
    s.end(second, 2.2)
    assert counts(s)["active"] == 0 and s.queue.admitted_total == 2


def test_a_failed_try_is_retried_on_another_pod_and_counted_once():
    s = service(retries=1)
    s.change_pods(PodChange(upsert=(pod("pod-0"), pod("pod-1"))), 0.0)
    ticket = s.offer(0.0)
    first = s.dispatch(ticket, 0.0)
    assert first.on_failure(0.1, retryable=True) is True
    assert first.entry.in_flight == 0 and first.entry.failures == 1
    second = s.dispatch(ticket, 0.1)
    assert second.entry is not first.entry
    # No tries left: the next failure is final; done after it counts nothing twice.
    assert second.on_failure(0.2, retryable=True) is False
    assert second.entry.in_flight == 0 and second.entry.failures == 1
    assert s.end(ticket, 0.3) == []
    assert second.entry.failures == 1 and s.queue.active == 0


def test_no_retry_when_not_retryable_not_idempotent_or_after_a_head():
    s = service(retries=2, capacity_factor=0)
    s.change_pods(PodChange(upsert=(pod("pod-0"), pod("pod-1"))), 0.0)
    ticket = s.offer(0.0)
    assert s.dispatch(ticket, 0.0).on_failure(0.1, retryable=False) is False
    s.end(ticket, 0.1)
    post = s.offer(0.2, idempotent=False)
    assert s.dispatch(post, 0.2).on_failure(0.3, retryable=True) is False
    s.end(post, 0.3)
    ticket = s.offer(0.4)
    handle = s.dispatch(ticket, 0.4)
    failures = handle.entry.failures
    handle.on_head(0.5, None, 200)
    # A body broken off after the head went out: counted out, no failure, no retry.
    assert handle.on_failure(0.6, retryable=True) is False
    assert handle.entry.failures == failures and handle.entry.in_flight == 0
    s.end(ticket, 0.6)
    assert sum(e.in_flight for e in s.table.pods()) == 0 and s.queue.active == 0


def test_an_end_without_head_is_a_failure_of_the_pod():
    s = service()
    s.change_pods(PodChange(upsert=(pod("pod-0"),)), 0.0)
    ticket = s.offer(0.0)
    handle = s.dispatch(ticket, 0.0)
    s.end(ticket, 0.5)  # e.g. the handler was cancelled mid-try
    assert handle.ended and handle.entry.failures == 1 and handle.entry.in_flight == 0


def test_a_client_leaving_while_queued_gives_its_place_back():
    s = service(l1_limit=1)
    s.change_pods(PodChange(upsert=(pod("pod-0"),)), 0.0)
    running = s.offer(0.0)
    gone, next_one = s.offer(0.0), s.offer(0.0)
    assert s.end(gone, 0.1) == []
    assert (s.queue.waiting, s.queue.cancelled_total) == (1, 1)
    assert s.end(running, 0.2) == [next_one]
    assert s.end(gone, 0.3) == []


def test_admitted_but_the_last_pod_left_waits_again_until_a_pod_joins():
    s = service(request_timeout=5.0)
    s.change_pods(PodChange(upsert=(pod("pod-0"),)), 0.0)
    ticket = s.offer(0.0)
    s.change_pods(PodChange(remove=("pod-0",)), 0.5)
    assert s.dispatch(ticket, 0.5) is None
    assert ticket.waiting and s.queue.held and s.queue.active == 0
    assert s.next_deadline() == 5.0  # its deadline kept, no polling
    assert s.change_pods(PodChange(upsert=(pod("pod-1"),)), 1.0).admitted == [ticket]
    assert s.dispatch(ticket, 1.0).entry.name == "pod-1"
    assert s.queue.admitted_total == 1


def test_offer_dispatch_sends_an_admitted_request_at_once_and_leaves_the_others_waiting():
    s = service(request_timeout=5.0, l1_limit=1)
    # No pod: the queue holds the request; nothing is dispatched.
    first = s.offer_dispatch(0.0)
    assert first.waiting and first.dispatch is None and s.needs_pods
    assert s.change_pods(PodChange(upsert=(pod("pod-0"),)), 1.0).admitted == [first]
    s.end(first, 1.1)
    # A pod with room: admitted and sent, the try's handle on the ticket.
    second = s.offer_dispatch(2.0, idempotent=False)
    handle = second.dispatch
    assert second.admitted and handle.entry.name == "pod-0" and handle.sent_at == 2.0
    assert not second.idempotent and second.tries_left == 2  # the default retries
    assert s.table.get("pod-0").in_flight == 1
    # The L1 limit is taken: the next one waits, undispatched, until the first ends.
    third = s.offer_dispatch(2.5)
    assert third.waiting and third.dispatch is None
    assert s.complete(handle, 3.0, None, 200) == [third]
    assert s.dispatch(third, 3.0).entry.name == "pod-0"
    assert s.queue.admitted_total == 3


def test_a_removed_pod_drains_its_requests_before_it_is_idle():
    s = service(capacity_factor=0)
    s.change_pods(PodChange(upsert=(pod("pod-0"), pod("pod-1"))), 0.0)
    tickets = [s.offer(0.0) for _ in range(4)]
    handles = [s.dispatch(t, 0.0) for t in tickets]
    on_0 = [h for h in handles if h.entry.name == "pod-0"]
    entry = on_0[0].entry
    result = s.change_pods(PodChange(remove=("pod-0", "nope")), 0.1)
    assert result.removed == [entry] and result.unknown == ["nope"]
    assert [e.name for e in s.table.ready()] == ["pod-1"] and s.draining() == [entry]
    # New requests go to pod-1 only; pod-0's finish, then it is idle (once).
    assert s.dispatch(s.offer(0.2), 0.2).entry.name == "pod-1"
    for handle in on_0:
        assert s.idle == []
        handle.on_head(0.3, None, 200)
        handle.done(0.4)
    assert s.idle == [entry] and s.draining() == [] and entry.in_flight == 0


def test_capacity_is_learned_from_reports_and_lowers_the_l1_limit():
    s = service()
    s.change_pods(PodChange(upsert=(pod("pod-0"),)), 0.0)
    # Unproven: one request until its first one ends.
    assert counts(s)["caps"] == {"pod-0": 1} and s.queue.limit == 1
    first, second = s.offer(0.0), s.offer(0.0)
    assert not second.admitted
    handle = s.dispatch(first, 0.0)
    handle.on_head(0.1, report(in_flight=0, concurrency=3), 200)
    assert s.end(first, 0.2) == [second]
    assert counts(s)["caps"] == {"pod-0": 3} and s.queue.limit == 3
    # A pod that reports no concurrency after its first request is not capped.
    s.change_pods(PodChange(upsert=(pod("pod-1"),)), 0.3)
    assert s.queue.limit == 4
    handle = s.dispatch(second, 0.3)
    while handle.entry.name != "pod-1":
        handle.on_head(0.35, report(concurrency=3), 200)
        handle.on_failure(0.35)
        handle = s.dispatch(second, 0.35)
    handle.on_head(0.4, None, 200)
    s.end(second, 0.5)
    assert counts(s)["caps"] == {"pod-0": 3} and s.queue.limit == 1000


def test_the_default_capacity_is_the_concurrency_and_one_more():
    s = ServiceBalancer(ServiceSettings(), rng=random.Random(7))
    s.change_pods(PodChange(upsert=(pod("pod-0", 2), pod("pod-1", 1))), 0.0)
    assert counts(s)["caps"] == {"pod-0": 3, "pod-1": 2} and s.queue.limit == 5
    tickets = [s.offer(0.0) for _ in range(6)]
    assert [t.admitted for t in tickets] == [True] * 5 + [False]
    assert sorted(s.dispatch(t, 0.0).entry.name for t in tickets[:5]) == ["pod-0"] * 3 + ["pod-1"] * 2


def _replica_after_a_report_of_others(share_pods: bool) -> ServiceBalancer:
    """One of several replicas in front of pod-0 and pod-1 (concurrency 4: room 5 each, the
    defaults): its one request to pod-0 comes back with pod-0's report of two other requests
    running there (another replica's)."""
    s = ServiceBalancer(ServiceSettings(share_pods=share_pods), rng=random.Random(7))
    s.change_pods(PodChange(upsert=(pod("pod-0", 4), pod("pod-1", 4))), 0.0)
    ticket = s.offer(0.0)
    handle = s.dispatch(ticket, 0.0, avoid=[s.table.get("pod-1")])
    assert handle.entry.name == "pod-0"
    handle.on_head(0.01, Feedback(0, 2, 4, 0.0, 10.0, "pod-0", None), 200)
    s.end(ticket, 0.01)
    return s


def test_a_replica_counts_other_replicas_requests_at_a_pod_out_of_its_room():
    s = _replica_after_a_report_of_others(share_pods=True)
    assert s.settings.share_pods  # the default
    pod0, pod1 = s.table.get("pod-0"), s.table.get("pod-1")
    row = s.pod_row(pod0, 0.01)
    assert (row["others"], row["room"], row["capacity"]) == (2, 3, 5)
    # pod-0's two cut slots are out of the L1 limit: of nine requests eight go out, three to
    # pod-0, and the ninth waits in L1 for a slot rather than behind the others at pod-0.
    assert s.queue.limit == 8
    tickets = [s.offer(0.02) for _ in range(9)]
    assert [t.admitted for t in tickets] == [True] * 8 + [False]
    sent = [s.dispatch(t, 0.02).entry.name for t in tickets[:8]]
    assert (sent.count("pod-0"), sent.count("pod-1")) == (3, 5)
    # pod-0 answers with the others gone (its report counts our two left there): its room is
    # whole again, the waiting request let in and sent there.
    first = next(t for t in tickets[:8] if t.dispatch.entry is pod0)
    first.dispatch.on_head(0.03, Feedback(0, 2, 4, 0.0, 10.0, "pod-0", None), 200)
    assert s.end(first, 0.03) == [tickets[8]]
    assert s.pod_row(pod0, 0.03)["room"] == 5 and s.queue.limit == 10
    assert s.dispatch(tickets[8], 0.03).entry is pod0
    # However many the others hold, a replica keeps its extra slot and half its slots of
    # concurrency: pod-1's report of ten requests there, four of them ours, cuts its room of 5
    # (4 and the extra) by 2, not 5.
    t = next(t for t in tickets[:8] if t.dispatch.entry is pod1)
    t.dispatch.on_head(0.04, Feedback(6, 4, 4, 0.0, 10.0, "pod-1", None), 200)
    s.end(t, 0.04)
    assert (s.pod_row(pod1, 0.04)["others"], s.pod_row(pod1, 0.04)["room"]) == (6, 3)
    assert s.queue.limit == 8
    # A report older than stale-after cuts nothing: pod-1's next end brings none.
    t = next(t for t in tickets[:8] if t.dispatch is not None and t.dispatch.entry is pod1)
    later = 0.05 + s.settings.stale_after
    t.dispatch.on_head(later, None, 200)
    s.end(t, later)
    assert (s.pod_row(pod1, later)["others"], s.pod_row(pod1, later)["room"]) == (0, 5)


def test_a_pod_of_concurrency_one_keeps_its_room_whatever_others_hold():
    """Its room is its one slot and the extra; the cut takes half the slots of concurrency at
    most (none of one) and never the extra, which hides the round trip between two requests."""
    s = ServiceBalancer(ServiceSettings(), rng=random.Random(7))
    s.change_pods(PodChange(upsert=(pod("pod-0", 1),)), 0.0)
    ticket = s.offer(0.0)
    s.dispatch(ticket, 0.0).on_head(0.01, Feedback(3, 1, 1, 0.0, 10.0, "pod-0", None), 200)
    s.end(ticket, 0.01)
    row = s.pod_row(s.table.get("pod-0"), 0.01)
    assert (row["others"], row["room"], s.queue.limit) == (4, 2, 2)


def test_without_share_pods_a_replica_fills_a_pod_other_replicas_hold():
    s = _replica_after_a_report_of_others(share_pods=False)
    assert s.pod_row(s.table.get("pod-0"), 0.01)["room"] == 5 and s.queue.limit == 10
    tickets = [s.offer(0.02) for _ in range(9)]
    assert all(t.admitted for t in tickets)
    sent = [s.dispatch(t, 0.02).entry.name for t in tickets]
    assert (sent.count("pod-0"), sent.count("pod-1")) == (4, 5)


def test_given_concurrency_times_factor_and_pods_with_room_first():
    s = service(capacity_factor=1.5)
    s.change_pods(PodChange(upsert=(pod("pod-0", 2), pod("pod-1", 1))), 0.0)
    assert counts(s)["caps"] == {"pod-0": 3, "pod-1": 1} and s.queue.limit == 4
    a, b = s.table.get("pod-0"), s.table.get("pod-1")
    # Fill pod-1: every next pick goes to pod-0 while it has room.
    while b.in_flight == 0:
        s.dispatch(s.offer(0.0), 0.0)
    assert {s.dispatch(s.offer(0.0), 0.0).entry.name for _ in range(3 - a.in_flight)} == {"pod-0"}
    assert counts(s)["full"] == ["pod-0", "pod-1"]
    # A concurrency given later stays when an update gives none; 0 is unlimited.
    s.change_pods(PodChange(upsert=(pod("pod-1"), pod("pod-2", 0))), 0.1)
    assert s.specs["pod-1"].concurrency == 1
    assert s.queue.limit == 1000 and s.capacity.caps.get(s.table.get("pod-2")) is None
    off = service(capacity_factor=0)
    off.change_pods(PodChange(upsert=(pod("pod-0", 1),)), 0.0)
    assert off.queue.limit == 1000 and off.capacity.caps == {}
    unlimited = service(l1_limit=None)
    unlimited.change_pods(PodChange(upsert=(pod("pod-0", 1),)), 0.0)
    assert unlimited.queue.limit is None and unlimited.capacity.caps == {}


def test_a_pod_that_failed_is_avoided_even_when_the_others_are_full():
    s = service()
    s.change_pods(PodChange(upsert=(pod("pod-0", 1), pod("pod-1", 3))), 0.0)
    b = s.table.get("pod-1")
    for _ in range(3):
        t = s.offer(0.0)
        h = s.dispatch(t, 0.0)
        while h.entry is not b:
            h.on_failure(0.0)
            h = s.dispatch(t, 0.0, avoid=[s.table.get("pod-0")])
    ticket = s.offer(0.0)
    failed = s.dispatch(ticket, 0.0)
    assert failed.entry.name == "pod-0"
    assert failed.on_failure(0.1, retryable=True)
    assert s.dispatch(ticket, 0.1).entry is b  # full, but the other just failed


@pytest.mark.parametrize("held", [True, False])
def test_expiry_says_why(held):
    s = service(request_timeout=2.0, l1_limit=1)
    if not held:
        s.change_pods(PodChange(upsert=(pod("pod-0"),)), 0.0)
        s.offer(0.0)
    waiting = s.offer(0.5)
    assert s.expire(2.4) == []
    [(ticket, error)] = s.expire(2.5)
    assert ticket is waiting and not ticket.waiting
    if held:
        assert isinstance(error, NoReadyPod) and error.status_hint == 503
        assert str(error) == "no pod was ready within 2s"
    else:
        assert isinstance(error, DeadlineExceeded) and error.status_hint == 504
        assert "(limit 1)" in str(error)
    assert s.end(ticket, 3.0) == [] and s.queue.waiting == 0


def test_full_queue_bad_priority_and_shutdown():
    s = service(queue_length=1, priority_classes=2)
    s.offer(0.0)
    with pytest.raises(QueueFull):
        s.offer(0.0)
    with pytest.raises(BadInput):
        s.offer(0.0, priority=2)
    [(_, error)] = s.fail_waiting("katyusha is shutting down")
    assert isinstance(error, NoReadyPod) and s.queue.waiting == 0


def test_high_priority_is_admitted_before_earlier_low_priority():
    s = service(l1_limit=1, priority_classes=2)
    s.change_pods(PodChange(upsert=(pod("pod-0"),)), 0.0)
    running = s.offer(0.0)
    low = [s.offer(0.1, priority=0) for _ in range(3)]
    high = s.offer(0.2, priority=1)
    assert s.end(running, 0.3) == [high]
    assert s.end(high, 0.4) == [low[0]]


def test_dispatch_misuse_is_refused():
    s = service()
    s.change_pods(PodChange(upsert=(pod("pod-0"),)), 0.0)
    ticket = s.offer(0.0)
    s.dispatch(ticket, 0.0)
    with pytest.raises(ValueError, match="still open"):
        s.dispatch(ticket, 0.0)
    s.end(ticket, 0.1)
    with pytest.raises(ValueError, match="holds no L1 slot"):
        s.dispatch(ticket, 0.1)


def test_the_candidate_list_is_the_table_s_own_while_no_pod_is_full():
    picked = []
    s = service(policy="round-robin")
    s.change_pods(PodChange(upsert=tuple(pod(f"pod-{i}", 1) for i in range(3))), 0.0)
    real = s.policy.pick

    def spy(candidates, now):
        picked.append((candidates is s.table.ready(), [e.name for e in candidates]))
        return real(candidates, now)

    s.policy.pick = spy
    s.dispatch(s.offer(0.0), 0.0).done(0.1)
    assert picked[-1] == (True, ["pod-0", "pod-1", "pod-2"])
    handles = [s.dispatch(s.offer(0.2), 0.2) for _ in range(2)]
    assert [h.entry.name for h in handles] == ["pod-1", "pod-2"]
    assert picked[-1][0] is False and sorted(picked[-1][1]) == ["pod-0", "pod-2"]
    assert s.dispatch(s.offer(0.3), 0.3).entry.name == "pod-0"
    assert picked[-1] == (False, ["pod-0"])


def test_the_pick_trace_keeps_the_last_picks_with_loads():
    s = service(trace_picks=2, capacity_factor=0)
    assert service().trace is None  # off by default: nothing recorded
    s.change_pods(PodChange(upsert=(pod("pod-0"), pod("pod-1"))), 0.0)
    busy = s.dispatch(s.offer(0.0), 0.0).entry
    for now in (1.0, 2.0, 3.0):
        s.dispatch(s.offer(now), now)
    records = s.trace.records(4.0)
    assert [(r["at"], r["age_s"], r["service"]) for r in records] == [(2.0, 2.0, "default"),
                                                                      (3.0, 1.0, "default")]
    first = records[0]
    assert first["load"] == "policy" and first["candidate_count"] == 2
    assert {c["pod"] for c in first["candidates"]} == {"pod-0", "pod-1"}
    assert first["chosen"] in {"pod-0", "pod-1"} and busy.name in {c["pod"] for c in first["candidates"]}


def test_a_policy_that_reports_what_it_compared_is_traced_with_its_own_metric():
    from katyusha.core.loadtable import LoadTable
    from katyusha.core.picktrace import PickTrace

    class Lowest:
        name = "lowest"

        def pick(self, candidates, now, trace=None):
            best = min(candidates, key=lambda e: e.requests)
            if trace is not None:
                trace.extend((e, float(e.requests) * 10) for e in candidates)
            return best

    table = LoadTable()
    a, b = table.upsert("a", "http://a"), table.upsert("b", "http://b")
    a.requests = 3
    trace = PickTrace("svc", 5, Lowest(), table)
    assert trace.pick(table.ready(), 1.0) is b
    [record] = trace.records(1.5)
    assert record["load"] == "policy" and record["policy"] == "lowest"
    assert record["candidates"] == [{"pod": "a", "load": 30.0}, {"pod": "b", "load": 0.0}]
    assert record["chosen"] == "b" and record["service"] == "svc"


def test_an_ended_request_leaves_no_garbage_cycle_for_the_collector():
    # A ticket and its tries point at each other while the request lives; once it
    # ended, dropping the driver's references frees them at once (plain reference
    # counting), so a busy proxy does not feed the cycle collector one per request.
    import gc

    s = service()
    s.change_pods(PodChange(upsert=(pod("pod-0", 2), pod("pod-1", 2))), 0.0)
    gc.collect()
    gc.disable()
    try:
        for at in range(20):
            ticket = s.offer(float(at))
            handle = s.dispatch(ticket, at + 0.1)
            if at % 2:
                s.hedge(ticket, at + 0.2)
            handle.on_head(at + 0.3, report(), 200)
            s.end(ticket, at + 0.4)
        del ticket, handle
        assert gc.collect() == 0
    finally:
        gc.enable()


@pytest.mark.parametrize("policy", ["peak-ewma", "prequal", "jsq-piggyback"])
def test_a_policy_that_learns_hears_every_response_through_the_balancer(policy, monkeypatch):
    # The balancer skips observe() for policies whose observe does nothing; one that learns
    # (peak-ewma's latency estimates, prequal's) must still hear each response.
    s = service(policy=policy)
    s.change_pods(PodChange(upsert=(pod("pod-0", 4),)), 0.0)
    heard = []
    observe = type(s.policy).observe

    def spy(self, entry, now, latency_s, feedback):
        heard.append((entry.name, now, round(latency_s, 6)))
        return observe(self, entry, now, latency_s, feedback)

    monkeypatch.setattr(type(s.policy), "observe", spy)
    for i in range(3):
        ticket = s.offer(float(i))
        handle = s.dispatch(ticket, float(i))
        handle.on_head(i + 0.25, report(), 200)
        handle.done(i + 0.5)
    if s.policy.learns:
        assert heard == [("pod-0", 0.25, 0.25), ("pod-0", 1.25, 0.25), ("pod-0", 2.25, 0.25)]
    else:
        assert policy == "jsq-piggyback" and heard == []
