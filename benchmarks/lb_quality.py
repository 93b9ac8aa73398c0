"""Load-balancing quality: tail latency of katyusha beside nginx and HAProxy, same pods, repeated.

Run as ``python -m benchmarks.lb_quality [--quick] [--json PATH] [--png DIR]``.
Needs nginx and haproxy on PATH (``make bench-deps``) and numpy (``.[bench]``).

A fleet of real processes (sim-backend + nonna per pod) is started once per
scenario; every system is put in front of the same pods in turn and loaded by
the open-loop generator (benchmarks/loadgen.py: Poisson or bursty arrivals at
a fixed mean rate; closed-loop tools like wrk and hey send less when the
system slows, which hides the tail). Loads are shares of the fleet's capacity
(sum over pods of concurrency x speed / mean service time).

Named scenarios:

- ``heterogeneous``: 8 pods, exp 20 ms, two of them four times slower.
- ``replicas``: the same pods behind 3 balancer replicas, load spread evenly.
- ``noisy``: 8 equal pods; one turns four times slower for 3 s every 10 s.
- ``concurrency``: 8 pods of container concurrency 4, two four times slower.
- ``heavy-tail``: 8 equal pods, lognormal service times (mean 20 ms, sigma 1).
- ``bursty``: the heterogeneous pods under a two-state modulated Poisson process.
- ``pods32``: 32 pods (exp 100 ms), four of them four times slower.
- ``mixed``: 8 pods of speeds 0.25 to 2.
- ``replicas-concurrency``: the ``concurrency`` pods behind 3 balancer replicas.

The held-out set: scenarios drawn from those families (pod count, concurrency,
service-time shape, arrivals, speeds) with a fixed seed; the even-numbered
ones are the ``tune`` half (defaults may be chosen on them), the odd-numbered
the ``heldout`` half (only reported): ``heldout_median_ratio``.

Each system runs ``--repeats`` times at each load (5 in the full mode),
interleaved: round r runs every system once, in an order rotated each round,
with the arrival seed of round r for all, so a change in the machine's load
does not fall on one side only. Every p99 and every ratio carries a 95%
bootstrap confidence interval (runs resampled, then requests within each run).

Fairness: every system gets the same pods, the same arrival schedules, the
same warm-up, and starts on idle pods (the harness waits until every nonna
reports an empty queue). In ``noisy`` every measured run starts at the same
phase of the slow schedule. Peers: nginx ``least_conn`` and ``random two
least_conn``, HAProxy ``leastconn``, and HAProxy ``leastconn`` with each
server's ``maxconn`` set to the pods' concurrency (HAProxy's advice for
servers of a fixed concurrency). In ``heavy-tail`` katyusha also runs with
hedging on (``katyusha ... hedge``): its p99.9 and the share of extra requests
the pods served are in ``hedging``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import random
import statistics
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from benchmarks import loadgen, peers
from katyusha.procs import Proc, exit_on_signals, script, stop_all
from katyusha.progress import bar

KATYUSHA_POLICIES = ("round-robin", "least-in-flight", "p2c", "jsq-piggyback",
                     "sed-piggyback", "peak-ewma", "prequal")
PEERS = {
    "nginx least_conn": ("nginx", "least_conn"),
    "nginx random two least_conn": ("nginx", "random two least_conn"),
    "haproxy leastconn": ("haproxy", "leastconn"),
    "haproxy leastconn maxconn": ("haproxy", "leastconn maxconn"),
}
MEAN_SERVICE_S = 0.020
HELDOUT_SEED = 20261202
MAX_FLEET_RPS = 450.0
HEDGE_SCENARIO = "heavy-tail"
SLOW_PERIOD_S, SLOW_DURATION_S = 10.0, 3.0
WARMUP_S = 1.0
WARMUP_SEED = 99
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
    concurrency: int = 1
    mean_s: float = MEAN_SERVICE_S
    shape: str = "exp"  # exp, or lognormal (sigma 1)
    arrivals: str = "poisson"  # or mmpp
    split: str = "named"  # named, tune or heldout

    @property
    def service(self) -> str:
        ms = f"{self.mean_s * 1000:g}ms"
        return f"lognormal:{ms},1" if self.shape == "lognormal" else f"exp:{ms}"

    @property
    def capacity_rps(self) -> float:
        # A pod completes concurrency x speed / mean-service-time requests a second.
        return sum(self.concurrency * p.speed / self.mean_s for p in self.pods)

    def describe(self) -> str:
        speeds = sorted({p.speed for p in self.pods})
        return (f"{len(self.pods)} pods x concurrency {self.concurrency}, {self.service}, "
                f"speeds {speeds}, {self.arrivals}, {self.replicas} replica(s)")


def _pods(speeds: list[float]) -> list[PodSpec]:
    return [PodSpec(f"pod-{i}", speed) for i, speed in enumerate(speeds)]


def _fitting(pods: list[PodSpec], concurrency: int) -> float:
    """A mean service time (20 ms or more, in 10 ms steps) keeping the fleet's capacity near
    MAX_FLEET_RPS, so the two cores run the pods, not the harness."""
    needed = concurrency * sum(p.speed for p in pods) / MAX_FLEET_RPS
    return max(MEAN_SERVICE_S, math.ceil(needed / 0.010) * 0.010)


def scenarios() -> list[Scenario]:
    hetero = _pods([0.25, 0.25] + [1.0] * 6)
    schedule = f"period={SLOW_PERIOD_S:g}s,duration={SLOW_DURATION_S:g}s,factor=0.25"
    noisy = [PodSpec(f"pod-{i}", 1.0, schedule if i == 0 else "") for i in range(8)]
    return [Scenario("heterogeneous", hetero), Scenario("replicas", hetero, replicas=3),
            Scenario("noisy", noisy),
            Scenario("concurrency", hetero, concurrency=4, mean_s=_fitting(hetero, 4)),
            Scenario(HEDGE_SCENARIO, _pods([1.0] * 8), shape="lognormal"),
            Scenario("bursty", hetero, arrivals="mmpp"),
            Scenario("pods32", _pods([0.25] * 4 + [1.0] * 28), mean_s=0.100),
            Scenario("mixed", _pods([0.25, 0.5, 0.5, 1.0, 1.0, 1.0, 2.0, 2.0])),
            Scenario("replicas-concurrency", hetero, replicas=3, concurrency=4, mean_s=_fitting(hetero, 4))]


def drawn_scenarios(count: int, seed: int = HELDOUT_SEED) -> list[Scenario]:
    """``count`` scenarios drawn from the families with a fixed seed; even ones tune, odd ones held out."""
    rng = random.Random(seed)
    out = []
    for index in range(count):
        pods = rng.choice([4, 8, 12, 16, 32])
        concurrency = rng.choice([1, 1, 2, 4])
        shape = rng.choice(["exp", "lognormal"])
        arrivals = rng.choice(["poisson", "poisson", "mmpp"])
        palette = rng.choice([[1.0], [0.25, 1.0, 1.0, 1.0], [0.25, 0.5, 1.0, 2.0], [0.5, 1.0]])
        speeds = [rng.choice(palette) for _ in range(pods)]
        out.append(Scenario(f"drawn-{index}", _pods(speeds), concurrency=concurrency,
                            mean_s=_fitting(_pods(speeds), concurrency),
                            shape=shape, arrivals=arrivals,
                            split="tune" if index % 2 == 0 else "heldout"))
    return out


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
                    "--node", node, "--state", "warm", "--service-time", scenario.service,
                    "--speed", str(spec.speed), "--seed", str(i + 1)]
            if spec.slow_schedule:
                argv += ["--slow-schedule", spec.slow_schedule]
            sim = Proc(argv)
            ready_at = time.monotonic()
            started.append(sim)
            nonna = Proc([script("nonna"), "--port", "0", "--admin-port", "0",
                          "--upstream", sim.url, "--upstream-health", sim.admin + "/healthz",
                          "--concurrency", str(scenario.concurrency), "--queue-depth", "1000",
                          "--pod", spec.name, "--node", node])
            started.append(nonna)
            pods.append(Pod(spec, sim, nonna, ready_at))
        yield pods
    finally:
        stop_all(reversed(started))


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
        stop_all(procs)


@contextlib.contextmanager
def peer_replicas(pods: list[Pod], kind: str, balance: str, replicas: int,
                  concurrency: int = 1) -> Iterator[list[str]]:
    upstreams = [pod.nonna.url for pod in pods]
    with contextlib.ExitStack() as stack:
        urls = []
        for _ in range(replicas):
            if kind == "nginx":
                running = stack.enter_context(peers.nginx_proxy(upstreams, balance=balance))
            elif balance.endswith(" maxconn"):
                # Per replica: the pods' concurrency shared out between the replicas.
                running = stack.enter_context(peers.haproxy_proxy(
                    upstreams, balance=balance.removesuffix(" maxconn"),
                    maxconn=max(1, concurrency // replicas)))
            else:
                running = stack.enter_context(peers.haproxy_proxy(upstreams, balance=balance))
            urls.append(running.url)
        yield urls


def systems(pods: list[Pod], scenario: Scenario, only: list[str] | None = None,
            policies: tuple[str, ...] = KATYUSHA_POLICIES, extra: tuple[str, ...] = (),
            hedge_policy: str | None = None, variants: dict[str, tuple[str, ...]] | None = None):
    """(name, context manager factory) of every system, katyusha's policies and peers interleaved.

    ``hedge_policy``: also that katyusha policy with hedging on (``katyusha P hedge``).
    ``variants``: also the first policy with more arguments (``katyusha P NAME``), for A/B runs.
    """
    replicas = scenario.replicas
    ours = [(f"katyusha {policy}", lambda p=policy: katyusha_replicas(pods, p, replicas, extra))
            for policy in policies]
    for label, args in (variants or {}).items():
        ours.append((f"katyusha {policies[0]} {label}", lambda a=args: katyusha_replicas(
            pods, policies[0], replicas, (*extra, *a))))
    if hedge_policy is not None:
        ours.append((f"katyusha {hedge_policy} hedge", lambda: katyusha_replicas(
            pods, hedge_policy, replicas, (*extra, "--hedge", "true"))))
    theirs = [(name, lambda k=kind, b=balance: peer_replicas(pods, k, b, replicas, scenario.concurrency))
              for name, (kind, balance) in PEERS.items()]
    order = []
    while ours or theirs:
        order.extend(ours[:2])
        del ours[:2]
        order.extend(theirs[:1])
        del theirs[:1]
    return [(name, make) for name, make in order if not only or any(word in name for word in only)]


def measure(urls: list[str], pods: list[Pod], rate: float, duration_s: float,
            timeout_s: float, *, seed: int = 7, arrivals: str = "poisson",
            samples: list | None = None) -> tuple[dict, list[float]]:
    """One measured run (after the drain, the phase wait and the warm-up); ``samples``, when
    given, gets the run's loadgen samples with their ``Server-Timing`` and bodies."""
    wait_drained(pods)
    wait_phase(pods, duration_s)
    # The same warm-up for every system: pools filled, every pod reported and timed.
    asyncio.run(loadgen.run_open_loop(urls, rate=min(rate, 100), duration_s=WARMUP_S, seed=WARMUP_SEED))
    before = {p.spec.name: p.served() for p in pods}
    result = asyncio.run(loadgen.run_open_loop(urls, rate=rate, duration_s=duration_s,
                                               timeout_s=timeout_s, seed=seed, arrivals=arrivals,
                                               detail=samples is not None))
    if samples is not None:
        samples.extend(result.samples)
    wait_drained(pods, timeout_s)
    after = {p.spec.name: p.served() for p in pods}
    summary = result.summary()
    summary["per_pod"] = {name: after[name] - before[name] for name in after}
    summary["pod_requests"] = sum(summary["per_pod"].values())
    return summary, sorted(s.latency_ms if s.status > 0 else timeout_s * 1000 for s in result.samples)


