"""jsq-piggyback's speed weighting of pods without a fresh report (no nonna): less traffic to a slow pod."""

from __future__ import annotations

import random
from collections import Counter

from katyusha.core.feedback import Feedback
from katyusha.core.loadtable import LoadTable
from katyusha.core.policies import make_policy


def fleet(count: int) -> LoadTable:
    table = LoadTable()
    for i in range(count):
        table.upsert(f"p{i}", f"http://127.0.0.1:{9000 + i}")
    return table


def run(table: LoadTable, speeds_ms: list[float], picks: int, *, reports: bool, seed: int = 1,
        check=None) -> Counter:
    """Closed loop of 2 x pods requests; each pod answers after its own latency."""
    pol = make_policy("jsq-piggyback", rng=random.Random(seed), table=table)
    pods = {entry.name: entry for entry in table.pods()}
    rng = random.Random(seed + 1)
    now = 0.0
    open_: list[tuple[float, str, bool]] = []
    chosen = Counter()
    for _ in range(picks):
        while len(open_) >= 2 * len(speeds_ms):
            open_.sort()
            done_at, name, alone = open_.pop(0)
            now = max(now, done_at)
            entry = pods[name]
            feedback = Feedback(0, entry.in_flight - 1, 1, 0.0, speeds_ms[int(name[1:])], name, None) \
                if reports else None
            table.record_response(entry, now, speeds_ms[int(name[1:])] / 1000.0, feedback, alone)
            table.on_end(entry)
        entry = check(table.ready(), now) if check else pol.pick(table.ready(), now)
        table.on_dispatch(entry, now)
        chosen[entry.name] += 1
        latency = speeds_ms[int(entry.name[1:])] * (1 + rng.random() * 0.1)
        open_.append((now + latency * entry.in_flight / 1000.0, entry.name, entry.in_flight == 1))
        now += 0.001
    return chosen


def test_a_slow_pod_without_nonna_gets_a_smaller_share():
    speeds = [80.0] + [20.0] * 3  # pod 0 four times slower
    weighted = run(fleet(4), speeds, 2000, reports=False)
    share = weighted["p0"] / 2000
    # Unweighted least-in-flight would give it about its in-flight share; weighted, it
    # gets a request only when the others hold three or more each.
    assert share < 0.065, weighted  # 7.7% unweighted in this loop, 5.2% weighted
    assert all(weighted[f"p{i}"] > weighted["p0"] for i in (1, 2, 3))


def test_pods_that_report_are_ranked_by_their_load_alone():
    table = fleet(4)
    pol = make_policy("jsq-piggyback", rng=random.Random(1), table=table)
    slow, fast = table.get("p0"), table.get("p1")
    # p0 measured four times slower, with no report: weighed.
    for entry, ms in ((slow, 80.0), (fast, 20.0), (table.get("p2"), 20.0), (table.get("p3"), 20.0)):
        table.on_dispatch(entry, 0.0)
        table.record_response(entry, 0.01, ms / 1000.0, None, True)
        table.on_end(entry)
    assert pol.pick(table.ready(), 0.5) is not slow  # refreshes the median (20 ms)
    assert pol.metric.load(slow, 0.5) == 3.0  # 4 x (0 + 1) - 1
    assert pol.metric.load(fast, 0.5) == 0.0
    # A fresh report: its estimated load only.
    table.on_dispatch(slow, 0.6)
    table.record_response(slow, 0.6, 0.08, Feedback(0, 0, 1, 0.0, 80.0, "p0", None), True)
    table.on_end(slow)
    assert pol.metric.load(slow, 0.7) == 0.0


def test_index_picks_what_a_scan_picks_with_speeds_and_no_reports():
    table = fleet(64)
    speeds = [80.0 if i % 8 == 0 else 20.0 + i % 3 for i in range(64)]
    indexed = make_policy("jsq-piggyback", rng=random.Random(5), table=table)
    scanned = make_policy("jsq-piggyback", rng=random.Random(5), table=table)
    copy: dict = {}

    def both(candidates, now):
        if copy.get("of") is not candidates:
            copy.update({"of": candidates, "list": list(candidates)})
        a = indexed.pick(candidates, now)
        b = scanned.pick(copy["list"], now)
        assert a is b, f"at {now}: index chose {a.name}, scan {b.name}"
        return a

    chosen = run(table, speeds, 3000, reports=False, check=both)
    assert sum(chosen[f"p{i}"] for i in range(0, 64, 8)) < sum(chosen.values()) / 8
    assert indexed.selector._index is not None
