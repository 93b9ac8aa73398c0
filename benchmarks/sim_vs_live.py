"""The simulator against the live system on benchmarks.lb_quality's scenarios: p50 and p99 per policy, side by side.

Run as ``python -m benchmarks.sim_vs_live [--quick] [--sim-only] [--json PATH]``.

For each scenario of :mod:`benchmarks.lb_quality` (``heterogeneous``,
``replicas``, ``noisy``: its definitions, pods, speeds, slow schedule,
replicas and load) and each katyusha policy, the live run is lb_quality's own
(real sim-backend and nonna processes, katyusha replicas, its open-loop
generator, its warm-up and slow-window alignment), and the simulated run is
the same fleet as a scenario for katyusha.sim: one node per pod at the pod's
speed, exponential 20 ms service, nonna's concurrency 1 and queue depth 100,
the same warm-up (1 s at up to 100 requests/s, not measured), the same load,
and for ``noisy`` the same slow windows (sim_backend's own SlowSchedule,
applied to the pod's speed by a hook at every window edge, at the phase the
live run is aligned to). Arrivals and service times are drawn from the
simulator's own seeded streams: the same distributions, not the same draws.

JSON keys: ``p50_rel_err[scenario][policy]`` and ``p99_rel_err[...]``
((simulated - live) / live), ``same_ranking[scenario]`` (policies ordered by
p99 alike), ``live`` and ``sim`` (the figures), ``coldstart`` (None: the
cold-start comparison against benchmarks.coldstart is not done).
Not modelled, so part of the error: HTTP and event-loop overhead, loopback
latency, the load generator's own lag.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from benchmarks import lb_quality
from katyusha.sim.engine import Simulation
from katyusha.sim.scenario import parse
from sim_backend.slowdown import parse_slow_schedule

WARMUP_RATE = 100.0


def sim_scenario(scenario: lb_quality.Scenario, policy: str, rate: float, duration: float, seed: int = 7):
    warm = lb_quality.WARMUP_S
    return parse({
        "seed": seed,
        "duration": warm + duration,
        "drain": 30,
        "nodes": [{"name": pod.name, "speed": pod.speed, "max-pods": 1} for pod in scenario.pods],
        "services": [{"name": "bench", "pods": len(scenario.pods), "autoscale": False,
                      "container-concurrency": 1, "queue-depth": 100,
                      "service-time": f"exp:{lb_quality.MEAN_SERVICE_S * 1000:g}ms",
                      "workload": {"kind": "step", "steps": [{"at": 0, "rate": min(rate, WARMUP_RATE)},
                                                             {"at": warm, "rate": rate}]}}],
        "katyusha": {"replicas": scenario.replicas, "settings": {"policy": policy}},
        "autoscaler": {"enabled": False},
    })


def simulate(scenario: lb_quality.Scenario, policy: str, rate: float, duration: float) -> dict:
    sim = Simulation(sim_scenario(scenario, policy, rate, duration))
    warm = lb_quality.WARMUP_S
    slow = [(pod.name, parse_slow_schedule(pod.slow_schedule)) for pod in scenario.pods if pod.slow_schedule]
    if slow:
        # lb_quality aligns each measured run to end as a slow window ends: phase at t=0 of the warm-up.
        period = lb_quality.SLOW_PERIOD_S
        phase0 = (period - duration - warm) % period

        def apply(s):
            for node_name, schedule in slow:
                for pod in s.pods.values():
                    if pod.node.name == node_name:
                        base = s.node_by_name[node_name].speed
                        pod.speed = base * schedule.factor_at(s.env.now + phase0)

        edges = set()
        for _, schedule in slow:
            t = 0.0
            while t < warm + duration + 30:
                for offset in (schedule.offset_s, schedule.offset_s + schedule.duration_s):
                    edge = (offset - phase0) % schedule.period_s + t
                    edges.add(round(edge, 9))
                t += schedule.period_s
        sim.at(0.0, apply)
        for edge in sorted(edges):
            sim.at(edge, apply)
    sim.run()
    latencies = sorted(row[9] for row in sim.recorder.rows["requests"] if row[4] >= warm and row[11] is None)
    drops = sum(1 for row in sim.recorder.rows["requests"] if row[4] >= warm and row[11] is not None)

    def q(share: float) -> float:
        return round(latencies[min(len(latencies) - 1, int(share * len(latencies)))], 2)

    return {"p50_ms": q(0.5), "p99_ms": q(0.99), "p999_ms": q(0.999), "requests": len(latencies), "drops": drops}


def live(scenario: lb_quality.Scenario, policies: list[str], rate: float, duration: float) -> dict:
    out = {}
    with lb_quality.fleet(scenario) as pods:
        for policy in policies:
            with lb_quality.katyusha_replicas(pods, policy, scenario.replicas) as urls:
                summary, _ = lb_quality.measure(urls, pods, rate, duration, 5.0)
            out[policy] = {k: summary[k] for k in ("p50_ms", "p99_ms", "p999_ms", "errors")}
            print(f"  live {scenario.name:14s} {policy:16s} p50 {summary['p50_ms']:8.2f}  p99 {summary['p99_ms']:8.2f}",
                  flush=True)
    return out


def ranking(figures: dict) -> list[str]:
    return sorted(figures, key=lambda policy: (figures[policy]["p99_ms"], policy))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.sim_vs_live", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="5 s runs (default 20 s, as lb_quality)")
    parser.add_argument("--duration", type=float, default=None)
    parser.add_argument("--load", type=float, default=0.9, help="share of capacity (default 0.9)")
    parser.add_argument("--policy", action="append", help="policies (default: lb_quality's)")
    parser.add_argument("--scenario", action="append", help="only these scenarios")
    parser.add_argument("--sim-only", action="store_true", help="simulate only (no processes)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    duration = args.duration or (5.0 if args.quick else 20.0)
    policies = args.policy or list(lb_quality.KATYUSHA_POLICIES)
    report: dict = {"duration_s": duration, "load": args.load, "sim": {}, "live": {}, "p50_rel_err": {},
                    "p99_rel_err": {}, "same_ranking": {}, "coldstart": None}
    if not args.sim_only:
        lb_quality.exit_on_signals()
    for scenario in lb_quality.scenarios():
        if args.scenario and scenario.name not in args.scenario:
            continue
        rate = scenario.capacity_rps * args.load
        print(f"== {scenario.name}: {len(scenario.pods)} pods, {scenario.replicas} replica(s), "
              f"{rate:.0f} req/s for {duration:g} s", flush=True)
        sims = report["sim"][scenario.name] = {}
        for policy in policies:
            sims[policy] = simulate(scenario, policy, rate, duration)
            print(f"  sim  {scenario.name:14s} {policy:16s} p50 {sims[policy]['p50_ms']:8.2f}  "
                  f"p99 {sims[policy]['p99_ms']:8.2f}", flush=True)
        if args.sim_only:
            continue
        lives = report["live"][scenario.name] = live(scenario, policies, rate, duration)
        report["p50_rel_err"][scenario.name] = {
            p: round((sims[p]["p50_ms"] - lives[p]["p50_ms"]) / lives[p]["p50_ms"], 3) for p in policies}
        report["p99_rel_err"][scenario.name] = {
            p: round((sims[p]["p99_ms"] - lives[p]["p99_ms"]) / lives[p]["p99_ms"], 3) for p in policies}
        report["same_ranking"][scenario.name] = ranking(sims) == ranking(lives)
    if report["live"]:
        print(f"\n{'scenario':14s} {'policy':16s} {'p50 sim':>9s} {'p50 live':>9s} {'err':>7s} "
              f"{'p99 sim':>9s} {'p99 live':>9s} {'err':>7s}")
        for name, lives in report["live"].items():
            for p in policies:
                s, lv = report["sim"][name][p], lives[p]
                print(f"{name:14s} {p:16s} {s['p50_ms']:9.2f} {lv['p50_ms']:9.2f} "
                      f"{report['p50_rel_err'][name][p]:+7.1%} {s['p99_ms']:9.2f} {lv['p99_ms']:9.2f} "
                      f"{report['p99_rel_err'][name][p]:+7.1%}")
            print(f"{name:14s} same ranking by p99: {report['same_ranking'][name]}  "
                  f"(sim {ranking(report['sim'][name])}, live {ranking(lives)})")
    print("coldstart: not compared (benchmarks.coldstart against the simulator is not done)")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    from benchmarks import plots

    plots.write("sim_vs_live", report, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
