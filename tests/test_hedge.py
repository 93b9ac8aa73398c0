"""Hedged requests in the core (katyusha.core.hedge, ServiceBalancer.hedge): what is hedged, when, how often."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from katyusha.core.errors import ConfigError
from katyusha.core.hedge import (
    HEDGE_BODY_LIMIT,
    HedgeBudget,
    HedgeSettings,
    LatencySketch,
    is_hedgeable,
)
from katyusha.core.membership import PodChange, PodSpec
from katyusha.core.service import ServiceBalancer, ServiceSettings


def service(pods: int = 3, concurrency: int | None = 4, **hedge) -> ServiceBalancer:
    hedge.setdefault("enabled", True)
    balancer = ServiceBalancer(ServiceSettings(hedge=HedgeSettings(**hedge)), rng=random.Random(3))
    balancer.change_pods(PodChange(upsert=tuple(
        PodSpec(f"pod-{i}", f"http://127.0.0.1:{9000 + i}", "node-1", None, concurrency)
        for i in range(pods))), 0.0)
    return balancer


def in_flight(balancer: ServiceBalancer) -> dict[str, int]:
    return {entry.name: entry.in_flight for entry in balancer.table.pods()}


def test_only_idempotent_requests_without_a_body_or_with_a_small_known_one_are_hedgeable():
    assert is_hedgeable("GET", False) and is_hedgeable("HEAD", False) and is_hedgeable("DELETE", False)
    assert not is_hedgeable("POST", False) and not is_hedgeable("PATCH", False)
    # A body of unknown length (chunked) is never hedged; a known small one is.
    assert not is_hedgeable("GET", True) and not is_hedgeable("PUT", None)
    assert is_hedgeable("PUT", 1024) and is_hedgeable("PUT", HEDGE_BODY_LIMIT)
    assert not is_hedgeable("PUT", HEDGE_BODY_LIMIT + 1) and not is_hedgeable("POST", 10)


def test_the_delay_is_the_set_time_or_the_recent_p95_once_known():
    assert service(enabled=False).hedge_delay("GET", False) is None
    s = service(delay=0.05, budget=1.0)
    s.offer(0.0)  # earns the budget's first token
    assert s.hedge_delay("GET", False) == 0.05
    assert s.hedge_delay("POST", False) is None
    auto = service(min_samples=10, window=100, budget=1.0)
    auto.offer(0.0)
    assert auto.hedge_delay("GET", False) is None  # nothing seen yet: no hedge
    for i in range(100):
        auto.hedger.observe((i + 1) / 1000.0)  # 1..100 ms
    # Recomputed every window // 8 samples: the p95 of (nearly) the last 100.
    assert 0.085 <= auto.hedge_delay("GET", False) <= 0.095


@given(st.lists(st.floats(0.0, 10.0), min_size=1, max_size=600))
def test_the_sketch_s_quantile_is_one_of_the_recent_samples_at_or_above_most(samples):
    sketch = LatencySketch(0.95, window=64, min_samples=1)
    for x in samples:
        sketch.add(x)
    # Recomputed every window // 8 samples: the value is a p95 of a recent window.
    assert sketch.value is not None and min(samples) <= sketch.value <= max(samples)


@given(st.floats(0.001, 0.5), st.integers(1, 5000))
@settings(max_examples=50)
def test_the_budget_caps_hedges_at_its_share_plus_the_burst(ratio, requests):
    budget = HedgeBudget(ratio, burst=100.0)
    taken = 0
    for _ in range(requests):
        budget.on_request()
        taken += budget.take()  # every request wants a hedge
    assert taken <= ratio * requests + 1e-9
    # With a bucket of one token, the part of a request's share past a full bucket is lost.
    assert taken >= requests // (math.ceil(1.0 / ratio) + 1) - 1


def test_bad_settings_name_the_key():
    with pytest.raises(ConfigError, match="hedge-budget"):
        HedgeSettings(budget=1.5)
    with pytest.raises(ConfigError, match="hedge-delay"):
        HedgeSettings(delay=-1.0)


def test_a_hedge_goes_to_another_pod_and_the_first_head_wins_counts_exact():
    s = service(delay=0.01, budget=1.0)
    ticket = s.offer(0.0)
    first = s.dispatch(ticket, 0.0)
    hedge = s.hedge(ticket, 0.02)
    assert hedge is not None and hedge.entry is not first.entry
    assert sum(in_flight(s).values()) == 2
    # One hedge per request.
    assert s.hedge(ticket, 0.03) is None
    # The hedge answers first: it is the request's try; the driver abandons the other.
    hedge.on_head(0.04, None, 200)
    first.abandon(0.04)
    assert ticket.dispatch is hedge and s.hedger.won == 1 and s.hedger.sent == 1
    assert in_flight(s)[first.entry.name] == 0
    s.end(ticket, 0.05)
    assert sum(in_flight(s).values()) == 0 and s.queue.active == 0


def test_when_the_first_try_answers_the_hedge_is_abandoned_and_not_counted_won():
    s = service(delay=0.01, budget=1.0)
    ticket = s.offer(0.0)
    first = s.dispatch(ticket, 0.0)
    hedge = s.hedge(ticket, 0.02)
    first.on_head(0.03, None, 200)
    hedge.abandon(0.03)
    s.end(ticket, 0.04)
    assert s.hedger.won == 0 and sum(in_flight(s).values()) == 0


def test_a_failure_beside_a_running_hedge_is_not_retried_and_end_counts_both_out():
    s = service(delay=0.01, budget=1.0)
    ticket = s.offer(0.0)
    first = s.dispatch(ticket, 0.0)
    hedge = s.hedge(ticket, 0.02)
    assert first.on_failure(0.03, True) is False  # the hedge carries on
    assert sum(in_flight(s).values()) == 1
    # The hedge fails too: now a retry may go elsewhere.
    assert hedge.on_failure(0.04, True) is True
    third = s.dispatch(ticket, 0.05)
    assert third is not None and ticket.hedge is None
    # The retry avoids both pods the pair failed on.
    assert third.entry is not first.entry and third.entry is not hedge.entry
    s.end(ticket, 0.06)
    assert sum(in_flight(s).values()) == 0


def test_no_hedge_without_another_pod_with_room_nor_near_capacity_nor_past_the_budget():
    lone = service(pods=1, delay=0.01, budget=1.0)
    ticket = lone.offer(0.0)
    lone.dispatch(ticket, 0.0)
    assert lone.hedge(ticket, 0.02) is None and lone.hedger.skipped_no_pod == 1
    # Two pods of concurrency 1: the L1 limit is 2; with both slots taken the service is full.
    busy = service(pods=2, concurrency=1, delay=0.01, budget=1.0)
    t1, t2 = busy.offer(0.0), busy.offer(0.0)
    busy.dispatch(t1, 0.0)
    busy.dispatch(t2, 0.0)
    assert busy.hedge(t1, 0.02) is None
    # The budget: 5% of requests.
    s = service(pods=3, concurrency=100, delay=0.01, budget=0.05)
    sent = 0
    for i in range(200):
        ticket = s.offer(float(i))
        s.dispatch(ticket, float(i))
        sent += s.hedge(ticket, i + 0.02) is not None
        s.end(ticket, i + 0.5)
    assert sent == 10 and sum(in_flight(s).values()) == 0


@given(st.lists(st.tuples(st.integers(0, 3), st.booleans()), min_size=1, max_size=60))
@settings(max_examples=80, deadline=None)
def test_in_flight_counts_stay_exact_whatever_the_order_of_ends(script):
    s = service(pods=3, concurrency=2, delay=0.01, budget=1.0)
    now = 0.0
    open_tickets = []
    queued = []  # offered while L1 was full: let in later by the ends, ended with the rest
    for action, flag in script:
        now += 0.01
        if action == 0 or not open_tickets:
            ticket = s.offer(now)
            if ticket.admitted:
                first = s.dispatch(ticket, now)
                hedge = s.hedge(ticket, now) if flag else None
                open_tickets.append((ticket, first, hedge))
            else:
                queued.append(ticket)
            continue
        ticket, first, hedge = open_tickets.pop(0)
        if action == 1 and hedge is not None:
            (hedge if flag else first).on_head(now, None, 200)
            (first if flag else hedge).abandon(now)
        elif action == 2:
            first.on_failure(now, flag)
            if hedge is not None:
                hedge.on_failure(now, not flag)
        s.end(ticket, now)
        s.end(ticket, now)
    for ticket in [t for t, _, _ in open_tickets] + queued:
        s.end(ticket, now)
    assert sum(in_flight(s).values()) == 0 and s.queue.active == 0


def test_settings_global_and_per_service_with_errors_naming_the_key():
    from katyusha.proxy import config

    c = config.validate({"hedge": "true", "hedge-delay": "50ms", "hedge-budget": "10%"})
    hedge = c.service_settings(c.service_specs[0]).hedge
    assert (hedge.enabled, hedge.delay, hedge.budget) == (True, 0.05, 0.1)
    assert c.to_json()["hedge-delay"] == 0.05
    c = config.validate({"hedge-delay": "20ms", "services": [
        {"name": "a", "hedge": True, "hedge-delay": "auto", "hedge-budget": 0.02},
        {"name": "b", "path-prefix": "/b"}]})
    a, b = (c.service_settings(spec).hedge for spec in c.service_specs)
    assert (a.enabled, a.delay, a.budget) == (True, None, 0.02)
    assert (b.enabled, b.delay, b.budget) == (False, 0.02, 0.05)
    # Off while katyusha is a pass-through.
    c = config.validate({"hedge": True, "ikukantai-enable-katyusha": "false"})
    assert not c.service_settings(c.service_specs[0]).hedge.enabled
    for raw, key in (({"hedge-delay": "soon"}, "hedge-delay"), ({"hedge-budget": "150%"}, "hedge-budget"),
                     ({"hedge-budget": 2}, "hedge-budget"), ({"hedge": "maybe"}, "hedge"),
                     ({"services": [{"name": "a", "hedge-delay": "x"}]}, "services[0].hedge-delay")):
        with pytest.raises(ConfigError) as caught:
            config.validate(raw)
        assert caught.value.key == key


def test_pod_capacity_extra_lets_a_pod_hold_requests_beyond_its_concurrency():
    balancer = ServiceBalancer(ServiceSettings(capacity_extra=1), rng=random.Random(1))
    balancer.change_pods(PodChange(upsert=(
        PodSpec("pod-0", "http://127.0.0.1:9000", "node-1", None, 1),
        PodSpec("pod-1", "http://127.0.0.1:9001", "node-1", None, 4))), 0.0)
    assert {e.name: c for e, c in balancer.capacity.caps.items()} == {"pod-0": 2, "pod-1": 5}
    assert balancer.queue.limit == 7


def test_a_slow_pod_loses_its_extra_slot_and_gets_it_back_when_fast_again():
    balancer = ServiceBalancer(ServiceSettings(capacity_extra=1), rng=random.Random(1))
    balancer.change_pods(PodChange(upsert=tuple(
        PodSpec(f"pod-{i}", f"http://127.0.0.1:{9000 + i}", "node-1", None, 1) for i in range(4))), 0.0)
    capacity = balancer.capacity
    entries = {e.name: e for e in balancer.table.pods()}
    for name, entry in entries.items():
        entry.app_ewma_ms = 80.0 if name == "pod-0" else 20.0  # pod-0 four times slower
    slow = entries["pod-0"]
    # Requests end on every pod: pod-0 is classed slow, held to one request (no extra).
    for _ in range(2):
        for entry in entries.values():
            entry.in_flight += 1
            capacity.started(entry)
            entry.in_flight -= 1
            capacity.ended(entry)
    assert list(capacity.slow) == [slow]
    slow.in_flight = 1
    capacity.started(slow)
    assert slow in capacity.full and slow not in capacity.open
    fast = entries["pod-1"]
    fast.in_flight = 1
    capacity.started(fast)
    assert fast not in capacity.full  # a fast pod keeps its extra slot
    # pod-0 turns fast again: its next end gives the extra back.
    slow.app_ewma_ms = 20.0
    slow.in_flight = 0
    capacity.ended(slow)
    assert not capacity.slow and slow not in capacity.full and slow in capacity.open
    slow.in_flight = 1
    capacity.started(slow)
    assert slow not in capacity.full
    assert sorted(capacity.open, key=lambda e: e.name) == sorted(
        (e for e in entries.values() if e not in capacity.full), key=lambda e: e.name)


def test_slow_pods_extra_slots_do_not_count_twice_against_hedging():
    # Ten pods of concurrency 1 with the default extra slot: 20 requests admitted, 10 started at
    # once. Three pods twice as slow as the others lose their extra (not held: below 2.5x), so
    # the L1 limit is 17 and 10 requests still start at once: with 8 active a hedge is affordable
    # (under 90% of 10 slots). Counting the slow pods' extra twice made it 7 slots and no hedge.
    s = service(pods=10, concurrency=1, delay=0.01, budget=1.0)
    entries = sorted(s.table.pods(), key=lambda e: e.name)
    for index, entry in enumerate(entries):
        entry.app_ewma_ms = 40.0 if index < 3 else 20.0
    for _ in range(2):
        for entry in entries:
            entry.in_flight += 1
            s.capacity.started(entry)
            entry.in_flight -= 1
            s.capacity.ended(entry)
    assert len(s.capacity.slow) == 3 and not s.capacity.held
    first = s.offer(0.0)  # one request through the balancer hands the L1 limit the change
    s.dispatch(first, 0.0)
    s.end(first, 0.0)
    tickets = [s.offer(0.0) for _ in range(8)]
    for ticket in tickets:
        s.dispatch(ticket, 0.0)
    assert s.queue.limit == 17 and s.queue.active == 8 and s.queue.waiting == 0
    assert s.hedge_delay("GET", False) == 0.01
    # At 9 active of 10 slots it is near capacity: no hedge.
    s.dispatch(s.offer(0.0), 0.0)
    assert s.hedge_delay("GET", False) is None


def test_no_hedge_is_armed_while_one_would_not_be_affordable():
    # Two pods of concurrency 1, budget 100%: armed while a pod is free, not once both are busy.
    s = service(pods=2, concurrency=1, delay=0.01, budget=1.0)
    t1 = s.offer(0.0)
    s.dispatch(t1, 0.0)
    assert s.hedge_delay("GET", False) == 0.01
    t2 = s.offer(0.0)
    s.dispatch(t2, 0.0)
    assert s.hedge_delay("GET", False) is None
    # Out of budget (5%: no token yet after two requests): not armed either, and nothing was counted.
    poor = service(pods=3, delay=0.01, budget=0.05)
    poor.dispatch(poor.offer(0.0), 0.0)
    assert poor.hedge_delay("GET", False) is None
    assert poor.hedger.skipped_busy == 0 and poor.hedger.budget.refused == 0
