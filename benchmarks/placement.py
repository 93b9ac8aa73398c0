"""Batch placement by min-cost flow against pod-at-a-time placement, on the same synthetic clusters.

Run as ``python -m benchmarks.placement [--quick] [--json PATH]``.

Clusters of 100, 1,000, 2,700 and 12,500 nodes in pools (labels, taints,
three machine sizes), a third used by running pods, and each image already on
the disk of about one node in eight. Batches of 1,000 to 10,000 pending pods
in 10 to 100 classes, some with required or preferred node affinity,
tolerations, or at most k pods per node. Everything is drawn from a seeded
``random.Random``, so every run sees the same inputs.

For each case and both schedulers: wall time of one whole batch (median of
``--repeat`` runs, alternating between the schedulers so both see the same
load, with the fastest and slowest run), its process CPU time, pods placed
per second, the total cost under the one common cost function
(katyusha.core.placement.score.evaluate), image pulls needed (distinct node
and image pairs), and pods left unscheduled. Once per case the flow is also
solved unpruned (every class with arcs to every feasible node), which shows
what candidate pruning costs in placement quality (``pruning_cost_gap``).
``--quick`` runs every case once (same keys, under a minute).
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time

from katyusha.core.placement import (
    Cluster,
    FlowScheduler,
    LabelRequirement,
    Node,
    NodeAffinity,
    PodAtATimeScheduler,
    PodClass,
    RunningPod,
    Taint,
    Toleration,
    evaluate,
)

# (nodes, pending pods, classes)
CASES = [
    (100, 1_000, 10),
    (1_000, 10_000, 100),
    (2_700, 1_000, 10),
    (2_700, 10_000, 100),
    (12_500, 10_000, 100),
]
POOLS = ("general", "general", "general", "highmem", "batch", "edge")
SIZES = ((4_000, 16_384), (8_000, 32_768), (16_000, 65_536))
IMAGES = 40


def make_cluster(size: int, rng: random.Random) -> Cluster:
    """``size`` nodes in pools; each image on the disk of about one node in eight."""
    nodes, running = [], []
    for i in range(size):
        pool = POOLS[i % len(POOLS)]
        cpu, ram = SIZES[rng.randrange(len(SIZES))]
        taints = ()
        if pool == "batch":
            taints = (Taint("dedicated", "batch", "NoSchedule"),)
        elif pool == "edge":
            taints = (Taint("flaky", "", "PreferNoSchedule"),)
        images = frozenset(f"img-{k}" for k in range(IMAGES) if rng.random() < 0.125)
        name = f"node-{i:05d}"
        nodes.append(Node(name, cpu=cpu, ram=ram, max_pods=110,
                          labels={"pool": pool, "zone": f"z{i % 3}"}, taints=taints, images=images))
        used = rng.uniform(0.1, 0.5)
        for j in range(rng.randint(1, 4)):
            share = used / 4
            running.append(RunningPod(f"{name}-run-{j}", f"old-{rng.randrange(20)}", name,
                                      cpu=int(cpu * share), ram=int(ram * share),
                                      measured_cpu=int(cpu * share * rng.uniform(0.3, 1.0))))
    return Cluster(tuple(nodes), tuple(running))


def make_batch(pods: int, classes: int, rng: random.Random) -> list[PodClass]:
    """``pods`` pending pods in ``classes`` classes with a mix of constraints."""
    out = []
    for c in range(classes):
        count = pods // classes + (1 if c < pods % classes else 0)
        kind = c % 10
        affinity, tolerations, max_per_node = NodeAffinity(), (), None
        if kind == 1:
            affinity = NodeAffinity(required=((LabelRequirement("pool", "In", ("general", "highmem")),),))
        elif kind == 2:
            affinity = NodeAffinity(preferred=((50, (LabelRequirement("zone", "In", ("z1",)),)),))
        elif kind == 3:
            tolerations = (Toleration("dedicated", "Equal", "batch", "NoSchedule"),)
            affinity = NodeAffinity(preferred=((80, (LabelRequirement("pool", "In", ("batch",)),)),))
        elif kind == 4:
            max_per_node = 2
        elif kind == 5:
            affinity = NodeAffinity(required=((LabelRequirement("pool", "NotIn", ("edge",)),),))
        out.append(PodClass(
            f"svc-{c}", tuple(f"svc-{c}-{i}" for i in range(count)),
            cpu=rng.choice((100, 250, 500, 1000)), ram=rng.choice((128, 256, 512, 1024, 2048)),
            image=f"img-{rng.randrange(IMAGES)}", node_affinity=affinity,
            tolerations=tolerations, max_per_node=max_per_node,
        ))
    return out


def run_case(nodes: int, pods: int, classes: int, repeat: int, seed: int, reference: bool = True) -> dict:
    """Both schedulers on one seeded cluster and batch; ``reference`` also prices an unpruned flow."""
    rng = random.Random(seed * 1_000_003 + nodes * 31 + pods)
    cluster = make_cluster(nodes, rng)
    batch = make_batch(pods, classes, rng)
    makers = {"flow": FlowScheduler, "pod_at_a_time": lambda: PodAtATimeScheduler(random.Random(seed))}
    wall: dict[str, list[float]] = {name: [] for name in makers}
    cpu: dict[str, list[float]] = {name: [] for name in makers}
    last = {}
    # Runs alternate between the schedulers so that both see the same load on a shared machine.
    for _ in range(repeat):
        for name, make in makers.items():
            scheduler = make()
            start, start_cpu = time.perf_counter(), time.process_time()
            placement = scheduler.schedule(cluster, batch)
            wall[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)
            last[name] = (scheduler, placement)
    row: dict = {"nodes": nodes, "pods": pods, "classes": classes}
    for name in makers:
        scheduler, placement = last[name]
        seconds = statistics.median(wall[name])
        report = evaluate(cluster, tuple(batch), placement)
        row[name] = {
            "seconds": round(seconds, 4),
            "seconds_min": round(min(wall[name]), 4),
            "seconds_max": round(max(wall[name]), 4),
            "cpu_seconds": round(statistics.median(cpu[name]), 4),
            "pods_per_second": round(len(placement.assignments) / seconds, 1),
            "placed": len(placement.assignments),
            "unscheduled": report.pods_unscheduled,
            "total_cost": report.total,
            "image_pulls": report.image_pulls,
            "pods_waiting_pull": report.pods_waiting_pull,
        }
        if name == "flow":
            row[name]["solves"] = scheduler.last_solves
            row[name]["arcs"] = scheduler.last_arcs
    row["speedup"] = round(row["flow"]["pods_per_second"] / row["pod_at_a_time"]["pods_per_second"], 2)
    row["speedup_cpu"] = round(row["pod_at_a_time"]["cpu_seconds"] / row["flow"]["cpu_seconds"]
                               * row["flow"]["placed"] / max(row["pod_at_a_time"]["placed"], 1), 2)
    row["cost_ratio"] = round(row["flow"]["total_cost"] / row["pod_at_a_time"]["total_cost"], 4)
    if reference:
        # Every class with arcs to every feasible node: what candidate pruning costs in placement quality.
        unpruned = FlowScheduler(prune=False)
        start = time.perf_counter()
        full = evaluate(cluster, tuple(batch), unpruned.schedule(cluster, batch))
        row["unpruned_flow"] = {"seconds": round(time.perf_counter() - start, 4), "total_cost": full.total,
                                "arcs": unpruned.last_arcs}
        row["pruning_cost_gap"] = round(row["flow"]["total_cost"] / full.total - 1, 4)
    return row


def print_table(rows: list[dict]) -> None:
    head = (f"{'nodes':>6} {'pods':>6} {'cls':>4} | {'scheduler':<13} {'seconds':>8} {'min..max':>15} "
            f"{'pods/s':>9} {'placed':>6} {'unsched':>7} {'cost':>10} {'pulls':>6} {'wait':>5}")
    print(head)
    print("-" * len(head))
    for row in rows:
        for name in ("flow", "pod_at_a_time"):
            r = row[name]
            spread = f"{r['seconds_min']:.3f}..{r['seconds_max']:.3f}"
            print(f"{row['nodes']:>6} {row['pods']:>6} {row['classes']:>4} | {name:<13} "
                  f"{r['seconds']:>8.3f} {spread:>15} {r['pods_per_second']:>9.0f} {r['placed']:>6} "
                  f"{r['unscheduled']:>7} {r['total_cost']:>10} {r['image_pulls']:>6} "
                  f"{r['pods_waiting_pull']:>5}")
        line = (f"{'':>19} | speedup {row['speedup']:.1f}x (cpu {row['speedup_cpu']:.1f}x), "
                f"cost ratio {row['cost_ratio']:.3f}, flow solves {row['flow']['solves']}, "
                f"arcs {row['flow']['arcs']}")
        if "pruning_cost_gap" in row:
            line += f", cost over unpruned flow {100 * row['pruning_cost_gap']:+.2f}%"
        print(line)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="every case once (under a minute)")
    parser.add_argument("--repeat", type=int, default=5, help="runs per case; the median is kept")
    parser.add_argument("--no-reference", action="store_true",
                        help="skip the unpruned flow solve that measures what candidate pruning costs")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", metavar="PATH", help="write the figures here as JSON")
    args = parser.parse_args(argv)
    repeat = 1 if args.quick else args.repeat
    rows = []
    for nodes, pods, classes in CASES:
        rows.append(run_case(nodes, pods, classes, repeat, args.seed, reference=not args.no_reference))
        print(f"done {nodes} nodes, {pods} pods", file=sys.stderr, flush=True)
    print_table(rows)
    at_2700 = next(r for r in rows if r["nodes"] == 2_700 and r["pods"] == 10_000)
    at_12500 = next(r for r in rows if r["nodes"] == 12_500 and r["pods"] == 10_000)
    result = {
        "speedup_at_2700": at_2700["speedup"],
        "speedup_at_2700_cpu": at_2700["speedup_cpu"],
        "cost_ratio_at_2700": at_2700["cost_ratio"],
        "seconds_10000_pods_12500_nodes": at_12500["flow"]["seconds"],
        "quick": args.quick,
        "repeat": repeat,
        "seed": args.seed,
        "cases": rows,
    }
    print(f"\nspeedup_at_2700={result['speedup_at_2700']} "
          f"cost_ratio_at_2700={result['cost_ratio_at_2700']} "
          f"seconds_10000_pods_12500_nodes={result['seconds_10000_pods_12500_nodes']}")
    from benchmarks import plots

    plots.save("placement", result, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
