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

Fairness: every system gets the same pods, the same arrival schedule (same
seeds), the same warm-up, and starts on idle pods (the harness waits until
every nonna reports an empty queue, so one system's backlog never lands on
the next). In ``noisy`` every measured run starts at the same phase of the
slow schedule, so each system meets the same slow windows. katyusha's
policies and the peers are interleaved, so a change in the machine's load
during the run does not fall on one side only.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from benchmarks import loadgen, peers
from katyusha.procs import Proc, exit_on_signals, script
from katyusha.progress import bar

KATYUSHA_POLICIES = ("round-robin", "least-in-flight", "p2c", "jsq-piggyback",
                     "sed-piggyback", "peak-ewma", "prequal")
PEERS = {
    "nginx least_conn": ("nginx", "least_conn"),
    "nginx random two least_conn": ("nginx", "random two least_conn"),
    "haproxy leastconn": ("haproxy", "leastconn"),
    "haproxy random(2)": ("haproxy", "random(2)"),
}
MEAN_SERVICE_S = 0.020
SLOW_PERIOD_S, SLOW_DURATION_S = 10.0, 3.0
WARMUP_S = 1.0
DRAIN_TIMEOUT_S = 30.0


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
    schedule = f"period={SLOW_PERIOD_S:g}s,duration={SLOW_DURATION_S:g}s,factor=0.25"
    noisy = [PodSpec(f"pod-{i}", 1.0, schedule if i == 0 else "") for i in range(8)]
    return [Scenario("heterogeneous", hetero), Scenario("replicas", hetero, replicas=3),
            Scenario("noisy", noisy)]


@dataclass
class Pod:
    spec: PodSpec
    sim: object
    nonna: object
    started: float = 0.0  # time.monotonic() when the sim-backend was ready (its schedule's origin)

    def served(self) -> int:
        with urllib.request.urlopen(self.sim.admin + "/state", timeout=5) as reply:
            return int(json.loads(reply.read())["counters"]["served"])

    def holding(self) -> int:
        """Requests nonna holds now (queued + executing); -1 when it does not answer."""
        try:
            with urllib.request.urlopen(self.nonna.admin + "/stats", timeout=5) as reply:
                stats = json.loads(reply.read())
        except (OSError, urllib.error.URLError, ValueError):
            return -1
        return int(stats.get("queue_length", 0)) + int(stats.get("in_flight", 0))


def wait_drained(pods: list[Pod], timeout_s: float = DRAIN_TIMEOUT_S) -> float:
    """Wait until every pod is idle, so no system inherits another's backlog; returns seconds waited."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if all(pod.holding() == 0 for pod in pods):
            break
        time.sleep(0.1)
    return time.monotonic() - started


def wait_phase(pods: list[Pod], duration_s: float) -> None:
    """Sleep until a measured run of ``duration_s`` would end as a slow window ends.

    Only for fleets with a slow schedule; every system then meets the same
    slow windows at the same offsets into its run.
    """
    slow = [pod for pod in pods if pod.spec.slow_schedule]
    if not slow:
        return
    # Windows are [period - duration, period) of each period from the pod's start.
    origin = slow[0].started
    end_phase = SLOW_PERIOD_S  # the end of a slow window
    start_phase = (end_phase - duration_s - WARMUP_S) % SLOW_PERIOD_S
    phase = (time.monotonic() - origin) % SLOW_PERIOD_S
    time.sleep((start_phase - phase) % SLOW_PERIOD_S)


@contextlib.contextmanager
def fleet(scenario: Scenario) -> Iterator[list[Pod]]:
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
            ready_at = time.monotonic()
            started.append(sim)
            nonna = Proc([script("nonna"), "--port", "0", "--admin-port", "0",
                          "--upstream", sim.url, "--upstream-health", sim.admin + "/healthz",
                          "--concurrency", "1", "--queue-depth", "100",
                          "--pod", spec.name, "--node", node])
            started.append(nonna)
            pods.append(Pod(spec, sim, nonna, ready_at))
        yield pods
    finally:
        for proc in reversed(started):
            with contextlib.suppress(Exception):
                proc.terminate()
            proc.kill()


@contextlib.contextmanager
def katyusha_replicas(pods: list[Pod], policy: str, replicas: int,
                      extra: tuple[str, ...] = ()) -> Iterator[list[str]]:
    procs = []
    try:
        for i in range(replicas):
            argv = [script("katyusha"), "serve", "--port", "0", "--admin-port", "0",
                    "--policy", policy, "--seed", str(i + 1), *extra]
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


def systems(pods: list[Pod], replicas: int, only: list[str] | None = None,
            policies: tuple[str, ...] = KATYUSHA_POLICIES, extra: tuple[str, ...] = ()):
    """(name, context manager factory) of every system, katyusha's policies and peers interleaved."""
    ours = [(f"katyusha {policy}", lambda p=policy: katyusha_replicas(pods, p, replicas, extra))
            for policy in policies]
    theirs = [(name, lambda k=kind, b=balance: peer_replicas(pods, k, b, replicas))
              for name, (kind, balance) in PEERS.items()]
    order = []
    while ours or theirs:
        order.extend(ours[:2])
        del ours[:2]
        order.extend(theirs[:1])
        del theirs[:1]
    for name, make in order:
        if not only or any(word in name for word in only):
            yield name, make


