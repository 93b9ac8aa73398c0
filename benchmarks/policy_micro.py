"""What one pick costs, per policy, at 10 to 10,000 ready pods, beside round-robin's.

Run as ``python -m benchmarks.policy_micro [--quick] [--json PATH] [--check]``.
Pure Python on the sans-IO core: no process, no socket.

Each measurement builds a load table of N ready pods (a quarter of them four
times slower, every pod with a report from the last three seconds, so some
are fresh and some stale), then picks from ``table.ready()`` as the live
proxy does, with what happens between two picks in a proxy: the chosen pod
gets a dispatch; requests finish after an exponential service time with a
piggybacked report (one in ten without, one in a hundred failing), which the
table and the policy observe; time moves by the gap between arrivals of a
stream at half the fleet's capacity, at most 10,000 requests a second (what
one katyusha serves), so at 10,000 pods reports do go stale and failures do
lapse between picks; prequal gets two probes every quarter second. Only the
pick call is timed. Each figure is the median over ``--runs`` runs of the mean
per pick; the policies are interleaved within each run so a change in the
machine's load falls on all of them.
"""

from __future__ import annotations

import argparse
import heapq
import random
import statistics
import sys
import time

from katyusha.core.feedback import Feedback
from katyusha.core.loadtable import LoadTable
from katyusha.core.policies import DEFAULT_POLICY, POLICY_NAMES, make_policy

SIZES = (10, 100, 1_000, 10_000)
BASELINE = "round-robin"
MEAN_SERVICE_S = 0.020
MAX_RATE = 10_000.0
PROBE_EVERY_S = 0.25
# Issue 11's budget at 10,000 pods: the default policy, and every policy.
DEFAULT_BUDGET_US = 20.0
ANY_BUDGET_US = 100.0


def measure(policy: str, pods: int, picks: int, warmup: int, seed: int) -> float:
    """Mean µs per pick of ``policy`` over ``picks`` picks on ``pods`` ready pods, after ``warmup``."""
    table = LoadTable()
    entries = [table.upsert(f"pod-{i}", f"http://10.0.{i // 250}.{i % 250}:8080")
               for i in range(pods)]
    speed = {entry: 0.25 if i % 4 == 0 else 1.0 for i, entry in enumerate(entries)}
    events = random.Random(seed)
    for entry in entries:
        # A report from the last three seconds: the older ones are stale at 0.
        at = -events.uniform(0.0, 3.0)
        app = events.expovariate(speed[entry] / MEAN_SERVICE_S) * 1000.0
        table.on_dispatch(entry, at)
        table.on_response(entry, at, app / 1000.0,
                          Feedback(0, events.randrange(3), 4, 0.0, app, entry.name, None))
    pol = make_policy(policy, rng=random.Random(seed + 1), table=table)
    probe = getattr(pol, "observe_probe", None)
    rate = min(MAX_RATE, 0.5 * pods / MEAN_SERVICE_S)
    finishing: list = []  # heap of (when, order, entry, sent)
    now = 0.0
    next_probe = 0.0
    order = 0
    spent = 0
    clock = time.perf_counter_ns
    for step in range(warmup + picks):
        now += events.expovariate(rate)
        while finishing and finishing[0][0] <= now:
            when, _, entry, sent = heapq.heappop(finishing)
            if events.random() < 0.01:
                table.on_failure(entry, when)
                continue
            feedback = None
            if events.random() >= 0.1:
                app = (when - sent) * 1000.0
                feedback = Feedback(events.randrange(2), entry.in_flight + events.randrange(2), 4,
                                    0.0, app, entry.name, None)
            table.on_response(entry, when, when - sent, feedback)
            pol.observe(entry, when, when - sent, feedback)
        if probe is not None and now >= next_probe:
            next_probe = now + PROBE_EVERY_S
            for target in pol.probe_targets(table.ready(), now, 2):
                probe(target, now, target.in_flight, (target.app_ewma_ms or 20.0) * 1.5)
        candidates = table.ready()
        started = clock()
        entry = pol.pick(candidates, now)
        if step >= warmup:
            spent += clock() - started
        table.on_dispatch(entry, now)
        order += 1
        service = events.expovariate(speed[entry] / MEAN_SERVICE_S)
        heapq.heappush(finishing, (now + service, order, entry, now))
    return spent / picks / 1000.0


def run(policies: tuple[str, ...], sizes: tuple[int, ...], runs: int, picks: int) -> dict:
    """``{policy: {pods: [µs per pick of each run]}}`` over ``runs`` interleaved runs."""
    samples: dict[str, dict[int, list[float]]] = {p: {n: [] for n in sizes} for p in policies}
    for run_no in range(runs):
        for pods in sizes:
            order = list(policies)
            random.Random(run_no * 31 + pods).shuffle(order)
            for policy in order:
                us = measure(policy, pods, picks, warmup=min(1000, picks), seed=run_no * 1000 + pods)
                samples[policy][pods].append(us)
            line = "  ".join(f"{p} {samples[p][pods][-1]:.2f}" for p in policies)
            print(f"  run {run_no + 1} pods {pods:>6}: {line}", flush=True)
    return samples


