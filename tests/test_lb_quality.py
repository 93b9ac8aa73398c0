"""Load-balancing quality on the sans-IO core: the piggyback policies against leastconn, noise-free.

The benchmark (benchmarks/lb_quality.py) measures real processes on a busy
machine; this drives the same policy and load-table objects with a small
discrete-event model of the benchmark's fleets (concurrency-1 pods with
exponential service times, Poisson arrivals, a report on every response, no
per-pod cap in katyusha), so the rankings docs/policies.md quotes are checked
in seconds, with fixed seeds.
"""

from __future__ import annotations

import heapq
import random

import pytest

from katyusha.core.feedback import Feedback
from katyusha.core.loadtable import LoadTable
from katyusha.core.policies import make_policy

MEAN_S = 0.020
WIRE_S = 0.0005


def p99_ms(policy: str, speeds: list[float], *, load: float, replicas: int = 1,
           seconds: float = 30.0, seed: int = 1) -> float:
    """p99 latency (ms) of ``policy`` in ``replicas`` balancers in front of pods of ``speeds``."""
    rate = load * sum(speed / MEAN_S for speed in speeds)
    tables = [LoadTable() for _ in range(replicas)]
    entries = [[t.upsert(f"p{i}", f"http://p{i}") for i in range(len(speeds))] for t in tables]
    policies = [make_policy(policy, rng=random.Random(seed * 10 + r), table=t)
                for r, t in enumerate(tables)]
    service = random.Random(seed + 1)
    waiting: list[list[dict]] = [[] for _ in speeds]
    running: list[dict | None] = [None] * len(speeds)
    events: list = []
    order = 0

    def at(when: float, kind: str, data) -> None:
        nonlocal order
        order += 1
        heapq.heappush(events, (when, order, kind, data))

    arrivals = random.Random(seed)
    t, n = arrivals.expovariate(rate), 0
    while t < seconds:
        at(t, "arrive", n % replicas)
        t += arrivals.expovariate(rate)
        n += 1

    def start(pod: int, now: float) -> None:
        request = waiting[pod].pop(0)
        request["start"] = now
        running[pod] = request
        at(now + service.expovariate(1 / MEAN_S) / speeds[pod], "done", pod)

    latencies = []
    while events:
        now, _, kind, data = heapq.heappop(events)
        if kind == "arrive":
            entry = policies[data].pick(tables[data].ready(), now)
            tables[data].on_dispatch(entry, now)
            at(now + WIRE_S, "reach", {"replica": data, "pod": int(entry.name[1:]), "sent": now})
        elif kind == "reach":
            data["queued"] = now
            waiting[data["pod"]].append(data)
            if running[data["pod"]] is None:
                start(data["pod"], now)
        elif kind == "done":
            request, running[data] = running[data], None
            if waiting[data]:
                start(data, now)
            report = Feedback(len(waiting[data]), 1 if running[data] else 0, 1,
                              (request["start"] - request["queued"]) * 1000,
                              (now - request["start"]) * 1000, f"p{data}", None)
            at(now + WIRE_S, "response", (request, report))
        else:
            request, report = data
            replica = request["replica"]
            entry = entries[replica][request["pod"]]
            latency = now - request["sent"]
            tables[replica].on_response(entry, now, latency, report)
            policies[replica].observe(entry, now, latency, report)
            if request["sent"] > 2.0:  # past the first reports
                latencies.append(latency * 1000)
    latencies.sort()
    return latencies[int(0.99 * len(latencies))]


HETEROGENEOUS = [0.25, 0.25] + [1.0] * 6


@pytest.mark.parametrize("replicas", [1, 3])
def test_sed_keeps_the_tail_well_below_leastconn_on_a_mixed_fleet(replicas):
    # least-in-flight per replica is HAProxy's leastconn (and nginx's least_conn).
    ours = sum(p99_ms("sed-piggyback", HETEROGENEOUS, load=0.9, replicas=replicas, seed=s)
               for s in (1, 2))
    peer = sum(p99_ms("least-in-flight", HETEROGENEOUS, load=0.9, replicas=replicas, seed=s)
               for s in (1, 2))
    assert ours < 0.8 * peer, (ours / 2, peer / 2)


def test_prequal_is_no_worse_than_leastconn_on_a_mixed_fleet():
    ours = p99_ms("prequal", HETEROGENEOUS, load=0.9, seed=3)
    peer = p99_ms("least-in-flight", HETEROGENEOUS, load=0.9, seed=3)
    assert ours < peer, (ours, peer)


def test_piggyback_sees_other_replicas_load_that_leastconn_misses():
    # Three balancers: each leastconn sees a third of the connections, the
    # piggybacked reports see them all.
    ours = p99_ms("jsq-piggyback", HETEROGENEOUS, load=0.9, replicas=3, seed=4)
    peer = p99_ms("least-in-flight", HETEROGENEOUS, load=0.9, replicas=3, seed=4)
    assert ours < peer, (ours, peer)


def test_load_blind_round_robin_is_far_behind_on_a_mixed_fleet():
    # The model is sensitive: sending slow pods their equal share overloads them.
    assert p99_ms("round-robin", HETEROGENEOUS, load=0.7, seconds=15) > 3 * p99_ms(
        "jsq-piggyback", HETEROGENEOUS, load=0.7, seconds=15)