# -- statistics: pooled quantiles and their bootstrap intervals -------------------

def pooled(runs: list[list[float]], q: float) -> float:
    import numpy as np

    return float(np.quantile(np.concatenate([np.asarray(r) for r in runs]), q))


def bootstrap(runs: list[list[float]], q: float, against: list[list[float]] | None = None,
              resamples: int = 400, seed: int = 1) -> tuple[float, float]:
    """95% interval of the pooled ``q`` quantile of ``runs`` (of its ratio to ``against``'s).

    Two levels: the runs are resampled, then the requests within each drawn run;
    ``against`` (runs of the same rounds) is resampled with the same runs drawn.
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    mine = [np.asarray(r) for r in runs]
    theirs = [np.asarray(r) for r in against] if against is not None else None
    count = len(mine)
    values = []
    for _ in range(resamples):
        picks = rng.integers(0, count, count)
        a = np.concatenate([rng.choice(mine[i], len(mine[i])) for i in picks if len(mine[i])])
        value = float(np.quantile(a, q))
        if theirs is not None:
            b = np.concatenate([rng.choice(theirs[i], len(theirs[i])) for i in picks if len(theirs[i])])
            value /= float(np.quantile(b, q))
        values.append(value)
    low, high = np.quantile(values, [0.025, 0.975])
    return round(float(low), 3), round(float(high), 3)


def summarise(runs: dict[str, list[list[float]]], summaries: dict[str, list[dict]]) -> dict:
    """Per system: pooled p50/p99/p99.9 with the p99's 95% interval, errors, pod requests per request."""
    out = {}
    for name, system_runs in runs.items():
        rows = summaries[name]
        sent = sum(r["sent"] for r in rows)
        out[name] = {
            "runs": len(system_runs),
            "p50_ms": round(pooled(system_runs, 0.5), 2),
            "p99_ms": round(pooled(system_runs, 0.99), 2),
            "p99_ci95": bootstrap(system_runs, 0.99),
            "p999_ms": round(pooled(system_runs, 0.999), 2),
            "errors": round(sum(r["errors"] * r["sent"] for r in rows) / sent, 5) if sent else 0.0,
            "run_p99_ms": [r["p99_ms"] for r in rows],
            "pod_requests_per_request": round(sum(r["pod_requests"] for r in rows) / sent, 4) if sent else 0.0,
            "per_pod": rows[-1]["per_pod"],
        }
    return out


