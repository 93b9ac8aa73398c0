"""Load-balancing quality: tail latency of each policy beside nginx and HAProxy, same pods.

Run as ``python -m benchmarks.lb_quality [--quick] [--json PATH] [--png DIR]``.
Needs nginx and haproxy on PATH (``make bench-deps``).

A fleet of real processes (sim-backend + nonna per pod, container concurrency
1) is started once per scenario; every system is put in front of the same
pods in turn and loaded by the open-loop generator (benchmarks/loadgen.py:
Poisson arrivals at a fixed rate; closed-loop tools like wrk and hey send less
when the system slows, which hides the tail). Scenarios, each at 70% and 90%
of the fleet's capacity (sum over pods of concurrency / mean service time):

- ``heterogeneous``: 8 pods, exp 20 ms, two of them four times slower.
- ``replicas``: the same pods behind 3 balancer replicas, load spread evenly.
- ``noisy``: 8 equal pods; one turns four times slower for 3 s every 10 s.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from benchmarks import loadgen, peers

KATYUSHA_POLICIES = ("round-robin", "least-in-flight", "p2c", "jsq-piggyback",
                     "sed-piggyback", "peak-ewma", "prequal")
PEERS = {
    "nginx least_conn": ("nginx", "least_conn"),
    "nginx random two least_conn": ("nginx", "random two least_conn"),
    "haproxy leastconn": ("haproxy", "leastconn"),
    "haproxy random(2)": ("haproxy", "random(2)"),
}
MEAN_SERVICE_S = 0.020


@dataclass
class PodSpec:
    name: str
    speed: float = 1.0
    slow_schedule: str = ""


@dataclass
class Scenario:
    name: str
    pods: list[PodSpec]
    replicas: int = 1

    @property
    def capacity_rps(self) -> float:
        # Concurrency 1 per pod: a pod completes speed / mean-service-time requests a second.
        return sum(p.speed / MEAN_SERVICE_S for p in self.pods)


def scenarios() -> list[Scenario]:
    hetero = [PodSpec(f"pod-{i}", 0.25 if i < 2 else 1.0) for i in range(8)]
    noisy = [PodSpec(f"pod-{i}", 1.0, "period=10s,duration=3s,factor=0.25" if i == 0 else "")
             for i in range(8)]
    return [Scenario("heterogeneous", hetero), Scenario("replicas", hetero, replicas=3),
            Scenario("noisy", noisy)]


@dataclass
class Pod:
    spec: PodSpec
    sim: object
    nonna: object

    def served(self) -> int:
        with urllib.request.urlopen(self.sim.admin + "/state", timeout=5) as reply:
            return int(json.loads(reply.read())["counters"]["served"])


@contextlib.contextmanager
def fleet(scenario: Scenario) -> Iterator[list[Pod]]:
    from tests.procs import Proc, script

    started: list = []
    try:
        pods = []
        for i, spec in enumerate(scenario.pods):
            node = f"node-{i % 2 + 1}"
            argv = [script("sim-backend"), "--port", "0", "--admin-port", "0", "--pod", spec.name,
                    "--node", node, "--state", "warm", "--service-time", "exp:20ms",
                    "--speed", str(spec.speed), "--seed", str(i + 1)]
            if spec.slow_schedule:
                argv += ["--slow-schedule", spec.slow_schedule]
            sim = Proc(argv)
            started.append(sim)
            nonna = Proc([script("nonna"), "--port", "0", "--admin-port", "0",
                          "--upstream", sim.url, "--upstream-health", sim.admin + "/healthz",
                          "--concurrency", "1", "--queue-depth", "100",
                          "--pod", spec.name, "--node", node])
            started.append(nonna)
            pods.append(Pod(spec, sim, nonna))
        yield pods
    finally:
        for proc in reversed(started):
            with contextlib.suppress(Exception):
                proc.terminate()
            proc.kill()


@contextlib.contextmanager
def katyusha_replicas(pods: list[Pod], policy: str, replicas: int) -> Iterator[list[str]]:
    from tests.procs import Proc, script

    procs = []
    try:
        for i in range(replicas):
            argv = [script("katyusha"), "serve", "--port", "0", "--admin-port", "0",
                    "--policy", policy, "--seed", str(i + 1)]
            for pod in pods:
                argv += ["--pod", f"{pod.nonna.url},name={pod.spec.name},"
                                  f"node=n,admin={pod.nonna.admin}"]
            procs.append(Proc(argv, ready_timeout=30))
        yield [p.url for p in procs]
    finally:
        for proc in procs:
            with contextlib.suppress(Exception):
                proc.terminate()
            proc.kill()


@contextlib.contextmanager
def peer_replicas(pods: list[Pod], kind: str, balance: str, replicas: int) -> Iterator[list[str]]:
    upstreams = [pod.nonna.url for pod in pods]
    with contextlib.ExitStack() as stack:
        urls = []
        for _ in range(replicas):
            if kind == "nginx":
                running = stack.enter_context(peers.nginx_proxy(upstreams, balance=balance))
            else:
                running = stack.enter_context(peers.haproxy_proxy(upstreams, balance=balance))
            urls.append(running.url)
        yield urls


def systems(pods: list[Pod], replicas: int):
    for policy in KATYUSHA_POLICIES:
        yield f"katyusha {policy}", lambda p=policy: katyusha_replicas(pods, p, replicas)
    for name, (kind, balance) in PEERS.items():
        yield name, lambda k=kind, b=balance: peer_replicas(pods, k, b, replicas)


def measure(urls: list[str], pods: list[Pod], rate: float, duration_s: float,
            timeout_s: float) -> tuple[dict, list[float]]:
    before = {p.spec.name: p.served() for p in pods}
    # A short warm-up at low rate fills pools and gives every pod a first report.
    asyncio.run(loadgen.run_open_loop(urls, rate=min(rate, 50), duration_s=0.5, seed=99))
    result = asyncio.run(loadgen.run_open_loop(urls, rate=rate, duration_s=duration_s,
                                               timeout_s=timeout_s, seed=7))
    time.sleep(0.5)
    after = {p.spec.name: p.served() for p in pods}
    summary = result.summary()
    summary["per_pod"] = {name: after[name] - before[name] for name in after}
    return summary, sorted(s.latency_ms for s in result.samples)


def plot(figures: dict, latencies: dict, out_dir: Path) -> list[str]:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no PNG (pip install -e '.[bench]')")
        return []
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for scenario, by_load in latencies.items():
        fig, axes = plt.subplots(1, len(by_load), figsize=(7 * len(by_load), 5), squeeze=False)
        for ax, (load, by_system) in zip(axes[0], by_load.items(), strict=True):
            for system, values in by_system.items():
                if not values:
                    continue
                n = len(values)
                ys = [(i + 1) / n for i in range(n)]
                style = "-" if system.startswith("katyusha") else "--"
                ax.plot(values, ys, style, label=system, linewidth=1.2)
            ax.set_xscale("log")
            ax.set_ylim(0.9, 1.0005)
            ax.set_xlabel("latency (ms, log)")
            ax.set_ylabel("CDF (tail from 0.9)")
            ax.set_title(f"{scenario} at {load} of capacity")
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=7)
        path = out_dir / f"lb_quality_{scenario}.png"
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(str(path))
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.lb_quality", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="short runs, same keys")
    parser.add_argument("--json", metavar="PATH")
    parser.add_argument("--png", metavar="DIR", default="bench-results")
    parser.add_argument("--duration", type=float, help="seconds per run (default 20, quick 5)")
    parser.add_argument("--default-policy", default=None,
                        help="the katyusha policy the ratio is computed for (default: katyusha's)")
    parser.add_argument("--scenario", action="append", help="run only these scenarios")
    args = parser.parse_args(argv)
    peers.require("nginx", "haproxy")
    from katyusha.core.policies import DEFAULT_POLICY

    default_policy = args.default_policy or DEFAULT_POLICY
    duration = args.duration or (5.0 if args.quick else 20.0)
    timeout_s = 5.0
    figures: dict = {}
    latencies: dict = {}
    ratios: dict = {}
    for scenario in scenarios():
        if args.scenario and scenario.name not in args.scenario:
            continue
        print(f"\n== {scenario.name}: {len(scenario.pods)} pods, {scenario.replicas} replica(s), "
              f"capacity {scenario.capacity_rps:.0f} req/s", flush=True)
        figures[scenario.name] = {}
        latencies[scenario.name] = {}
        with fleet(scenario) as pods:
            for load in (0.7, 0.9):
                rate = scenario.capacity_rps * load
                key = f"{int(load * 100)}%"
                figures[scenario.name][key] = {"rate": round(rate, 1), "systems": {}}
                latencies[scenario.name][key] = {}
                print(f"-- {key} load: {rate:.0f} req/s for {duration:g} s", flush=True)
                for name, make in systems(pods, scenario.replicas):
                    with make() as urls:
                        summary, values = measure(urls, pods, rate, duration, timeout_s)
                    figures[scenario.name][key]["systems"][name] = summary
                    latencies[scenario.name][key][name] = values
                    print(f"  {name:30s} p50 {summary['p50_ms']:8.1f}  p99 {summary['p99_ms']:8.1f}"
                          f"  p99.9 {summary['p999_ms']:8.1f} ms  errors {summary['errors']:.4f}"
                          f"  per pod {list(summary['per_pod'].values())}", flush=True)
        at90 = figures[scenario.name]["90%"]["systems"]
        best_peer = min((v["p99_ms"], k) for k, v in at90.items() if not k.startswith("katyusha"))
        ours = at90[f"katyusha {default_policy}"]
        ratios[scenario.name] = {
            "ratio": round(ours["p99_ms"] / best_peer[0], 3),
            "katyusha_p99_ms": ours["p99_ms"], "best_peer": best_peer[1],
            "best_peer_p99_ms": best_peer[0], "katyusha_errors": ours["errors"],
            "best_peer_errors": at90[best_peer[1]]["errors"],
        }
    pngs = plot(figures, latencies, Path(args.png))
    print(f"\ndefault policy: {default_policy}")
    for name, r in ratios.items():
        print(f"{name:14s} p99 katyusha {r['katyusha_p99_ms']:.1f} ms / best peer "
              f"({r['best_peer']}) {r['best_peer_p99_ms']:.1f} ms = {r['ratio']:.2f}")
    result = {
        "default_policy": default_policy,
        "duration_s": duration,
        "scenarios": figures,
        "p99_ratio_vs_best_peer": {k: v["ratio"] for k, v in ratios.items()},
        "ratio_detail": ratios,
        "png": pngs,
        "quick": args.quick,
    }
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