def compare_groups(pods: int = 10_000, keys: int = 3, moves: int = 200_000) -> dict:
    """µs to move one pod to another key: katyusha's index groups beside one SortedList.

    The index (katyusha/core/policies/index.py) keeps a dict of sorted
    position lists; ``sortedcontainers.SortedList`` of ``(key, position)`` is
    the library that would do the same job. Both get the same random moves
    over ``pods`` positions and ``keys`` distinct keys (jsq's loads are a few
    small integers), then the same ``lowest`` lookup.
    """
    from katyusha.core.policies.index import Groups

    rng = random.Random(1)
    plan = [(rng.randrange(pods), float(rng.randrange(keys))) for _ in range(moves)]
    start = [float(rng.randrange(keys)) for _ in range(pods)]
    result = {}

    current = list(start)
    groups = Groups()
    for position, key in enumerate(current):
        groups.add(key, position)
    started = time.perf_counter()
    for position, key in plan:
        groups.discard(current[position], position)
        groups.add(key, position)
        current[position] = key
        groups.groups[groups.lowest()]
    result["index_groups_us"] = (time.perf_counter() - started) / moves * 1e6
    try:
        from sortedcontainers import SortedList
    except ImportError:
        return result
    current = list(start)
    ordered = SortedList((key, position) for position, key in enumerate(current))
    started = time.perf_counter()
    for position, key in plan:
        ordered.remove((current[position], position))
        ordered.add((key, position))
        current[position] = key
        ordered.bisect_left((ordered[0][0], pods))
    result["sortedlist_us"] = (time.perf_counter() - started) / moves * 1e6
    return result


def print_table(pick_us: dict, sizes: tuple[int, ...]) -> None:
    print("\nµs per pick (x round-robin's at the same size)")
    print(f"{'policy':16s}" + "".join(f"{n:>18,d}" for n in sizes))
    for policy, by_size in pick_us.items():
        cells = "".join(f"{by_size[n]:9.2f} ({by_size[n] / pick_us[BASELINE][n]:5.1f}x)"
                        for n in sizes)
        print(f"{policy:16s}{cells}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.policy_micro", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer runs and picks, same keys")
    parser.add_argument("--json", metavar="PATH", help="write the figures as JSON to PATH")
    parser.add_argument("--runs", type=int, help="runs per policy and size (default 5, quick 2)")
    parser.add_argument("--picks", type=int, help="timed picks per run (default 5000, quick 1000)")
    parser.add_argument("--pods", type=int, action="append",
                        help="fleet sizes (repeatable; default 10 100 1000 10000)")
    parser.add_argument("--compare-groups", action="store_true",
                        help="only time the index's groups beside sortedcontainers.SortedList")
    parser.add_argument("--check", action="store_true",
                        help="exit 1 when a pick at 10,000 pods is over budget "
                             f"({DEFAULT_BUDGET_US:g} µs default policy, {ANY_BUDGET_US:g} µs any)")
    args = parser.parse_args(argv)
    if args.compare_groups:
        figures = compare_groups()
        print(" ".join(f"{name} {us:.2f}" for name, us in figures.items()),
              "(µs per move of one pod among 10,000, 3 keys)")
        return 0
    runs = args.runs or (2 if args.quick else 5)
    picks = args.picks or (1000 if args.quick else 5000)
    sizes = tuple(args.pods or SIZES)
    policies = (BASELINE, *(p for p in POLICY_NAMES if p != BASELINE))
    started = time.monotonic()
    samples = run(policies, sizes, runs, picks)
    pick_us = {p: {n: statistics.median(v) for n, v in by.items()} for p, by in samples.items()}
    print_table(pick_us, sizes)
    largest = max(sizes)
    default_us = pick_us[DEFAULT_POLICY][largest]
    worst = max(pick_us, key=lambda p: pick_us[p][largest])
    within = default_us <= DEFAULT_BUDGET_US and pick_us[worst][largest] <= ANY_BUDGET_US
    budget = (f" (budgets {DEFAULT_BUDGET_US:g} and {ANY_BUDGET_US:g} µs: "
              f"{'met' if within else 'MISSED'})" if largest == 10_000 else "")
    print(f"\nat {largest:,d} pods: default ({DEFAULT_POLICY}) {default_us:.2f} µs per pick, "
          f"slowest {worst} {pick_us[worst][largest]:.2f} µs{budget}")
    result = {
        "pick_us": {p: {str(n): round(v, 3) for n, v in by.items()} for p, by in pick_us.items()},
        "pick_us_every_run": {p: {str(n): [round(x, 3) for x in v] for n, v in by.items()}
                              for p, by in samples.items()},
        "ratio_vs_round_robin": {p: {str(n): round(v / pick_us[BASELINE][n], 2)
                                     for n, v in by.items()} for p, by in pick_us.items()},
        "default_policy": DEFAULT_POLICY,
        "default_pick_us_at_10k": round(pick_us[DEFAULT_POLICY][10_000], 3)
        if 10_000 in sizes else None,
        "slowest_at_largest": {"policy": worst, "pods": largest,
                               "pick_us": round(pick_us[worst][largest], 3)},
        "within_budget": within if largest == 10_000 else None,
        "runs": runs,
        "picks": picks,
        "quick": args.quick,
        "elapsed_s": round(time.monotonic() - started, 1),
    }
    from benchmarks import plots

    plots.save("policy_micro", result, args.json)
    if args.check and largest == 10_000 and not within:
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