def _best_peer(systems_at: dict, key: str = "p99_ms") -> tuple[float, str] | None:
    peers_at = [(v[key], k) for k, v in systems_at.items() if not k.startswith("katyusha")]
    return min(peers_at) if peers_at else None


def compare(entry: dict, runs: dict, system: str, q: float = 0.99) -> dict | None:
    """``system``'s pooled quantile beside the best peer's, with the ratio's 95% interval."""
    key = {0.99: "p99_ms", 0.999: "p999_ms"}[q]
    systems_at = entry["systems"]
    best = _best_peer(systems_at, key)
    ours = systems_at.get(system)
    if best is None or ours is None:
        return None
    return {
        "ratio": round(ours[key] / best[0], 3),
        "ci95": bootstrap(runs[system], q, runs[best[1]]),
        "katyusha_ms": ours[key], "best_peer": best[1], "best_peer_ms": best[0],
        "katyusha_errors": ours["errors"], "best_peer_errors": systems_at[best[1]]["errors"],
    }


def every_policy_ratio(by_load: dict) -> dict:
    """{load: {policy: p99 / best peer's p99}} for every katyusha system that ran."""
    out = {}
    for load, entry in by_load.items():
        best = _best_peer(entry["systems"])
        if best is None:
            continue
        out[load] = {k.removeprefix("katyusha "): round(v["p99_ms"] / best[0], 3)
                     for k, v in entry["systems"].items() if k.startswith("katyusha")}
    return out


