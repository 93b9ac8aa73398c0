"""The simulator at scale: 1,000 nodes, 10,000 pods in 100 services, 1,000,000 requests, KPA and min-cost flow.

Run as ``python -m benchmarks.sim_scale [--quick] [--json PATH]``.

Every service starts from zero pods; katyusha's default policy balances, the
KPA autoscaler (container concurrency 10, target 70%: 7 in flight per pod)
scales each service up to its max-scale of 100 pods as its Poisson load arrives, and every wake is placed by the
min-cost-flow scheduler over the whole cluster (1,000 nodes of 16 cores; the
image on no disk at first: pulls at 200 MB/s), the scenario's default
overheads (docs/simulator.md, "Overheads"). Service times are log-normal
with a mean of 10 s, so 100 services at 70 requests a second hold about
70,000 requests in flight; requests are not written out (summary figures only). All of it through the same core objects as
the live system (katyusha.sim).

The peer is a published figure, not a run here: SimFaaS's README example
simulates about 900,000 requests in 42 s, about 21,000 requests a second,
with a far simpler model (no balancer, no queues, no placement). The
benchmark prints simulated requests per second of wall time beside it, and
how the cost grows from 100k to 1M requests (same fleet) and from 100 to
10,000 pods (same requests). JSON keys: ``requests``, ``pods``, ``nodes``,
``wall_s``, ``requests_per_s``, plus ``cpu_s`` (the process's CPU time for
the run: well under ``wall_s`` when the run waited for a core),
``simfaas_requests_per_s``, ``ratio`` and ``growth``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from katyusha.sim.engine import Simulation
from katyusha.sim.record import Recorder
from katyusha.sim.scenario import parse

SIMFAAS_REQUESTS_PER_S = 900_000 / 42


def scenario(nodes: int, services: int, pods_per_service: int, requests: int, seed: int = 1):
    """``services`` services each driven to about ``pods_per_service`` pods, ``requests`` arrivals in all."""
    rate = pods_per_service * 7 / 10.0  # 7 requests in flight per pod at a 10 s mean service time
    duration = requests / (rate * services)
    return parse({
        "seed": seed,
        "duration": duration,
        "drain": 60,
        "nodes": [
            {"name": "n", "count": nodes, "cpu": 16, "ram-mb": 65536, "max-pods": 40, "registry-mbps": 200},
        ],
        "services": [
            {"name": f"s{i:03d}", "image-size-mb": 200, "start-time": "1s", "cpu": 0.25, "ram-mb": 256,
             "container-concurrency": 10, "service-time": "lognormal:10s,0.5",
             "workload": {"kind": "poisson", "rate": rate, "requests": requests // services}}
            for i in range(services)
        ],
        "katyusha": {"settings": {"request-timeout": 120}},
        "autoscaler": {"container-concurrency-target-default": 10, "container-concurrency-target-percentage": 70,
                       "stable-window": "20s", "scale-down-delay": "30s", "max-scale": pods_per_service},
        "placement": {"scheduler": "flow"},
        "record": {"requests": False},
    })


def run(nodes: int, services: int, pods_per_service: int, requests: int) -> dict:
    sc = scenario(nodes, services, pods_per_service, requests)
    sim = Simulation(sc, recorder=Recorder([s.name for s in sc.services], keep=False, requests=False))
    started = time.perf_counter()
    cpu_started = time.process_time()
    summary = sim.run()
    wall = time.perf_counter() - started
    # The process's own CPU time: with CPU time well under wall time the run waited for a core
    # (other work on the machine); with the two equal, a slow run is the CPU's own speed.
    cpu = time.process_time() - cpu_started
    done = sum(s["completed"] for s in summary["services"].values())
    arrived = sum(s["requests"] for s in summary["services"].values())
    peak = sum(1 for p in sim.pods.values() if p.joined)
    return {
        "requests": arrived,
        "completed": done,
        "drops": sum(s["drops"] for s in summary["services"].values()),
        "pods": len(sim.pods),
        "pods_serving_at_end": peak,
        "peak_serving_pods": summary["peak_serving_pods"],
        "nodes": nodes,
        "services": services,
        "max_scale": pods_per_service,
        "simulated_s": summary["simulated_s"],
        "events": summary["events"],
        "autoscaler_decisions": summary["autoscaler_decisions"],
        "wall_s": round(wall, 3),
        "cpu_s": round(cpu, 3),
        "requests_per_s": round(arrived / wall),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.sim_scale", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a tenth of the requests and pods (under 10 s)")
    parser.add_argument("--json", default=None, help="write the report here as JSON")
    parser.add_argument("--repeats", type=int, default=1, help="runs of the main case (the median is reported)")
    parser.add_argument("--main-only", action="store_true", help="skip the growth cases")
    args = parser.parse_args(argv)
    scale = 10 if args.quick else 1
    runs = [run(1000, 100, 100 // scale, 1_000_000 // scale) for _ in range(max(1, args.repeats))]
    main_case = dict(sorted(runs, key=lambda r: r["wall_s"])[len(runs) // 2])
    main_case["runs_wall_s"] = [r["wall_s"] for r in runs]
    main_case["runs_cpu_s"] = [r["cpu_s"] for r in runs]
    growth: dict = {"requests": [], "pods": []}
    if not args.quick and not args.main_only:
        small = run(1000, 100, 100, 100_000)
        growth["requests"] = [small, main_case]
        # The same 100k requests on 100, 1,000 and 10,000 pods (7 in flight per pod: fewer pods, a longer run).
        growth["pods"] = [run(1000, 10, 10, 100_000), run(1000, 100, 10, 100_000), small]
    report = {**main_case, "simfaas_requests_per_s": round(SIMFAAS_REQUESTS_PER_S),
              "ratio": round(main_case["requests_per_s"] / SIMFAAS_REQUESTS_PER_S, 2), "growth": growth}
    out = sys.stdout
    out.write(f"{main_case['requests']:,} requests, {main_case['pods']:,} pods created "
              f"({main_case['peak_serving_pods']:,} serving at the peak) on {main_case['nodes']:,} "
              f"nodes, {main_case['simulated_s']:.0f} simulated s: {main_case['wall_s']:.1f} s of wall time "
              f"({main_case['cpu_s']:.1f} s of CPU), "
              f"{main_case['requests_per_s']:,} requests/s "
              f"(SimFaaS's published example: {SIMFAAS_REQUESTS_PER_S:,.0f}/s; ratio {report['ratio']})\n")
    if len(runs) > 1:
        out.write(f"  wall s of each run: {', '.join(f'{r:.1f}' for r in main_case['runs_wall_s'])} (median above); "
                  f"CPU s: {', '.join(f'{r:.1f}' for r in main_case['runs_cpu_s'])}\n")
    for name, rows in growth.items():
        for row in rows:
            out.write(f"  growth by {name:8s}: {row['requests']:>9,} requests, {row['services']:>3} services x "
                      f"max {row['max_scale']:>3} pods ({row['pods']:>6,} created, {row['simulated_s']:6.0f} sim s): "
                      f"{row['wall_s']:7.2f} s, {row['requests_per_s']:>7,} req/s\n")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    from benchmarks import plots

    plots.write("sim_scale", report, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
