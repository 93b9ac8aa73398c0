"""The simulator against the live system on benchmarks.lb_quality's scenarios: p50 and p99 per policy, side by side.

Run as ``python -m benchmarks.sim_vs_live [--quick] [--sim-only] [--json PATH]``, or with
``--calibrate`` to measure the overheads the simulation models.

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

The simulated runs use the scenario's default overheads (``overhead.hop``
and ``overhead.pod``, docs/simulator.md "Overheads"), which ``--calibrate``
measures on this machine: one pod, requests one at a time, through katyusha
and straight to nonna.

The cold-start half runs :mod:`benchmarks.coldstart`'s plan (``--quick``: its
quick plan) both ways: live, its own fleet at zero pods and its step of load
through katyusha (without the nginx peer); simulated, the same slots (each its
own node, so each pulls the image as each live pod does), image, pull rate,
start time, KPA settings and step. It compares the number of cold starts and
the time from the step's start to the first response.

JSON keys: ``p50_rel_err[scenario][policy]`` and ``p99_rel_err[...]``
((simulated - live) / live), ``same_ranking[scenario]`` (policies ordered by
p99 alike), ``live`` and ``sim`` (the figures), ``coldstart`` (``sim``,
``live``, ``same_cold_starts``, ``first_response_rel_err``,
``first_response_within_15pct``). Not modelled, so part of the error: the
overheads' growth under load (CPU contention on the machine's two cores), the
load generator's own lag.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import statistics
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path

from benchmarks import coldstart as coldstart_bench
from benchmarks import lb_quality
from katyusha.core.feedback import parse_server_timing
from katyusha.sim.engine import Simulation
from katyusha.sim.scenario import parse
from sim_backend.slowdown import parse_slow_schedule

WARMUP_RATE = 100.0
SCENARIOS = ("heterogeneous", "replicas", "noisy")


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


def coldstart_scenario(plan: coldstart_bench.Plan, seed: int = 7):
    """benchmarks.coldstart's fleet as a scenario: each pod slot its own node (its own disk: it pulls), all null."""
    return parse({
        "seed": seed,
        "duration": plan.idle_s + plan.step_s,
        "drain": 30,
        "nodes": [{"name": "slot", "count": plan.pods, "max-pods": 1, "registry-mbps": plan.pull_mbps}],
        "services": [{"name": "bench", "image-size-mb": plan.image_mb, "start-time": f"{plan.start_s:g}s",
                      "container-concurrency": 4, "queue-depth": 500, "timeout": "30s",
                      "service-time": "exp:20ms",
                      "workload": {"kind": "step", "steps": [{"at": 0, "rate": 0},
                                                             {"at": plan.idle_s, "rate": plan.rate}]}}],
        "katyusha": {"settings": {"request-timeout": 30}},
        "autoscaler": {"retire-to": "null", "stable-window": f"{plan.stable_window_s}s",
                       "scale-to-zero-grace-period": f"{plan.grace_s:g}s", "tick-interval": f"{plan.tick_s:g}s",
                       "initial-scale": 0, "allow-zero-initial-scale": True,
                       "container-concurrency-target-default": 10, "max-scale": plan.pods},
    })


def simulate_coldstart(plan: coldstart_bench.Plan) -> dict:
    sim = Simulation(coldstart_scenario(plan))
    summary = sim.run()["services"]["bench"]
    done = [row[8] for row in sim.recorder.rows["requests"] if row[11] is None]
    return {"cold_starts": summary["cold_starts"], "requests": summary["requests"], "errors": summary["drops"],
            "first_response_s": round(min(done) - plan.idle_s, 3) if done else None,
            "p50_ms": summary["p50_ms"], "p99_ms": summary["p99_ms"]}


async def _live_coldstart(plan: coldstart_bench.Plan) -> dict:
    with tempfile.TemporaryDirectory(prefix="sim-vs-live-coldstart-") as tmp:
        fleet_file = Path(tmp) / "fleet.yaml"
        fleet_file.write_text(coldstart_bench.fleet_yaml(plan))
        fleet = coldstart_bench.FleetProcess(fleet_file, Path(tmp) / "state.json")
        doc = None
        try:
            doc = fleet.wait_ready()
            figures, _, _ = await coldstart_bench.katyusha_run(plan, doc)
        finally:
            fleet.stop(doc)
    return {"cold_starts": figures["cold_starts"]["total"], "requests": figures["sent"],
            "errors": figures["errors"], "first_response_s": figures["first_response_s"],
            "p50_ms": figures["p50_ms"], "p99_ms": figures["p99_ms"]}


def compare_coldstart(quick: bool) -> dict:
    """benchmarks.coldstart's step on a fleet at zero, live and simulated: cold starts and first response."""
    plan = coldstart_bench.QUICK if quick else coldstart_bench.FULL
    sim = simulate_coldstart(plan)
    live_figures = asyncio.run(_live_coldstart(plan))
    first_err = None
    if sim["first_response_s"] is not None and live_figures["first_response_s"]:
        first_err = round((sim["first_response_s"] - live_figures["first_response_s"])
                          / live_figures["first_response_s"], 3)
    return {"plan": "quick" if quick else "full", "sim": sim, "live": live_figures,
            "same_cold_starts": sim["cold_starts"] == live_figures["cold_starts"],
            "first_response_rel_err": first_err,
            "first_response_within_15pct": first_err is not None and abs(first_err) <= 0.15}