def merge(paths: list[str], png_dir: str | None = None) -> dict:
    """Pool the runs of several ``--raw`` files: per scenario and load, each system's pooled
    p99/p99.9 and, for every katyusha system, its p99 and p99.9 ratios to the best peer (95% CI).
    With ``png_dir``, the pooled runs' CDF plots too (as a run writes them)."""
    pooled_raw: dict = {}
    for path in paths:
        for scenario, by_load in json.loads(Path(path).read_text()).items():
            for load, data in by_load.items():
                into = pooled_raw.setdefault(scenario, {}).setdefault(
                    load, {"split": data["split"], "rate": data["rate"], "runs": {}, "rows": {}})
                for name, system_runs in data["runs"].items():
                    into["runs"].setdefault(name, []).extend(system_runs)
                    into["rows"].setdefault(name, []).extend(data["rows"][name])
    out: dict = {}
    for scenario, by_load in pooled_raw.items():
        for load, data in by_load.items():
            entry = {"systems": summarise(data["runs"], data["rows"])}
            cell = {"split": data["split"], "rate": data["rate"],
                    "systems": {k: {f: v[f] for f in ("runs", "p50_ms", "p99_ms", "p99_ci95", "p999_ms",
                                                       "errors", "pod_requests_per_request")}
                                for k, v in entry["systems"].items()},
                    "ratios": {}}
            for name in data["runs"]:
                if name.startswith("katyusha"):
                    cell["ratios"][name] = {"p99": compare(entry, data["runs"], name),
                                            "p999": compare(entry, data["runs"], name, 0.999)}
            out.setdefault(scenario, {})[load] = cell
    if png_dir:
        out["png"] = plot({scenario: {load: data["runs"] for load, data in by_load.items()}
                           for scenario, by_load in pooled_raw.items()}, Path(png_dir))
    return out