def measure(urls: list[str], pods: list[Pod], rate: float, duration_s: float,
            timeout_s: float) -> tuple[dict, list[float]]:
    wait_drained(pods)
    wait_phase(pods, duration_s)
    # The same warm-up for every system: pools filled, every pod reported and timed.
    asyncio.run(loadgen.run_open_loop(urls, rate=min(rate, 100), duration_s=WARMUP_S, seed=99))
    before = {p.spec.name: p.served() for p in pods}
    result = asyncio.run(loadgen.run_open_loop(urls, rate=rate, duration_s=duration_s,
                                               timeout_s=timeout_s, seed=7))
    wait_drained(pods, timeout_s)
    after = {p.spec.name: p.served() for p in pods}
    summary = result.summary()
    summary["per_pod"] = {name: after[name] - before[name] for name in after}
    return summary, sorted(s.latency_ms for s in result.samples)


def _best_peer(systems_at: dict) -> tuple[float, str] | None:
    peers_at = [(v["p99_ms"], k) for k, v in systems_at.items() if not k.startswith("katyusha")]
    return min(peers_at) if peers_at else None


def compare(by_load: dict, policy: str, load: str = "90%") -> dict | None:
    """The policy's p99 beside the best peer's at ``load``; None when either was not run."""
    systems_at = by_load.get(load, {}).get("systems", {})
    best = _best_peer(systems_at)
    ours = systems_at.get(f"katyusha {policy}")
    if best is None or ours is None:
        return None
    return {
        "ratio": round(ours["p99_ms"] / best[0], 3),
        "katyusha_p99_ms": ours["p99_ms"], "best_peer": best[1],
        "best_peer_p99_ms": best[0], "katyusha_errors": ours["errors"],
        "best_peer_errors": systems_at[best[1]]["errors"],
    }


def every_policy_ratio(by_load: dict) -> dict:
    """{load: {policy: p99 / best peer's p99}} for every katyusha policy that ran."""
    out = {}
    for load, entry in by_load.items():
        best = _best_peer(entry["systems"])
        if best is None:
            continue
        out[load] = {k.removeprefix("katyusha "): round(v["p99_ms"] / best[0], 3)
                     for k, v in entry["systems"].items() if k.startswith("katyusha")}
    return out


def plot(figures: dict, latencies: dict, out_dir: Path) -> list[str]:
    """One latency-CDF PNG per scenario (a panel per load), through benchmarks.plots."""
    from benchmarks import plots

    written = []
    for scenario, by_load in latencies.items():
        panels = {f"{load} of capacity": by_system for load, by_system in by_load.items()}
        path = plots.latency_cdf(out_dir / f"lb_quality_{scenario}.png", panels, title=scenario, tail_from=0.9)
        if path is not None:
            written.append(str(path))
    return written