def _sequential(url: str, count: int) -> list[dict]:
    """``count`` requests one after another on one keep-alive connection: client latency, app and service time."""
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    out = []
    try:
        for _ in range(count):
            started = time.perf_counter()
            conn.request("GET", "/")
            response = conn.getresponse()
            body = response.read()
            latency = time.perf_counter() - started
            timing = parse_server_timing(response.getheader("server-timing") or "")
            out.append({"latency_ms": latency * 1000.0, "app_ms": timing.get("app"),
                        "service_ms": json.loads(body)["service_ms"]})
    finally:
        conn.close()
    return out


def calibrate(count: int = 400) -> dict:
    """The live overheads on this machine, one pod at a time (no queueing), for the scenario's ``overhead``.

    One sim-backend + nonna pod (concurrency 1, exp 20 ms) behind one katyusha;
    ``count`` sequential requests through katyusha, then as many straight to
    nonna. ``pod``: the median of nonna's app time (its ``Server-Timing``)
    less the app's own service time (its body): the HTTP hop from nonna to the
    app, which holds the pod's slot. ``hop``: half the median of the client's
    latency less the app time: the client, katyusha and nonna's share, each
    way (the simulator adds it to katyusha -> pod and pod -> katyusha).
    """
    scenario = lb_quality.Scenario("calibrate", [lb_quality.PodSpec("pod-0", 1.0)])
    with lb_quality.fleet(scenario) as pods, lb_quality.katyusha_replicas(pods, "round-robin", 1) as urls:
        _sequential(urls[0], 50)  # warm up both processes
        through = _sequential(urls[0], count)
        direct = _sequential(pods[0].nonna.url, count)
    med = statistics.median
    pod = med(r["app_ms"] - r["service_ms"] for r in through)
    hop = med(r["latency_ms"] - r["app_ms"] for r in through) / 2
    return {
        "requests": count,
        "hop_ms": round(hop, 3),
        "pod_ms": round(pod, 3),
        "through_katyusha_minus_app_ms": round(med(r["latency_ms"] - r["app_ms"] for r in through), 3),
        "straight_to_nonna_minus_app_ms": round(med(r["latency_ms"] - r["app_ms"] for r in direct), 3),
        "p99_through_katyusha_minus_app_ms": round(
            sorted(r["latency_ms"] - r["app_ms"] for r in through)[int(0.99 * count)], 3),
    }


def ranking(figures: dict) -> list[str]:
    return sorted(figures, key=lambda policy: (figures[policy]["p99_ms"], policy))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.sim_vs_live", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="5 s runs (default 20 s, as lb_quality)")
    parser.add_argument("--duration", type=float, default=None)
    parser.add_argument("--load", type=float, default=0.9, help="share of capacity (default 0.9)")
    parser.add_argument("--policy", action="append", help="policies (default: lb_quality's)")
    parser.add_argument("--scenario", action="append",
                        help=f"lb_quality scenarios to compare (default: {', '.join(SCENARIOS)})")
    parser.add_argument("--sim-only", action="store_true", help="simulate only (no processes)")
    parser.add_argument("--no-coldstart", action="store_true", help="skip the cold-start comparison")
    parser.add_argument("--calibrate", action="store_true",
                        help="measure the live overheads (the scenario's overhead.hop and overhead.pod) and stop")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    if args.calibrate:
        lb_quality.exit_on_signals()
        figures = calibrate()
        print(json.dumps(figures, indent=2))
        if args.json:
            Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")
        return 0
    duration = args.duration or (5.0 if args.quick else 20.0)
    policies = args.policy or list(lb_quality.KATYUSHA_POLICIES)
    report: dict = {"duration_s": duration, "load": args.load, "sim": {}, "live": {}, "p50_rel_err": {},
                    "p99_rel_err": {}, "same_ranking": {}, "coldstart": None}
    if not args.sim_only:
        lb_quality.exit_on_signals()
    for scenario in lb_quality.scenarios():
        if scenario.name not in (args.scenario or SCENARIOS):
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
    if not args.no_coldstart:
        if args.sim_only:
            plan = coldstart_bench.QUICK if args.quick else coldstart_bench.FULL
            report["coldstart"] = {"sim": simulate_coldstart(plan)}
        else:
            report["coldstart"] = compare_coldstart(args.quick)
        cold = report["coldstart"]
        print(f"coldstart ({'quick' if args.quick else 'full'} plan): sim {cold['sim']}")
        if "live" in cold:
            print(f"coldstart: live {cold['live']}\n  same number of cold starts: {cold['same_cold_starts']}, "
                  f"first response rel err {cold['first_response_rel_err']}")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    from benchmarks import plots

    plots.write("sim_vs_live", report, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