def plot(latencies: dict, out_dir: Path) -> list[str]:
    """One latency-CDF PNG per scenario (a panel per load, every run of a system pooled), through benchmarks.plots."""
    from benchmarks import plots

    written = []
    for scenario, by_load in latencies.items():
        panels = {f"{load} of capacity": {system: [v for run in runs for v in run] for system, runs in by_system.items()}
                  for load, by_system in by_load.items()}
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
            lines += [f"**{scenario}, {load} load** ({entry['rate']:g} req/s; {entry.get('describe', '')})",
                      "",
                      "| system | runs | p50 ms | p99 ms (95% CI) | p99.9 ms | errors | pod req/req "
                      "| p99 / best peer |",
                      "|---|---|---|---|---|---|---|---|"]
            for name, row in sorted(entry["systems"].items(), key=lambda kv: kv[1]["p99_ms"]):
                ratio = f"{row['p99_ms'] / best[0]:.2f}" if best else ""
                low, high = row["p99_ci95"]
                lines.append(f"| {name} | {row['runs']} | {row['p50_ms']:.0f} | {row['p99_ms']:.0f} "
                             f"({low:.0f}-{high:.0f}) | {row['p999_ms']:.0f} | {row['errors']:.2%} | "
                             f"{row['pod_requests_per_request']:.3f} | {ratio} |")
            lines.append("")
    lines += ["| scenario | split | p99 ratio vs best peer | 95% CI |", "|---|---|---|---|"]
    for name, r in result["p99_ratio_vs_best_peer"].items():
        lines.append(f"| {name} | {r.get('split', '')} | {r['ratio']:.2f} | {r['ci95'][0]:.2f}-{r['ci95'][1]:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.lb_quality", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="short runs: 2 repeats of 3 s at 90%% load, 4 named scenarios, 2 drawn")
    parser.add_argument("--json", metavar="PATH")
    parser.add_argument("--png", metavar="DIR", help="where the CDF plots go (default bench-results; "
                                                           "with --merge: none unless given)")
    parser.add_argument("--duration", type=float, help="seconds per run (default 10, quick 3)")
    parser.add_argument("--repeats", type=int, help="runs per system at each load (default 5, quick 2)")
    parser.add_argument("--drawn", type=int, help="scenarios drawn for the tune/held-out sets "
                                                  "(default 8, quick 2)")
    parser.add_argument("--default-policy", default=None,
                        help="the katyusha policy the ratio is computed for (default: katyusha's)")
    parser.add_argument("--scenario", action="append", help="run only these scenarios")
    parser.add_argument("--system", action="append",
                        help="run only systems whose name contains this (repeatable)")
    parser.add_argument("--policy", action="append",
                        help="katyusha policies to run (repeatable; default: the default policy)")
    parser.add_argument("--katyusha-arg", action="append", default=[], metavar="ARG",
                        help="extra argument for every `katyusha serve` (repeatable, e.g. "
                             "--katyusha-arg=--pod-capacity-factor=2)")
    parser.add_argument("--variant", action="append", default=[], metavar="NAME=ARGS",
                        help="also the default policy with these `katyusha serve` arguments (space-separated), "
                             "named NAME, with its own ratios in `variants` (repeatable; e.g. "
                             "--variant 'extra0=--pod-capacity-extra 0')")
    parser.add_argument("--no-hedge", action="store_true", help="do not run katyusha with hedging on")
    parser.add_argument("--hedge-all", action="store_true",
                        help=f"run katyusha with hedging on in every scenario (default: {HEDGE_SCENARIO} only)")
    parser.add_argument("--load", action="append", type=float,
                        help="share of capacity to run at (repeatable; default 0.7 and 0.9, quick 0.9)")
    parser.add_argument("--raw", metavar="PATH",
                        help="also write every run's latencies and summary here (after each scenario), "
                             "for --merge")
    parser.add_argument("--merge", metavar="RAW", nargs="+",
                        help="pool the runs of earlier --raw files (the same systems run more rounds), "
                             "print the pooled p99s and ratios with their intervals as JSON, and exit")
    parser.add_argument("--markdown-from", metavar="JSON",
                        help="print the tables of an earlier run's JSON as Markdown, and exit")
    args = parser.parse_args(argv)
    if args.merge:
        print(json.dumps(merge(args.merge, args.png), indent=2))
        return 0
    if args.markdown_from:
        print(markdown(json.loads(Path(args.markdown_from).read_text())))
        return 0
    peers.require("nginx", "haproxy")
    # SIGTERM unwinds like Ctrl-C, so every pod and balancer started is stopped.
    exit_on_signals()
    from katyusha.core.policies import DEFAULT_POLICY

    default_policy = args.default_policy or DEFAULT_POLICY
    policies = tuple(args.policy or (default_policy,))
    if default_policy not in policies:
        policies = (default_policy, *policies)
    else:
        policies = (default_policy, *(p for p in policies if p != default_policy))
    variants = {}
    for spec in args.variant:
        label, _, rest = spec.partition("=")
        if not label or not rest:
            parser.error(f"--variant wants NAME=ARGS, got {spec!r}")
        variants[label] = tuple(rest.split())
    variant_ratios: dict = {label: {} for label in variants}
    duration = args.duration or (3.0 if args.quick else 10.0)
    repeats = args.repeats or (2 if args.quick else 5)
    loads = args.load or ((0.9,) if args.quick else (0.7, 0.9))
    drawn = drawn_scenarios(args.drawn if args.drawn is not None else (2 if args.quick else 8))
    named = scenarios()
    if args.quick and not args.scenario:
        named = [s for s in named if s.name in ("heterogeneous", "replicas", "noisy", HEDGE_SCENARIO)]
    timeout_s = 5.0
    figures: dict = {}
    latencies: dict = {}
    ratios: dict = {}
    progress = bar(None, "lb_quality", "run")
    hedging: dict = {}
    raw: dict = {}
    for scenario in named + drawn:
        if args.scenario and scenario.name not in args.scenario:
            continue
        print(f"\n== {scenario.name} ({scenario.split}): {scenario.describe()}, "
              f"capacity {scenario.capacity_rps:.0f} req/s", flush=True)
        figures[scenario.name] = {}
        latencies[scenario.name] = {}
        hedge_policy = (default_policy if (scenario.name == HEDGE_SCENARIO or args.hedge_all)
                        and not args.no_hedge else None)
        with fleet(scenario) as pods:
            chosen = systems(pods, scenario, args.system, policies, tuple(args.katyusha_arg), hedge_policy,
                             variants)
            for load in loads:
                rate = scenario.capacity_rps * load
                key = f"{int(load * 100)}%"
                print(f"-- {key} load: {rate:.0f} req/s, {repeats} x {duration:g} s", flush=True)
                runs: dict[str, list[list[float]]] = {name: [] for name, _ in chosen}
                rows: dict[str, list[dict]] = {name: [] for name, _ in chosen}
                for round_ in range(repeats):
                    shift = round_ % len(chosen)
                    for name, make in chosen[shift:] + chosen[:shift]:
                        with make() as urls:
                            summary, values = measure(urls, pods, rate, duration, timeout_s,
                                                      seed=7 + round_, arrivals=scenario.arrivals)
                        progress.update(1)
                        runs[name].append(values)
                        rows[name].append(summary)
                        print(f"  [{round_ + 1}/{repeats}] {name:34s} p50 {summary['p50_ms']:7.1f}  "
                              f"p99 {summary['p99_ms']:7.1f}  p99.9 {summary['p999_ms']:7.1f} ms  "
                              f"errors {summary['errors']:.4f}  per pod {list(summary['per_pod'].values())}",
                              flush=True)
                entry = {"rate": round(rate, 1), "describe": scenario.describe(), "split": scenario.split,
                         "systems": summarise(runs, rows)}
                raw.setdefault(scenario.name, {})[key] = {
                    "split": scenario.split, "rate": round(rate, 1), "describe": scenario.describe(),
                    "runs": runs, "rows": rows}
                if args.raw:
                    Path(args.raw).write_text(json.dumps(raw) + "\n")
                figures[scenario.name][key] = entry
                latencies[scenario.name][key] = runs
                if key == "90%" or len(loads) == 1:
                    ratio = compare(entry, runs, f"katyusha {default_policy}")
                    if ratio is not None:
                        ratios[scenario.name] = {**ratio, "split": scenario.split}
                    for label in variants:
                        vratio = compare(entry, runs, f"katyusha {default_policy} {label}")
                        if vratio is not None:
                            variant_ratios[label][scenario.name] = {**vratio, "split": scenario.split}
                    if hedge_policy is not None:
                        hedged = f"katyusha {hedge_policy} hedge"
                        if hedged in entry["systems"]:
                            row = entry["systems"][hedged]
                            hedging[scenario.name] = {
                                "load": key,
                                "p999_ratio_vs_best_peer": compare(entry, runs, hedged, 0.999),
                                "p99_ratio_vs_best_peer": compare(entry, runs, hedged, 0.99),
                                "extra_pod_requests_share": round(row["pod_requests_per_request"] - 1, 4),
                                "without_hedge_extra_share": round(
                                    entry["systems"][f"katyusha {default_policy}"]["pod_requests_per_request"]
                                    - 1, 4) if f"katyusha {default_policy}" in entry["systems"] else None,
                            }
    progress.close()
    pngs = plot(latencies, Path(args.png or "bench-results"))
    print(f"\ndefault policy: {default_policy}; {repeats} runs of {duration:g} s per system and load")
    for name, r in ratios.items():
        print(f"{name:14s} ({r['split']:7s}) p99 katyusha {r['katyusha_ms']:.1f} ms / best peer "
              f"({r['best_peer']}) {r['best_peer_ms']:.1f} ms = {r['ratio']:.2f} "
              f"(95% CI {r['ci95'][0]:.2f}-{r['ci95'][1]:.2f})")
    for label, by_scenario in variant_ratios.items():
        for name, r in by_scenario.items():
            print(f"{name:14s} ({r['split']:7s}) p99 katyusha {label} {r['katyusha_ms']:.1f} ms / best peer "
                  f"{r['best_peer_ms']:.1f} ms = {r['ratio']:.2f} (95% CI {r['ci95'][0]:.2f}-{r['ci95'][1]:.2f})")
    heldout = [r["ratio"] for r in ratios.values() if r["split"] == "heldout"]
    tune = [r["ratio"] for r in ratios.values() if r["split"] == "tune"]
    heldout_median = round(statistics.median(heldout), 3) if heldout else None
    print(f"held-out median ratio: {heldout_median} (of {len(heldout)}); "
          f"tune median: {round(statistics.median(tune), 3) if tune else None} (of {len(tune)})")
    for name, h in hedging.items():
        p999 = h["p999_ratio_vs_best_peer"]
        if p999:
            print(f"hedging in {name}: p99.9 {p999['katyusha_ms']:.1f} ms / best peer {p999['best_peer_ms']:.1f} ms "
                  f"= {p999['ratio']:.2f} (95% CI {p999['ci95'][0]:.2f}-{p999['ci95'][1]:.2f}); "
                  f"extra pod requests {h['extra_pod_requests_share']:.2%}")
    result = {
        "default_policy": default_policy,
        "katyusha_args": args.katyusha_arg,
        "duration_s": duration,
        "repeats": repeats,
        "scenarios": figures,
        "p99_ratio_vs_best_peer": ratios,
        "heldout_median_ratio": heldout_median,
        "tune_median_ratio": round(statistics.median(tune), 3) if tune else None,
        "hedging": hedging,
        "variants": {label: {"args": list(variants[label]), "p99_ratio_vs_best_peer": by_scenario}
                     for label, by_scenario in variant_ratios.items()},
        "every_policy_p99_ratio": {name: every_policy_ratio(by_load) for name, by_load in figures.items()},
        "png": pngs,
        "quick": args.quick,
    }
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