def markdown(result: dict) -> str:
    """Tables (one per scenario and load) of a run's JSON, as docs/policies.md shows them."""
    lines = []
    for scenario, by_load in result["scenarios"].items():
        for load, entry in by_load.items():
            best = _best_peer(entry["systems"])
            lines += [f"**{scenario}, {load} load** ({entry['rate']:g} req/s)", "",
                      "| system | p50 ms | p99 ms | p99.9 ms | errors | p99 / best peer |",
                      "|---|---|---|---|---|---|"]
            for name, row in sorted(entry["systems"].items(), key=lambda kv: kv[1]["p99_ms"]):
                ratio = f"{row['p99_ms'] / best[0]:.2f}" if best else ""
                lines.append(f"| {name} | {row['p50_ms']:.0f} | {row['p99_ms']:.0f} | "
                             f"{row['p999_ms']:.0f} | {row['errors']:.2%} | {ratio} |")
            lines.append("")
    return "\n".join(lines)


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
    parser.add_argument("--system", action="append",
                        help="run only systems whose name contains this (repeatable)")
    parser.add_argument("--policy", action="append",
                        help="katyusha policies to run (repeatable; default: all)")
    parser.add_argument("--katyusha-arg", action="append", default=[], metavar="ARG",
                        help="extra argument for every `katyusha serve` (repeatable, e.g. "
                             "--katyusha-arg=--pod-capacity-factor=2)")
    parser.add_argument("--load", action="append", type=float,
                        help="share of capacity to run at (repeatable; default 0.7 and 0.9)")
    parser.add_argument("--markdown-from", metavar="JSON",
                        help="print the tables of an earlier run's JSON as Markdown, and exit")
    args = parser.parse_args(argv)
    if args.markdown_from:
        print(markdown(json.loads(Path(args.markdown_from).read_text())))
        return 0
    peers.require("nginx", "haproxy")
    # SIGTERM unwinds like Ctrl-C, so every pod and balancer started is stopped.
    exit_on_signals()
    from katyusha.core.policies import DEFAULT_POLICY

    default_policy = args.default_policy or DEFAULT_POLICY
    duration = args.duration or (5.0 if args.quick else 20.0)
    timeout_s = 5.0
    figures: dict = {}
    latencies: dict = {}
    ratios: dict = {}
    progress = bar(None, "lb_quality", "run")
    for scenario in scenarios():
        if args.scenario and scenario.name not in args.scenario:
            continue
        print(f"\n== {scenario.name}: {len(scenario.pods)} pods, {scenario.replicas} replica(s), "
              f"capacity {scenario.capacity_rps:.0f} req/s", flush=True)
        figures[scenario.name] = {}
        latencies[scenario.name] = {}
        with fleet(scenario) as pods:
            for load in args.load or (0.7, 0.9):
                rate = scenario.capacity_rps * load
                key = f"{int(load * 100)}%"
                figures[scenario.name][key] = {"rate": round(rate, 1), "systems": {}}
                latencies[scenario.name][key] = {}
                print(f"-- {key} load: {rate:.0f} req/s for {duration:g} s", flush=True)
                for name, make in systems(pods, scenario.replicas, args.system,
                                              tuple(args.policy or KATYUSHA_POLICIES),
                                              tuple(args.katyusha_arg)):
                    with make() as urls:
                        summary, values = measure(urls, pods, rate, duration, timeout_s)
                    figures[scenario.name][key]["systems"][name] = summary
                    progress.update(1)
                    latencies[scenario.name][key][name] = values
                    print(f"  {name:30s} p50 {summary['p50_ms']:8.1f}  p99 {summary['p99_ms']:8.1f}"
                          f"  p99.9 {summary['p999_ms']:8.1f} ms  errors {summary['errors']:.4f}"
                          f"  per pod {list(summary['per_pod'].values())}", flush=True)
        ratio = compare(figures[scenario.name], default_policy)
        if ratio is not None:
            ratios[scenario.name] = ratio
    progress.close()
    pngs = plot(figures, latencies, Path(args.png))
    print(f"\ndefault policy: {default_policy}")
    for name, r in ratios.items():
        print(f"{name:14s} p99 katyusha {r['katyusha_p99_ms']:.1f} ms / best peer "
              f"({r['best_peer']}) {r['best_peer_p99_ms']:.1f} ms = {r['ratio']:.2f}")
    result = {
        "default_policy": default_policy,
        "katyusha_args": args.katyusha_arg,
        "duration_s": duration,
        "scenarios": figures,
        "p99_ratio_vs_best_peer": {k: v["ratio"] for k, v in ratios.items()},
        "ratio_detail": ratios,
        "every_policy_p99_ratio": {name: every_policy_ratio(by_load)
                                   for name, by_load in figures.items()},
        "png": pngs,
        "quick": args.quick,
    }
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
